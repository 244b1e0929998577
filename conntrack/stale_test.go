package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

// Pools of the unit tests: narrower than the VIP range of DESIGN section 6,
// so that IP VIPs in 198.18.255.0/24 and fd00:198:18:0:1::/80 lie outside
// them, as IP VIPs usually do.
var (
	unitPool4 = netip.MustParsePrefix("198.18.0.0/17")
	unitPool6 = netip.MustParsePrefix("fd00:198:18::/80")
)

// Task fragments for the apps below.
const (
	healthy   = `"state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}]`
	unhealthy = `"state": "TASK_RUNNING", "healthCheckResults": [{"alive": false}]`
	killing   = `"state": "TASK_KILLING"`
	killed    = `"state": "TASK_KILLED"`
	failed    = `"state": "TASK_FAILED"`
)

// world describes the apps of a test: the state of each task (empty: the
// task is not listed) and which VIP labels exist.
type world struct {
	web     [3]string // web.1..3 on 198.19.0.11..13 port 31000
	web8080 bool      // web also declares web:8080 on its second port (31001)
	six     [2]string // six.1..2 on fd00:198:19::b and ::c port 80
	ipvip   bool      // app /dns declares IP VIPs 198.18.255.1:53 and [fd00:198:18:0:1::53]:53
	dns     string    // task dns.1 on 198.19.0.14 port 31053 / fd00:198:19::e port 53
}

func allHealthy() world {
	return world{web: [3]string{healthy, healthy, healthy}, web8080: true,
		six: [2]string{healthy, healthy}, ipvip: true, dns: healthy}
}

func (w world) json() string {
	var b strings.Builder
	tasks := func(prefix string, states []string, task func(i int) string) string {
		var ts []string
		for i, st := range states {
			if st != "" {
				ts = append(ts, fmt.Sprintf(`{"id": "%s.%d", %s, %s}`, prefix, i+1, task(i), st))
			}
		}
		return strings.Join(ts, ",\n")
	}
	labels := `{"VIP_1": "web:8080"}`
	if !w.web8080 {
		labels = `{}`
	}
	fmt.Fprintf(&b, `{"apps": [
	{"id": "/web", "healthChecks": [{"protocol": "TCP"}],
	 "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "web:80"}},
	                     {"port": 0, "labels": %s}],
	 "tasks": [%s]},
	{"id": "/six", "healthChecks": [{"protocol": "TCP"}], "networks": [{"mode": "container", "name": "six"}],
	 "container": {"portMappings": [{"containerPort": 80, "labels": {"VIP_0": "six:80"}}]},
	 "tasks": [%s]}`, labels,
		tasks("web", w.web[:], func(i int) string {
			return fmt.Sprintf(`"host": "198.19.0.%d", "ports": [31000, 31001]`, 11+i)
		}),
		tasks("six", w.six[:], func(i int) string {
			return fmt.Sprintf(`"ipAddresses": [{"ipAddress": "fd00:198:19::%x", "protocol": "IPv6"}]`, 11+i)
		}))
	if w.ipvip {
		fmt.Fprintf(&b, `,
	{"id": "/dns4", "healthChecks": [{"protocol": "TCP"}],
	 "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "198.18.255.1:53"}}],
	 "tasks": [%s]},
	{"id": "/dns6", "healthChecks": [{"protocol": "TCP"}], "networks": [{"mode": "container", "name": "six"}],
	 "container": {"portMappings": [{"containerPort": 53, "protocol": "udp,tcp", "labels": {"VIP_0": "[fd00:198:18:0:1::53]:53"}}]},
	 "tasks": [%s]}`,
			tasks("dns4", []string{w.dns}, func(int) string { return `"host": "198.19.0.14", "ports": [31053]` }),
			tasks("dns6", []string{w.dns}, func(int) string {
				return `"ipAddresses": [{"ipAddress": "fd00:198:19::e", "protocol": "IPv6"}]`
			}))
	}
	b.WriteString("\n]}")
	return b.String()
}

