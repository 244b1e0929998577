package vip

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// Resolver turns a task's host name into addresses. The daemon uses the
// system resolver with a cache; tests use a map.
type Resolver interface {
	LookupHost(host string) ([]netip.Addr, error)
}

// Config is what Desired needs besides the apps.
type Config struct {
	Pool4     netip.Prefix // named IPv4 VIP addresses come from here
	Pool6     netip.Prefix // named IPv6 VIP addresses come from here
	Domain    string       // zone of named VIPs, DefaultDomain when empty
	Framework string       // framework label in names, FrameworkMarathon when empty
	Resolver  Resolver     // for task hosts that are names; nil accepts literals only
	Previous  Allocations  // earlier named VIP addresses, kept while their VIP lives
	// Guard refuses IP VIP addresses that are not meant for VIPs; the zero
	// Guard applies the static rules and the hosts of the desired state.
	Guard Guard
}

// Decl is one VIP declaration: one VIP label of one port of an app (or of
// a Mesos task, or a VIP read from etcd), for one protocol, with the
// backends its declarer gives that VIP. Declarations of the same VIP (name
// or IP, port, protocol) from any number of declarers are merged.
type Decl struct {
	Spec  Spec  // a name or an IP, and a port
	Proto Proto // TCP or UDP
	// App is who declares it: a Marathon app id, or what stands for it
	// (a Mesos framework name); it goes into /v1/vips and the comment.
	App string
	// Label is the label key, to name it in problems.
	Label string
	// Backends are the declarer's backends of this VIP, any order.
	Backends []Backend
	// Addr pins the address of a named VIP: a VIP read from etcd carries
	// the address the cluster's controller allocated (DESIGN section 10).
	// A name with a pinned declaration is served in the families of its
	// pins only, at those addresses, whatever the pool and the backends
	// say; backends of another family are dropped. Zero for every other
	// declaration (and ignored for IP VIPs). The controller never pins one
	// address for two names; if a writer did, both would get it.
	Addr netip.Addr
}

// unit returns the unit of recomputation the declaration belongs to: its
// name, or its IP for an IP VIP. Every port of a name shares its addresses.
func (d Decl) unit() unitKey { return unitKey{name: d.Spec.Name, ip: d.Spec.IP} }

// unitKey is a VIP name, or an IP VIP's address.
type unitKey struct {
	name string
	ip   netip.Addr
}

// groupID identifies a VIP before it has an address: a name (or IP), a
// port and a protocol.
type groupID struct {
	name  string
	ip    netip.Addr
	port  uint16
	proto Proto
}

func (a groupID) compare(b groupID) int {
	return cmp.Or(strings.Compare(a.name, b.name), a.ip.Compare(b.ip), cmp.Compare(a.port, b.port), cmp.Compare(a.proto, b.proto))
}

// group is every declaration of the same VIP, with the union of backends.
type group struct {
	spec     Spec
	proto    Proto
	apps     map[string]bool
	backends []Backend  // deduplicated and sorted by dedupe
	labels   []string   // app/label pairs, for problems
	decls    int        // declarations merged
	shared   bool       // backends is a declaration's list: copy before changing
	pin4     netip.Addr // pinned addresses of a named VIP (Decl.Addr)
	pin6     netip.Addr
}

// add merges a declaration into the group. The first declaration's
// backends are shared, not copied (dedupe copies before changing them).
func (g *group) add(d Decl) {
	g.apps[d.App] = true
	g.labels = append(g.labels, d.App+" "+d.Label)
	switch {
	case g.decls == 0:
		g.backends, g.shared = d.Backends, true
	case g.shared:
		g.backends = append(slices.Clone(g.backends), d.Backends...)
		g.shared = false
	default:
		g.backends = append(g.backends, d.Backends...)
	}
	g.decls++
	if d.Spec.Name != "" && d.Addr.IsValid() {
		if d.Addr.Is4() {
			if !g.pin4.IsValid() || d.Addr.Less(g.pin4) {
				g.pin4 = d.Addr
			}
		} else if !g.pin6.IsValid() || d.Addr.Less(g.pin6) {
			g.pin6 = d.Addr
		}
	}
}

// namePins returns the pinned addresses of a name over its groups (the
// lowest when several disagree), and whether it has any.
func namePins(gs []*group) (pin4, pin6 netip.Addr, pinned bool) {
	for _, g := range gs {
		if g.pin4.IsValid() && (!pin4.IsValid() || g.pin4.Less(pin4)) {
			pin4 = g.pin4
		}
		if g.pin6.IsValid() && (!pin6.IsValid() || g.pin6.Less(pin6)) {
			pin6 = g.pin6
		}
	}
	return pin4, pin6, pin4.IsValid() || pin6.IsValid()
}

