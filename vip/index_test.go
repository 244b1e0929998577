package vip

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// randomApp makes an app with random VIP labels (named and IP, colliding
// names across apps) and random tasks, health and states.
func randomApp(r *rand.Rand, id string) App {
	app := App{ID: id}
	if r.IntN(3) == 0 {
		app.HealthChecks = make([]HealthCheck, 1+r.IntN(2))
	}
	nports := 1 + r.IntN(2)
	for p := 0; p < nports; p++ {
		labels := map[string]string{}
		for l := 0; l < r.IntN(3); l++ {
			var v string
			switch r.IntN(7) {
			case 5:
				// An IP VIP at a task host or backend address (refused while
				// a task uses it), or inside the agent's networks.
				v = fmt.Sprintf("198.19.0.%d:%d", 1+r.IntN(8), 80+r.IntN(2))
			case 6:
				v = fmt.Sprintf("[fd00:198:19::%d]:80", 1+r.IntN(5))
			case 0:
				v = fmt.Sprintf("198.18.0.%d:%d", 1+r.IntN(4), 80+r.IntN(2))
			case 1:
				v = fmt.Sprintf("[fd00:198:18::%d]:80", 1+r.IntN(2))
			case 2:
				v = "bad"
			default:
				v = fmt.Sprintf("%s:%d", []string{"a", "b", "c", "d", "e"}[r.IntN(5)], 80+r.IntN(2))
			}
			labels[fmt.Sprintf("VIP_%d", l)] = v
		}
		app.PortDefinitions = append(app.PortDefinitions, Port{Protocol: []string{"tcp", "udp", "udp,tcp"}[r.IntN(3)], Labels: labels})
	}
	for t := 0; t < r.IntN(4); t++ {
		task := Task{ID: fmt.Sprintf("%s.t%d", id, t), State: []string{"TASK_RUNNING", "TASK_RUNNING", "TASK_KILLING", "TASK_UNREACHABLE", "TASK_STAGING"}[r.IntN(5)]}
		if r.IntN(4) == 0 {
			task.Host = fmt.Sprintf("fd00:198:19::%d", 1+r.IntN(5))
		} else {
			task.Host = fmt.Sprintf("198.19.0.%d", 1+r.IntN(5))
		}
		for p := 0; p < nports; p++ {
			task.Ports = append(task.Ports, 31000+r.IntN(3))
		}
		for h := 0; h < r.IntN(len(app.HealthChecks)+1); h++ {
			task.HealthCheckResults = append(task.HealthCheckResults, HealthCheckResult{Alive: r.IntN(4) != 0})
		}
		app.Tasks = append(app.Tasks, task)
	}
	if r.IntN(4) == 0 {
		// A container network: the backends are the tasks' own addresses.
		app.Networks = []Network{{Mode: "container"}}
		app.Container = &Container{PortMappings: app.PortDefinitions}
		app.PortDefinitions = nil
		for i := range app.Container.PortMappings {
			port := 80
			app.Container.PortMappings[i].ContainerPort = &port
		}
		for i := range app.Tasks {
			app.Tasks[i].IPAddresses = []TaskIPAddress{{IPAddress: fmt.Sprintf("198.19.0.%d", 7+r.IntN(2))}}
		}
	}
	return app
}