// desired computes the state of w, with the VIP addresses of prev kept (as
// the daemon does with its persisted allocations).
func desired(t testing.TB, w world, prev vip.State) vip.State {
	t.Helper()
	apps, problems, err := vip.ParseApps([]byte(w.json()))
	if err != nil || len(problems) > 0 {
		t.Fatalf("parse apps: %v %v\n%s", err, problems, w.json())
	}
	s, problems := vip.Desired(apps, vip.Config{Pool4: unitPool4, Pool6: unitPool6, Previous: prev.Allocations})
	if len(problems) > 0 {
		t.Fatalf("desired: %v", problems)
	}
	return s
}

func findVIP(t testing.TB, s vip.State, name string, port uint16, proto vip.Proto) vip.VIP {
	t.Helper()
	for _, v := range s.VIPs {
		if (v.Name == name || v.Addr.String() == name) && v.Port == port && v.Proto == proto {
			return v
		}
	}
	t.Fatalf("no VIP %s:%d/%s in state", name, port, proto)
	return vip.VIP{}
}

var (
	client4 = netip.MustParseAddr("198.19.1.11")
	client6 = netip.MustParseAddr("fd00:198:19::1:b")
	hostIP  = netip.MustParseAddr("198.19.0.1")
)

func ap(a string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(a), port)
}

// dnat is a flow from client port sport to dst, DNATed to backend.
func dnat(proto vip.Proto, sport uint16, dst, backend netip.AddrPort) Flow {
	c := client4
	if dst.Addr().Is6() {
		c = client6
	}
	return Flow{Proto: proto, OrigSrc: netip.AddrPortFrom(c, sport), OrigDst: dst,
		ReplySrc: backend, ReplyDst: netip.AddrPortFrom(c, sport)}
}

// table is the conntrack table of the tests: for each VIP of the all-healthy
// world, TCP and UDP flows to each backend, plus flows that are not
// l4lb's business.
type table struct {
	web80, web80u, web8080, six80, dns4, dns4u, dns6 vip.VIP
	flows                                            []Flow
	foreign                                          []Flow // never stale, whatever the state
}

func newTable(t testing.TB, s vip.State) table {
	var tb table
	tb.web80 = findVIP(t, s, "web.marathon.l4lb.thisdcos.directory", 80, vip.TCP)
	tb.web80u = findVIP(t, s, "web.marathon.l4lb.thisdcos.directory", 80, vip.UDP)
	tb.web8080 = findVIP(t, s, "web.marathon.l4lb.thisdcos.directory", 8080, vip.TCP)
	tb.six80 = findVIP(t, s, "six.marathon.l4lb.thisdcos.directory", 80, vip.TCP)
	tb.dns4 = findVIP(t, s, "198.18.255.1", 53, vip.TCP)
	tb.dns4u = findVIP(t, s, "198.18.255.1", 53, vip.UDP)
	tb.dns6 = findVIP(t, s, "fd00:198:18:0:1::53", 53, vip.TCP)
	sport := uint16(40000)
	for _, v := range []vip.VIP{tb.web80, tb.web80u, tb.web8080, tb.six80, tb.dns4, tb.dns4u, tb.dns6} {
		for _, b := range v.Backends {
			tb.flows = append(tb.flows, dnat(v.Proto, sport, netip.AddrPortFrom(v.Addr, v.Port), b.AddrPort()))
			sport++
		}
	}
	web := tb.web80.Addr
	tb.foreign = []Flow{
		// Straight to a backend, no VIP involved (a health check).
		{Proto: vip.TCP, OrigSrc: ap("198.19.0.1", 50000), OrigDst: ap("198.19.0.11", 31000),
			ReplySrc: ap("198.19.0.11", 31000), ReplyDst: ap("198.19.0.1", 50000)},
		// Docker-style port publishing: DNAT from a host port to a container.
		{Proto: vip.TCP, OrigSrc: ap("198.19.0.11", 50001), OrigDst: netip.AddrPortFrom(hostIP, 8080),
			ReplySrc: ap("198.19.1.12", 80), ReplyDst: ap("198.19.0.11", 50001)},
		// Docker-style DNAT to a local port (userland proxy, REDIRECT).
		{Proto: vip.TCP, OrigSrc: ap("198.19.1.12", 50002), OrigDst: netip.AddrPortFrom(hostIP, 8081),
			ReplySrc: ap("127.0.0.1", 80), ReplyDst: ap("198.19.1.12", 50002)},
		// A flow to a VIP address that was not DNATed (not l4lb's doing).
		{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 50003), OrigDst: netip.AddrPortFrom(web, 9999),
			ReplySrc: netip.AddrPortFrom(web, 9999), ReplyDst: ap("198.19.1.11", 50003)},
		// ICMP to a VIP address.
		{Proto: 1, OrigSrc: ap("198.19.1.11", 7), OrigDst: netip.AddrPortFrom(web, 0),
			ReplySrc: netip.AddrPortFrom(web, 0), ReplyDst: ap("198.19.1.11", 0)},
	}
	return tb
}