// withDefaults fills the zero fields of a Config.
func (cfg Config) withDefaults() Config {
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if cfg.Framework == "" {
		cfg.Framework = FrameworkMarathon
	}
	if !cfg.Pool4.IsValid() {
		cfg.Pool4 = DefaultPool4
	}
	if !cfg.Pool6.IsValid() {
		cfg.Pool6 = DefaultPool6
	}
	return cfg
}

// DeclareApp returns the VIP declarations of one Marathon app, with the
// backends of its tasks, and what in it was skipped. known is the health
// memory the previous read of this app returned (nil for none); the
// memory for the next read is returned. DeclareApp is pure: its output
// depends on its input (and the resolver) alone, so an app can be
// recomputed alone when it changes.
func DeclareApp(app App, cfg Config, known Health) ([]Decl, []Problem, Health) {
	cfg = cfg.withDefaults()
	ports, mode := appPorts(app)
	tasks, problems, health := parseTasks(app, known)
	var out []Decl
	for i, port := range ports {
		decls, declProblems := portDecls(app.ID, port, cfg)
		problems = append(problems, declProblems...)
		if len(decls) == 0 {
			continue
		}
		backends, beProblems := portBackends(app, mode, ports, i, tasks, cfg.Resolver)
		problems = append(problems, beProblems...)
		for _, d := range decls {
			d.Backends = backends
			out = append(out, d)
		}
	}
	return out, sortProblems(problems), health
}

// Desired computes the desired state from Marathon apps: the VIPs their port
// labels declare, each with the backends of the apps' tasks and an address.
// What is malformed is returned as problems and skipped; everything else is
// kept. Desired is a pure function of its input (and of the resolver). It
// knows no health history: tasks without health results are starting.
func Desired(apps []App, cfg Config) (State, []Problem) {
	return DesiredWith(apps, nil, cfg)
}

// DesiredWith is Desired with the declarations of other sources (the tasks
// of a Mesos state) merged in: a VIP that an app and a declaration both
// declare is one VIP with the union of their backends.
func DesiredWith(apps []App, extra []Decl, cfg Config) (State, []Problem) {
	cfg = cfg.withDefaults()
	var problems []Problem
	var decls []Decl
	var hosts []Host
	seen := map[string]bool{}

	sorted := slices.Clone(apps)
	slices.SortStableFunc(sorted, func(a, b App) int { return strings.Compare(a.ID, b.ID) })
	for _, app := range sorted {
		if seen[app.ID] {
			problems = append(problems, Problem{App: app.ID, Reason: "duplicate app id: the first definition is used"})
			continue
		}
		seen[app.ID] = true
		d, p, _ := DeclareApp(app, cfg, nil)
		decls = append(decls, d...)
		problems = append(problems, p...)
		hosts = append(hosts, AppHosts(app, d, cfg.Resolver)...)
	}
	state, buildProblems := Build(append(decls, extra...), cfg, hosts...)
	return state, sortProblems(append(problems, buildProblems...))
}

// Build computes the desired state from declarations, in one pass: the
// reference that an Index, which applies changes, must always equal.
// hosts are the task hosts of the declarers and of any other app (see
// AppHosts): no IP VIP may take them, nor the address of any backend.
func Build(decls []Decl, cfg Config, hosts ...Host) (State, []Problem) {
	cfg = cfg.withDefaults()
	groups := map[groupID]*group{}
	for _, d := range decls {
		k := groupID{name: d.Spec.Name, ip: d.Spec.IP, port: d.Spec.Port, proto: d.Proto}
		g := groups[k]
		if g == nil {
			g = &group{spec: d.Spec, proto: d.Proto, apps: map[string]bool{}}
			groups[k] = g
		}
		g.add(d)
	}
	// Hosts are looked at only where an IP VIP asks for their address.
	uses := map[netip.Addr]hostUse{}
	for k := range groups {
		if k.name == "" {
			uses[k.ip] = hostUse{}
		}
	}
	use := func(a netip.Addr, u hostUse) {
		if cur, ok := uses[a]; ok && (cur.what == "" || u.compare(cur) < 0) {
			uses[a] = u
		}
	}
	if len(uses) > 0 {
		for _, h := range hosts {
			if _, ok := uses[h.Addr]; ok {
				use(h.Addr, h.use())
			}
		}
		for _, d := range decls {
			for _, b := range d.Backends {
				if _, ok := uses[b.Addr]; ok {
					use(b.Addr, backendUse(b))
				}
			}
		}
	}
	state, problems := build(groups, func(a netip.Addr) (string, bool) {
		u := uses[a]
		return u.what, u.what != ""
	}, cfg)
	return state, sortProblems(problems)
}