// TestIndexEqualsBuild applies random sequences of app and task changes to
// an Index, as deltas, and checks after each commit that the state and the
// problems are those Build computes from all current declarations at once,
// and that the Change lists exactly the VIPs that differ. IP VIPs collide
// with task hosts and backends (of apps with and without VIPs, in any task
// state), and the agent's networks change now and then: the guard must
// refuse and release them exactly as Build does.
func TestIndexEqualsBuild(t *testing.T) {
	nets := []*LocalNets{
		nil,
		{Own: []netip.Prefix{netip.MustParsePrefix("198.19.0.6/32")}},
		{Own: []netip.Prefix{netip.MustParsePrefix("198.19.0.6/32")}, Connected: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/30")}},
		{Connected: []netip.Prefix{netip.MustParsePrefix("fd00:198:19::/126"), netip.MustParsePrefix("198.18.0.0/30")}},
	}
	refused := map[string]int{} // how often each kind of refusal was seen
	defer func() {
		for _, kind := range []string{"the address of task host", "the address of backend", "an address of this agent", "directly connected", "outside --ip-vip-ranges"} {
			if refused[kind] == 0 {
				t.Errorf("no refusal %q was exercised: %v", kind, refused)
			}
		}
	}()
	for seed := uint64(1); seed <= 200; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		cfg := Config{Pool4: netip.MustParsePrefix("198.18.0.0/28"), Pool6: netip.MustParsePrefix("fd00:198:18::/124")}
		if seed%3 == 0 {
			cfg.Guard.Ranges = []netip.Prefix{netip.MustParsePrefix("198.19.0.0/29"), netip.MustParsePrefix("fd00:198:18::/64")}
		}
		cfg.Guard.Local = nets[seed%uint64(len(nets))]
		x := NewIndex(cfg)
		type held struct {
			decls    []Decl
			problems []Problem
			hosts    []Host
		}
		apps := map[string]held{}
		prev := x.State()
		for step := 0; step < 30; step++ {
			for n := 1 + r.IntN(3); n > 0; n-- {
				id := fmt.Sprintf("/app%d", r.IntN(8))
				if r.IntN(4) == 0 {
					x.Delete(id)
					delete(apps, id)
					continue
				}
				app := randomApp(r, id)
				d, p, _ := DeclareApp(app, cfg, nil)
				h := AppHosts(app, d, nil)
				x.Set(id, d, p, h...)
				apps[id] = held{d, p, h}
			}
			if r.IntN(5) == 0 {
				cfg.Guard.Local = nets[r.IntN(len(nets))]
				x.SetLocal(cfg.Guard.Local)
			}
			ch := x.Commit()
			got := x.State()

			var all []Decl
			var problems []Problem
			var hosts []Host
			for _, id := range slices.Sorted(func(yield func(string) bool) {
				for id := range apps {
					if !yield(id) {
						return
					}
				}
			}) {
				all = append(all, apps[id].decls...)
				problems = append(problems, apps[id].problems...)
				hosts = append(hosts, apps[id].hosts...)
			}
			full := cfg
			full.Previous = got.Allocations
			want, wantProblems := Build(all, full, hosts...)
			wantProblems = sortProblems(append(problems, wantProblems...))
			if !reflect.DeepEqual(nonNil(got.VIPs), nonNil(want.VIPs)) {
				t.Fatalf("seed %d step %d: index\n%s\nbuild\n%s", seed, step, strings.Join(summary(got), "\n"), strings.Join(summary(want), "\n"))
			}
			if !want.Allocations.Equal(got.Allocations) {
				t.Fatalf("seed %d step %d: allocations %v, build %v", seed, step, got.Allocations, want.Allocations)
			}
			if gp := x.Problems(); !slices.Equal(gp, wantProblems) {
				t.Fatalf("seed %d step %d: problems\n%v\nbuild\n%v", seed, step, gp, wantProblems)
			}
			for _, p := range wantProblems {
				for _, kind := range []string{"the address of task host", "the address of backend", "an address of this agent", "directly connected", "outside --ip-vip-ranges"} {
					if p.Refused != "" && strings.Contains(p.Reason, kind) {
						refused[kind]++
					}
				}
			}
			// The change is exactly the difference between the states.
			b, a := diffVIPs(prev.VIPs, got.VIPs)
			if !reflect.DeepEqual(nonNil(b), nonNil(ch.Before)) || !reflect.DeepEqual(nonNil(a), nonNil(ch.After)) {
				t.Fatalf("seed %d step %d: change before %v after %v, want %v %v", seed, step, ch.Before, ch.After, b, a)
			}
			prev = got
			prev.VIPs = slices.Clone(got.VIPs)
		}
	}
}