func (tb table) all() []Flow { return append(slices.Clone(tb.flows), tb.foreign...) }

// to returns the flows of the table whose reply source is one of backends.
func (tb table) to(backends ...string) []Flow {
	var out []Flow
	for _, f := range tb.flows {
		if slices.Contains(backends, f.ReplySrc.Addr().String()) {
			out = append(out, f)
		}
	}
	return out
}

func flowsString(fs []Flow) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "\n\t%s id %d", f, f.ID)
	}
	return b.String()
}

func sameFlows(t *testing.T, what string, got, want []Flow) {
	t.Helper()
	key := func(f Flow) string { return fmt.Sprintf("%s reply to %s zone %d id %d", f, f.ReplyDst, f.Zone, f.ID) }
	g, w := make([]string, len(got)), make([]string, len(want))
	for i := range got {
		g[i] = key(got[i])
	}
	for i := range want {
		w[i] = key(want[i])
	}
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("%s:\ngot %d:%s\nwant %d:%s", what, len(got), flowsString(got), len(want), flowsString(want))
	}
}

func TestStaleTransitions(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	flush := Options{FlushUnhealthy: true}
	web1, web2, web3 := "198.19.0.11", "198.19.0.12", "198.19.0.13"
	six1 := "fd00:198:19::b"
	change := func(f func(w *world)) vip.State {
		w := allHealthy()
		f(&w)
		return desired(t, w, base)
	}
	// A flow of web.1 that uses its second port for web:80: the task
	// restarted elsewhere on the same host.
	movedPort := dnat(vip.TCP, 41000, netip.AddrPortFrom(tb.web80.Addr, 80), ap(web1, 31999))
	// A backend of web:8080 answering for web:80: not one of its backends.
	wrongVIP := dnat(vip.TCP, 41001, netip.AddrPortFrom(tb.web80.Addr, 80), ap(web1, 31001))
	// Flows from before a restart, to a task this state never heard of.
	ghost := dnat(vip.TCP, 41002, netip.AddrPortFrom(tb.web80.Addr, 80), ap("198.19.0.99", 31000))
	ghost6 := dnat(vip.TCP, 41003, netip.AddrPortFrom(tb.six80.Addr, 80), ap("fd00:198:19::99", 80))
	// A UDP flow to a port that only has a TCP VIP.
	udpOnTCP := dnat(vip.UDP, 41004, netip.AddrPortFrom(tb.web8080.Addr, 8080), ap(web1, 31001))
	// A backend reaching its own VIP (hairpin, masqueraded).
	hairpin := Flow{Proto: vip.TCP, OrigSrc: ap(web1, 42000), OrigDst: netip.AddrPortFrom(tb.web80.Addr, 80),
		ReplySrc: ap(web1, 31000), ReplyDst: ap("198.19.0.1", 42000)}

	tests := []struct {
		name  string
		state vip.State
		opts  Options
		flows []Flow
		want  []Flow
	}{
		{name: "all healthy", state: base, opts: flush, flows: tb.all()},
		{name: "healthy to unhealthy", state: change(func(w *world) { w.web[0] = unhealthy }),
			opts: flush, flows: tb.all(), want: tb.to(web1)},
		{name: "unhealthy, flush off", state: change(func(w *world) { w.web[0] = unhealthy }),
			flows: tb.all()},
		{name: "draining", state: change(func(w *world) { w.web[0] = killing }), opts: flush, flows: tb.all()},
		{name: "draining and unhealthy", state: change(func(w *world) { w.web[0] = killing; w.web[1] = unhealthy }),
			opts: flush, flows: tb.all(), want: tb.to(web2)},
		{name: "task gone", state: change(func(w *world) { w.web[2] = "" }), opts: flush, flows: tb.all(), want: tb.to(web3)},
		{name: "task gone, flush off", state: change(func(w *world) { w.web[2] = "" }), flows: tb.all(), want: tb.to(web3)},
		{name: "task killed", state: change(func(w *world) { w.web[2] = killed }), opts: flush, flows: tb.all(), want: tb.to(web3)},
		{name: "task failed", state: change(func(w *world) { w.web[1] = failed }), opts: flush, flows: tb.all(), want: tb.to(web2)},
		{name: "N to 0", state: change(func(w *world) { w.web = [3]string{} }), opts: flush, flows: tb.all(),
			want: tb.to(web1, web2, web3)},
		{name: "N to 0 unhealthy", state: change(func(w *world) { w.web = [3]string{unhealthy, unhealthy, unhealthy} }),
			opts: flush, flows: tb.all(), want: tb.to(web1, web2, web3)},
		{name: "0 to N, flows left from before N to 0", state: change(func(w *world) { w.web = [3]string{"", "", healthy} }),
			opts: flush, flows: tb.all(), want: tb.to(web1, web2)},
		{name: "VIP port deleted, other port of the address kept", state: change(func(w *world) { w.web8080 = false }),
			opts: flush, flows: tb.all(), want: tb.flowsOf(tb.web8080)},
		{name: "restart with flows from before", state: base, opts: flush,
			flows: append(tb.all(), ghost, ghost6), want: []Flow{ghost, ghost6}},
		{name: "backend moved to another port", state: base, opts: flush, flows: []Flow{movedPort}, want: []Flow{movedPort}},
		{name: "backend of another VIP", state: base, opts: flush, flows: []Flow{wrongVIP}, want: []Flow{wrongVIP}},
		{name: "UDP to a TCP-only VIP", state: base, opts: flush, flows: []Flow{udpOnTCP}, want: []Flow{udpOnTCP}},
		{name: "IPv6 unhealthy", state: change(func(w *world) { w.six[0] = unhealthy }), opts: flush,
			flows: tb.all(), want: tb.to(six1)},
		{name: "IPv6 N to 0", state: change(func(w *world) { w.six = [2]string{} }), opts: flush,
			flows: tb.all(), want: tb.to(six1, "fd00:198:19::c")},
		{name: "UDP and TCP of the IP VIP, backend gone", state: change(func(w *world) { w.dns = "" }), opts: flush,
			flows: tb.all(), want: tb.to("198.19.0.14", "fd00:198:19::e")},
		{name: "hairpin kept", state: base, opts: flush, flows: []Flow{hairpin}},
		{name: "hairpin of an unhealthy backend", state: change(func(w *world) { w.web[0] = unhealthy }), opts: flush,
			flows: []Flow{hairpin}, want: []Flow{hairpin}},
		// IP VIPs outside the pools are l4lb's only while the state or
		// FormerVIPs says so.
		{name: "IP VIP deleted, unknown", state: change(func(w *world) { w.ipvip = false }), opts: flush,
			flows: tb.all()},
		{name: "IP VIP deleted, former", state: change(func(w *world) { w.ipvip = false }),
			opts:  Options{FlushUnhealthy: true, FormerVIPs: []netip.Addr{tb.dns4.Addr, tb.dns6.Addr}},
			flows: tb.all(), want: tb.to("198.19.0.14", "fd00:198:19::e")},
		{name: "app deleted", state: change(func(w *world) { w.web = [3]string{}; w.web8080 = false }),
			opts: flush, flows: tb.all(), want: tb.to(web1, web2, web3)},
		// Suspects narrow the pass: web.2's flows are stale too, but only
		// web.1 is looked at.
		{name: "suspects", state: change(func(w *world) { w.web[0] = unhealthy; w.web[1] = "" }),
			opts:  Options{FlushUnhealthy: true, Suspects: []netip.Addr{netip.MustParseAddr(web1)}},
			flows: tb.all(), want: tb.to(web1)},
		{name: "nothing to look at", state: base, opts: flush},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Stale(tc.flows, tc.state, tc.opts)
			sameFlows(t, "stale", got, tc.want)
			for _, f := range got {
				if slices.Contains(tb.foreign, f) {
					t.Errorf("foreign flow selected: %s", f)
				}
			}
		})
	}
}