// sortProblems orders problems by app, label, task and reason and drops
// repeats (a task's problem shows up once per VIP port it backs).
func sortProblems(ps []Problem) []Problem {
	slices.SortFunc(ps, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.App, b.App), strings.Compare(a.Framework, b.Framework), strings.Compare(a.Label, b.Label),
			strings.Compare(a.Task, b.Task), strings.Compare(a.Reason, b.Reason))
	})
	return slices.Compact(ps)
}

// dedupe sorts a group's backends by address and port and keeps one per
// address and port: when two tasks share one, the best state wins (active,
// then draining, then unhealthy), then the first task id.
func (g *group) dedupe() {
	if g.shared {
		if sortedUnique(g.backends) {
			return // as declared: nothing to change, nothing to copy
		}
		g.backends, g.shared = slices.Clone(g.backends), false
	}
	sortBackends(g.backends)
	g.backends = slices.CompactFunc(g.backends, func(a, b Backend) bool { return a.AddrPort() == b.AddrPort() })
}

func compareBackends(a, b Backend) int {
	return cmp.Or(a.AddrPort().Compare(b.AddrPort()), cmp.Compare(a.State, b.State), strings.Compare(a.Task, b.Task))
}

// sortBackends puts backends in the order of a VIP: address and port, the
// best state first, then task.
func sortBackends(list []Backend) { slices.SortFunc(list, compareBackends) }

// sortedUnique reports whether backends are in VIP order with no address
// and port twice.
func sortedUnique(list []Backend) bool {
	for i := 1; i < len(list); i++ {
		if compareBackends(list[i-1], list[i]) > 0 || list[i-1].AddrPort() == list[i].AddrPort() {
			return false
		}
	}
	return true
}

