package source

import (
	"strings"
	"sync"

	"github.com/l4lb/l4lb/vip"
)

// ProblemsKey is the key of the group that holds a source's problems that
// belong to no app it could read (an app without an id, a list that was
// not valid JSON in part). It declares no VIP.
const ProblemsKey Key = "\x00problems"

// appGroups turns Marathon apps into groups, one per app id, and keeps
// what the next read of an app needs: the health memory of its tasks, and
// the last group delivered, which an app that fails to read keeps.
type appGroups struct {
	mu     sync.Mutex
	cfg    vip.Config
	last   map[Key]Group
	health map[Key]vip.Health
}

func newAppGroups(cfg vip.Config) *appGroups {
	return &appGroups{cfg: cfg, last: map[Key]Group{}, health: map[Key]vip.Health{}}
}

// app declares one app that was read alone, with the problems of its
// parts that did not decode.
func (a *appGroups) app(app vip.App, problems []vip.Problem) Group {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := a.appLocked(app)
	if len(problems) > 0 {
		g.Problems = append(append([]vip.Problem{}, g.Problems...), problems...)
		a.last[g.Key] = g
	}
	return g
}

func (a *appGroups) appLocked(app vip.App) Group {
	k := Key(app.ID)
	decls, problems, health := vip.DeclareApp(app, a.cfg, a.health[k])
	if health == nil {
		delete(a.health, k)
	} else {
		a.health[k] = health
	}
	g := Group{Key: k, Decls: decls, Problems: problems, Hosts: vip.AppHosts(app, decls, a.cfg.Resolver)}
	a.last[k] = g
	return g
}

// gone forgets an app that no longer exists.
func (a *appGroups) gone(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.last, Key(id))
	delete(a.health, Key(id))
}

// kept returns the last good group of an app that could not be read this
// time, with the problem added; ok is false for an app never read.
func (a *appGroups) kept(id string, p vip.Problem) (Group, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g, ok := a.last[Key(id)]
	if !ok {
		return Group{}, false
	}
	g.Problems = append(append([]vip.Problem{}, g.Problems...), p)
	return g, true
}

// list declares a full list of apps. An app that did not decode but whose
// id is known keeps its last good group (with the problem); other problems
// go into the ProblemsKey group. The memory of apps not in the list goes.
func (a *appGroups) list(apps []vip.App, problems []vip.Problem) []Group {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Group, 0, len(apps)+1)
	pos := make(map[Key]int, len(apps))
	seen := make(map[Key]bool, len(apps))
	for _, app := range apps {
		if seen[Key(app.ID)] {
			problems = append(problems, vip.Problem{App: app.ID, Reason: "duplicate app id: the first definition is used"})
			continue
		}
		seen[Key(app.ID)] = true
		pos[Key(app.ID)] = len(out)
		out = append(out, a.appLocked(app))
	}
	var loose []vip.Problem
	for _, p := range problems {
		id := p.App
		if id != "" && !strings.HasPrefix(id, "/") && !strings.HasPrefix(id, "#") {
			id = "/" + id
		}
		if i, ok := pos[Key(id)]; ok {
			// A task or label of a decoded app that did not decode.
			g := out[i]
			g.Problems = append(append([]vip.Problem{}, g.Problems...), p)
			out[i], a.last[g.Key] = g, g
			continue
		}
		if g, ok := a.last[Key(id)]; ok && !seen[Key(id)] {
			seen[Key(id)] = true
			g.Problems = append(append([]vip.Problem{}, g.Problems...), p)
			out = append(out, g)
			continue
		}
		loose = append(loose, p)
	}
	for k := range a.last {
		if !seen[k] {
			delete(a.last, k)
			delete(a.health, k)
		}
	}
	if len(loose) > 0 {
		out = append(out, Group{Key: ProblemsKey, Problems: loose})
	}
	return out
}

// AppGroups turns a read of Marathon apps into groups, one per app id,
// without health memory: for tests and one-shot reads.
func AppGroups(apps []vip.App, problems []vip.Problem, cfg vip.Config) []Group {
	return newAppGroups(cfg).list(apps, problems)
}