// flowsOf returns the table's flows to v.
func (tb table) flowsOf(v vip.VIP) []Flow {
	var out []Flow
	for _, f := range tb.flows {
		if f.OrigDst == netip.AddrPortFrom(v.Addr, v.Port) && f.Proto == v.Proto {
			out = append(out, f)
		}
	}
	return out
}

func TestStaleKeepsOrderAndInput(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	w := allHealthy()
	w.web = [3]string{}
	s := desired(t, w, base)
	in := tb.all()
	before := slices.Clone(in)
	got := Stale(in, s, Options{FlushUnhealthy: true})
	if !slices.Equal(in, before) {
		t.Error("Stale changed its input")
	}
	want := tb.to("198.19.0.11", "198.19.0.12", "198.19.0.13")
	if !slices.Equal(got, want) {
		t.Errorf("order: got%s\nwant%s", flowsString(got), flowsString(want))
	}
}

func TestLost(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	change := func(f func(w *world)) vip.State {
		w := allHealthy()
		f(&w)
		return desired(t, w, base)
	}
	addrs := func(ss ...string) []netip.Addr {
		out := []netip.Addr{}
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	tests := []struct {
		name         string
		prev, cur    vip.State
		flush        bool
		suspects     []netip.Addr
		former       []netip.Addr
		wantSuspects []string
		wantFormer   []string
	}{
		{name: "no change", prev: base, cur: base, flush: true},
		{name: "unhealthy", prev: base, cur: change(func(w *world) { w.web[0] = unhealthy }), flush: true,
			wantSuspects: []string{"198.19.0.11"}},
		{name: "unhealthy, flush off", prev: base, cur: change(func(w *world) { w.web[0] = unhealthy })},
		{name: "unhealthy to gone, flush off", prev: change(func(w *world) { w.web[0] = unhealthy }),
			cur: change(func(w *world) { w.web[0] = "" }), wantSuspects: []string{"198.19.0.11"}},
		{name: "unhealthy to gone, flush on: nothing new", prev: change(func(w *world) { w.web[0] = unhealthy }),
			cur: change(func(w *world) { w.web[0] = "" }), flush: true},
		{name: "draining", prev: base, cur: change(func(w *world) { w.web[1] = killing }), flush: true},
		{name: "draining to gone", prev: change(func(w *world) { w.web[1] = killing }),
			cur: change(func(w *world) { w.web[1] = "" }), flush: true, wantSuspects: []string{"198.19.0.12"}},
		{name: "N to 0", prev: base, cur: change(func(w *world) { w.web = [3]string{} }), flush: true,
			wantSuspects: []string{"198.19.0.11", "198.19.0.12", "198.19.0.13"}},
		{name: "0 to N", prev: change(func(w *world) { w.web = [3]string{} }), cur: base, flush: true},
		{name: "IPv6", prev: base, cur: change(func(w *world) { w.six[1] = unhealthy }), flush: true,
			wantSuspects: []string{"fd00:198:19::c"}},
		{name: "pool VIP deleted", prev: base, cur: change(func(w *world) { w.web8080 = false }), flush: true,
			wantSuspects: []string{"198.19.0.11", "198.19.0.12", "198.19.0.13"}},
		{name: "IP VIPs deleted", prev: base, cur: change(func(w *world) { w.ipvip = false }), flush: true,
			wantSuspects: []string{"198.19.0.14", "fd00:198:19::e"},
			wantFormer:   []string{"198.18.255.1", "fd00:198:18:0:1::53"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sus, former := Lost(tc.prev, tc.cur, tc.flush)
			if want := addrs(tc.wantSuspects...); !slices.Equal(sus, want) {
				t.Errorf("suspects %v, want %v", sus, want)
			}
			if want := addrs(tc.wantFormer...); !slices.Equal(former, want) {
				t.Errorf("former %v, want %v", former, want)
			}
		})
	}
}

// TestLostNarrowsExactly checks the promise of Lost over every pair of
// worlds: among the flows that the old state kept, a pass narrowed to the
// suspects finds exactly what a full pass finds.
func TestLostNarrowsExactly(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	taskStates := []string{healthy, unhealthy, killing, killed, ""}
	var worlds []world
	for _, a := range taskStates {
		for _, b := range taskStates {
			w := allHealthy()
			w.web[0], w.six[1], w.dns = a, b, b
			worlds = append(worlds, w)
			w.web8080, w.ipvip = false, a != healthy
			worlds = append(worlds, w)
		}
	}
	states := make([]vip.State, len(worlds))
	for i, w := range worlds {
		states[i] = desired(t, w, base)
	}
	for _, flush := range []bool{true, false} {
		for i, prev := range states {
			// The flows prev stood behind. The IP VIP addresses count as
			// l4lb's even in worlds without them: their flows were cleaned
			// when they went away.
			var live []Flow
			stale := Stale(tb.all(), prev, Options{FlushUnhealthy: flush, FormerVIPs: []netip.Addr{tb.dns4.Addr, tb.dns6.Addr}})
			for _, f := range tb.all() {
				if !slices.Contains(stale, f) {
					live = append(live, f)
				}
			}
			for j, cur := range states {
				sus, former := Lost(prev, cur, flush)
				full := Stale(live, cur, Options{FlushUnhealthy: flush, FormerVIPs: former})
				var narrow []Flow
				if len(sus) > 0 {
					narrow = Stale(live, cur, Options{FlushUnhealthy: flush, FormerVIPs: former, Suspects: sus})
				}
				if !slices.Equal(full, narrow) {
					t.Fatalf("flush=%v worlds %d->%d: narrowed%s\nfull%s", flush, i, j, flowsString(narrow), flowsString(full))
				}
			}
		}
	}
}

// BenchmarkStale measures the selection alone over 100,000 flows of 30
// backends, one of which is gone: go test ./conntrack -run '^$' -bench Stale
func BenchmarkStale(b *testing.B) {
	var tasks []string
	for i := range 30 {
		tasks = append(tasks, fmt.Sprintf(`{"id": "b.%d", "host": "198.19.0.%d", "ports": [8080], "state": "TASK_RUNNING"}`, i, 10+i))
	}
	apps := func(ts []string) string {
		return fmt.Sprintf(`{"apps": [{"id": "/b", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "b:80"}}], "tasks": [%s]}]}`,
			strings.Join(ts, ","))
	}
	parse := func(js string, prev vip.State) vip.State {
		list, _, err := vip.ParseApps([]byte(js))
		if err != nil {
			b.Fatal(err)
		}
		s, _ := vip.Desired(list, vip.Config{Pool4: unitPool4, Pool6: unitPool6, Previous: prev.Allocations})
		return s
	}
	before := parse(apps(tasks), vip.State{})
	after := parse(apps(tasks[1:]), before)
	v := before.VIPs[0]
	flows := make([]Flow, 100_000)
	for i := range flows {
		flows[i] = dnat(v.Proto, uint16(i), netip.AddrPortFrom(v.Addr, v.Port), v.Backends[i%30].AddrPort())
	}
	sus, _ := Lost(before, after, true)
	for _, bc := range []struct {
		name  string
		flows []Flow
		opts  Options
	}{
		{"full-100k", flows, Options{FlushUnhealthy: true}},
		{"suspects-3.3k", Stale(flows, after, Options{FlushUnhealthy: true}), Options{FlushUnhealthy: true, Suspects: sus}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if got := Stale(bc.flows, after, bc.opts); len(got) != 3334 {
					b.Fatalf("%d stale", len(got))
				}
			}
		})
	}
}