// portDecls reads the VIP labels of one port, sorted by label key.
func portDecls(appID string, port appPort, cfg Config) ([]Decl, []Problem) {
	var keys []string
	for k := range port.Labels {
		if IsLabelKey(k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	slices.Sort(keys)
	var out []Decl
	var problems []Problem
	protos, err := Protocols(port.Protocol)
	if err != nil {
		for _, k := range keys {
			problems = append(problems, Problem{App: appID, Label: k, Reason: err.Error()})
		}
		return nil, problems
	}
	for _, k := range keys {
		spec, err := ParseLabel(port.Labels[k], cfg.Framework, cfg.Domain)
		if err != nil {
			problems = append(problems, Problem{App: appID, Label: k, Reason: err.Error()})
			continue
		}
		for _, p := range protos {
			out = append(out, Decl{Spec: spec, Proto: p, App: appID, Label: k})
		}
	}
	return out, problems
}

// build turns groups into VIPs: addresses for named VIPs, the guard and
// family checks for IP VIPs, sorted output. taken says which task host or
// backend holds an address, for the guard.
func build(groups map[groupID]*group, taken func(netip.Addr) (string, bool), cfg Config) (State, []Problem) {
	var problems []Problem
	keys := slices.SortedFunc(maps.Keys(groups), groupID.compare)
	for _, k := range keys {
		groups[k].dedupe()
	}

	// IP VIP addresses are reserved: the allocator never hands them out,
	// not even those the guard refuses (so that a name does not take an
	// address an IP VIP gets once the guard lets it).
	reserved := map[netip.Addr]bool{}
	for _, k := range keys {
		if g := groups[k]; g.spec.Name == "" {
			reserved[g.spec.IP] = true
		}
	}

	// IP VIPs that would take an address not meant for VIPs are refused
	// before anything else sees them.
	keys = slices.DeleteFunc(keys, func(k groupID) bool {
		g := groups[k]
		if g.spec.Name != "" {
			return false
		}
		reason := cfg.Guard.reason(g.spec.IP, taken)
		if reason == "" {
			return false
		}
		problems = append(problems, refusedProblems(g, reason)...)
		return true
	})

	// Which families each name needs: IPv4 when it has IPv4 backends or no
	// backends at all, IPv6 when it has IPv6 backends.
	type fams struct{ v4, v6 bool }
	need := map[string]*fams{}
	byName := map[string][]*group{}
	for _, k := range keys {
		g := groups[k]
		if g.spec.Name == "" {
			continue
		}
		byName[g.spec.Name] = append(byName[g.spec.Name], g)
		f := need[g.spec.Name]
		if f == nil {
			f = &fams{}
			need[g.spec.Name] = f
		}
		for _, b := range g.backends {
			if b.Addr.Is4() {
				f.v4 = true
			} else {
				f.v6 = true
			}
		}
	}
	// Pinned names take their addresses; nothing else may.
	pinned4, pinned6 := map[string]netip.Addr{}, map[string]netip.Addr{}
	for name, gs := range byName {
		if p4, p6, ok := namePins(gs); ok {
			delete(need, name)
			if p4.IsValid() {
				pinned4[name] = p4
				reserved[p4] = true
			}
			if p6.IsValid() {
				pinned6[name] = p6
				reserved[p6] = true
			}
		}
	}
	var names4, names6 []string
	for name, f := range need {
		if !f.v6 {
			f.v4 = true
		}
		if f.v4 {
			names4 = append(names4, name)
		}
		if f.v6 {
			names6 = append(names6, name)
		}
	}
	alloc4, errs4 := allocate(newPool(cfg.Pool4), names4, cfg.Previous.V4, reserved)
	alloc6, errs6 := allocate(newPool(cfg.Pool6), names6, cfg.Previous.V6, reserved)
	maps.Copy(alloc4, pinned4)
	maps.Copy(alloc6, pinned6)

	// A named VIP that already holds an address keeps it; an IP VIP that
	// asks for it is refused.
	owner := map[netip.Addr]string{}
	for name, a := range alloc4 {
		owner[a] = name
	}
	for name, a := range alloc6 {
		owner[a] = name
	}

	var vips []VIP
	reported := map[string]bool{}
	for _, k := range keys {
		g := groups[k]
		if g.spec.Name == "" {
			if name, ok := owner[g.spec.IP]; ok {
				problems = append(problems, groupProblems(g, fmt.Sprintf("IP VIP address %s is in use by named VIP %s", g.spec.IP, name))...)
				continue
			}
			v := newVIP(g, g.spec.IP)
			for _, b := range g.backends {
				if b.Addr.Is4() != g.spec.IP.Is4() {
					problems = append(problems, Problem{App: b.App, Task: b.Task,
						Reason: fmt.Sprintf("backend %s does not match the address family of IP VIP %s", b.AddrPort(), v)})
					continue
				}
				v.Backends = append(v.Backends, b)
			}
			vips = append(vips, v)
			continue
		}
		for _, fam := range []struct {
			alloc map[string]netip.Addr
			errs  map[string]error
			is4   bool
		}{{alloc4, errs4, true}, {alloc6, errs6, false}} {
			if err, ok := fam.errs[g.spec.Name]; ok {
				if !reported[g.spec.Name+fmt.Sprint(fam.is4)] {
					reported[g.spec.Name+fmt.Sprint(fam.is4)] = true
					problems = append(problems, groupProblems(g, err.Error())...)
				}
				continue
			}
			a, ok := fam.alloc[g.spec.Name]
			if !ok {
				continue
			}
			v := newVIP(g, a)
			for _, b := range g.backends {
				if b.Addr.Is4() == fam.is4 {
					v.Backends = append(v.Backends, b)
				}
			}
			vips = append(vips, v)
		}
	}
	slices.SortFunc(vips, func(a, b VIP) int { return a.Key().Compare(b.Key()) })
	return State{
		VIPs:        vips,
		Pool4:       cfg.Pool4,
		Pool6:       cfg.Pool6,
		Allocations: Allocations{V4: alloc4, V6: alloc6},
	}, problems
}

func newVIP(g *group, addr netip.Addr) VIP {
	return VIP{
		Name:  g.spec.Name,
		Addr:  addr,
		Port:  g.spec.Port,
		Proto: g.proto,
		Apps:  slices.Sorted(maps.Keys(g.apps)),
	}
}

// refusedProblems reports the refusal of an IP VIP by the guard for every
// app label behind a group, with the refused address.
func refusedProblems(g *group, reason string) []Problem {
	ps := groupProblems(g, fmt.Sprintf("IP VIP address %s refused: %s", g.spec.IP, reason))
	for i := range ps {
		ps[i].Refused = g.spec.IP.String()
	}
	return ps
}

// groupProblems reports a problem once for every app label behind a group.
func groupProblems(g *group, reason string) []Problem {
	var out []Problem
	seen := map[string]bool{}
	for _, l := range g.labels {
		if seen[l] {
			continue
		}
		seen[l] = true
		app, label, _ := strings.Cut(l, " ")
		out = append(out, Problem{App: app, Label: label, Reason: reason})
	}
	return out
}