func nonNil(v []VIP) []VIP {
	if v == nil {
		return []VIP{}
	}
	return v
}

// TestIndexUnchangedGroupIsFree: setting a group to what it holds marks
// nothing, so a full list that changed nothing costs no recomputation.
func TestIndexUnchangedGroupIsFree(t *testing.T) {
	cfg := Config{}
	x := NewIndex(cfg)
	app := App{ID: "/a", PortDefinitions: []Port{{Labels: map[string]string{"VIP_0": "a:80"}}},
		Tasks: []Task{{ID: "t", Host: "198.19.0.1", Ports: []int{31000}, State: "TASK_RUNNING"}}}
	d, p, _ := DeclareApp(app, cfg, nil)
	x.Set("/a", d, p)
	if ch := x.Commit(); len(ch.After) != 1 || !ch.Allocations {
		t.Fatalf("first commit: %+v", ch)
	}
	d, p, _ = DeclareApp(app, cfg, nil)
	x.Set("/a", d, p)
	if len(x.dirty) != 0 {
		t.Fatalf("an unchanged group marked %d units", len(x.dirty))
	}
	if ch := x.Commit(); !ch.Empty() {
		t.Fatalf("commit of nothing: %+v", ch)
	}
}

// TestHealthMemory: a new task without results is starting; a task seen
// with results keeps its state while they are missing (a Marathon leader
// failover), until results come back.
func TestHealthMemory(t *testing.T) {
	cfg := Config{}
	app := func(results ...bool) App {
		task := Task{ID: "t1", Host: "198.19.0.1", Ports: []int{31000}, State: "TASK_RUNNING"}
		for _, ok := range results {
			task.HealthCheckResults = append(task.HealthCheckResults, HealthCheckResult{Alive: ok})
		}
		return App{ID: "/a", HealthChecks: []HealthCheck{{}}, PortDefinitions: []Port{{Labels: map[string]string{"VIP_0": "a:80"}}},
			Tasks: []Task{task}}
	}
	state := func(d []Decl) BackendState { return d[0].Backends[0].State }
	var known Health
	steps := []struct {
		results []bool
		want    BackendState
	}{
		{nil, Starting}, {nil, Starting}, {[]bool{true}, Active}, {nil, Active},
		{[]bool{false}, Unhealthy}, {nil, Unhealthy}, {[]bool{true}, Active},
	}
	for i, s := range steps {
		var d []Decl
		d, _, known = DeclareApp(app(s.results...), cfg, known)
		if got := state(d); got != s.want {
			t.Fatalf("step %d (results %v): %s, want %s", i, s.results, got, s.want)
		}
	}
	// A task that is gone is forgotten.
	gone := app()
	gone.Tasks = nil
	_, _, known = DeclareApp(gone, cfg, known)
	if len(known) != 0 {
		t.Fatalf("memory of a gone task kept: %v", known)
	}
}

// TestIndexGuardWork: a task host that appears or goes rechecks only the
// IP VIP at its address, and new agent networks recheck every IP VIP but no
// named VIP; an IP VIP refused for a host comes back once the host goes.
func TestIndexGuardWork(t *testing.T) {
	cfg := Config{Pool4: netip.MustParsePrefix("198.18.0.0/24")}
	x := NewIndex(cfg)
	ip := App{ID: "/ip", PortDefinitions: []Port{{Labels: map[string]string{"VIP_0": "198.19.0.5:80", "VIP_1": "198.19.7.1:80", "VIP_2": "name:80"}}}}
	d, p, _ := DeclareApp(ip, cfg, nil)
	x.Set("/ip", d, p, AppHosts(ip, d, nil)...)
	if ch := x.Commit(); len(ch.After) != 3 {
		t.Fatalf("first commit: %+v", ch)
	}
	// An app without VIPs starts a task (still staging) on 198.19.0.5.
	other := App{ID: "/other", Tasks: []Task{{ID: "o.1", Host: "198.19.0.5", State: "TASK_STAGING"}}}
	d, p, _ = DeclareApp(other, cfg, nil)
	x.Set("/other", d, p, AppHosts(other, d, nil)...)
	if want := map[unitKey]bool{{ip: netip.MustParseAddr("198.19.0.5")}: true}; !reflect.DeepEqual(x.dirty, want) {
		t.Fatalf("a new task host marked %v, want only the IP VIP at its address", x.dirty)
	}
	ch := x.Commit()
	if len(ch.Before) != 1 || ch.Before[0].Addr.String() != "198.19.0.5" || len(ch.After) != 0 {
		t.Fatalf("change %+v, want the IP VIP at the host gone", ch)
	}
	if ps := problemsOf(x.Problems()); !slices.Equal(ps, []string{
		"app /ip label VIP_0: IP VIP address 198.19.0.5 refused: the address of task host 198.19.0.5 of task o.1 of app /other",
	}) {
		t.Fatalf("problems %v", ps)
	}
	// The agent's networks change: both IP VIPs are checked, the name not.
	x.SetLocal(&LocalNets{Connected: []netip.Prefix{netip.MustParsePrefix("198.19.7.0/24")}})
	if len(x.dirty) != 2 || x.dirty[unitKey{name: "name.marathon.l4lb.thisdcos.directory"}] {
		t.Fatalf("new networks marked %v, want the two IP VIPs", x.dirty)
	}
	ch = x.Commit()
	if len(ch.Before) != 1 || ch.Before[0].Addr.String() != "198.19.7.1" {
		t.Fatalf("change %+v, want the IP VIP inside the new network gone", ch)
	}
	// The same networks again cost nothing.
	x.SetLocal(&LocalNets{Connected: []netip.Prefix{netip.MustParsePrefix("198.19.7.0/24")}})
	if len(x.dirty) != 0 {
		t.Fatalf("unchanged networks marked %v", x.dirty)
	}
	// The task goes: the IP VIP comes back.
	x.Delete("/other")
	ch = x.Commit()
	if len(ch.After) != 1 || ch.After[0].Addr.String() != "198.19.0.5" {
		t.Fatalf("change %+v, want the IP VIP back", ch)
	}
	if ps := problemsOf(x.Problems()); len(ps) != 1 || !strings.Contains(ps[0], "198.19.7.1 refused: inside 198.19.7.0/24") {
		t.Fatalf("problems %v", ps)
	}
}

// TestPatchVIPsPaths: the in-place patch and the merge give the same list.
func TestPatchVIPsPaths(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	mk := func(i int) VIP {
		return VIP{Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), Port: 80, Proto: TCP}
	}
	for round := 0; round < 200; round++ {
		var vips, before, after []VIP
		present := map[int]bool{}
		for i := 0; i < 300; i++ {
			if r.IntN(2) == 0 {
				vips = append(vips, mk(i))
				present[i] = true
			}
		}
		for i := 0; i < 300; i++ {
			switch {
			case present[i] && r.IntN(5) == 0: // removed
				before = append(before, mk(i))
			case present[i] && r.IntN(5) == 0: // changed
				before = append(before, mk(i))
				v := mk(i)
				v.Name = "changed"
				after = append(after, v)
			case !present[i] && r.IntN(5) == 0: // added
				after = append(after, mk(i))
			}
		}
		merged := mergeVIPs(slices.Clone(vips), before, after)
		small := slices.Clone(vips)
		for _, v := range before {
			small = patchVIPs(small, []VIP{v}, nil)
		}
		small = patchVIPs(small, nil, nil)
		for _, v := range after {
			small = patchVIPs(small, nil, []VIP{v})
		}
		if !reflect.DeepEqual(nonNil(merged), nonNil(small)) {
			t.Fatalf("round %d: merge and in-place patch differ", round)
		}
		if !slices.IsSortedFunc(merged, func(a, b VIP) int { return a.Key().Compare(b.Key()) }) {
			t.Fatalf("round %d: not sorted", round)
		}
	}
}
