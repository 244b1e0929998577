package forward

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/vip"
)

// The kernel tests run in a topology of namespaces: a container behind the
// agent's ctr0 bridge, backends behind its hosts0 bridge, the agent
// forwarding between them. l4lb's nat table is programmed for real; the
// FORWARD policy is set to DROP inside the agent only, as Docker would.

const (
	srvPort = 8080
	// The pool is small enough that the IP VIP is outside it and gets a
	// rule of its own.
	pool4 = "198.18.0.0/24"
	pool6 = "fd00:198:18::/64"
	ipVIP = "198.18.255.10"
)

type env struct {
	topo      *netns.Topology
	agent     *netns.NS
	ctr       *netns.NS
	fw        *Kernel
	want      Want
	web4      netip.AddrPort // named VIP, IPv4, tcp and udp
	web6      netip.AddrPort // named VIP, IPv6, tcp and udp
	ipvip     netip.AddrPort // IP VIP outside the pool, tcp
	closed    netip.AddrPort // named VIP, udp, whose backend port is closed
	direct4   netip.AddrPort // a backend's own address: not a VIP
	direct6   netip.AddrPort
	backendOf map[string]bool
}

func newEnv(t *testing.T) *env {
	topo := netns.TopologyForTest(t, "l4fw", 2, 1, "nft", "iptables", "ip6tables")
	e := &env{topo: topo, agent: topo.Agent.NS, ctr: topo.Containers[0].NS, backendOf: map[string]bool{}}
	var tasks4, tasks6 []string
	for i, b := range topo.Backends {
		name := fmt.Sprintf("be%d", i+1)
		e.backendOf[name] = true
		for _, a := range []netip.Addr{b.Addr4, b.Addr6} {
			s, err := b.Serve(name, netip.AddrPortFrom(a, srvPort))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
		}
		tasks4 = append(tasks4, fmt.Sprintf(`{"id": "web.%d", "host": "%s", "ports": [%d], "state": "TASK_RUNNING"}`, i+1, b.Addr4, srvPort))
		tasks6 = append(tasks6, fmt.Sprintf(`{"id": "six.%d", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "%s", "protocol": "IPv6"}]}`, i+1, b.Addr6))
	}
	apps := fmt.Sprintf(`{"apps": [
	  {"id": "/web", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "web:80", "VIP_1": "%s:80"}}], "tasks": [%s]},
	  {"id": "/six", "networks": [{"mode": "container", "name": "six"}],
	   "container": {"portMappings": [{"containerPort": %d, "protocol": "udp,tcp", "labels": {"VIP_0": "six:80"}}]}, "tasks": [%s]},
	  {"id": "/closed", "portDefinitions": [{"port": 0, "protocol": "udp", "labels": {"VIP_0": "closed:81"}}],
	   "tasks": [{"id": "closed.1", "host": "%s", "ports": [9], "state": "TASK_RUNNING"}]}
	]}`, ipVIP, strings.Join(tasks4, ","), srvPort, strings.Join(tasks6, ","), topo.Backends[0].Addr4)
	parsed, problems, err := vip.ParseApps([]byte(apps))
	if err != nil || len(problems) > 0 {
		t.Fatalf("apps: %v %v", err, problems)
	}
	state, problems := vip.Desired(parsed, vip.Config{Pool4: netip.MustParsePrefix(pool4), Pool6: netip.MustParsePrefix(pool6)})
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	for _, v := range state.VIPs {
		switch {
		case v.Name == "web.marathon.l4lb.thisdcos.directory":
			e.web4 = netip.AddrPortFrom(v.Addr, 80)
		case v.Name == "six.marathon.l4lb.thisdcos.directory":
			e.web6 = netip.AddrPortFrom(v.Addr, 80)
		case v.Name == "":
			e.ipvip = netip.AddrPortFrom(v.Addr, 80)
		case v.Name == "closed.marathon.l4lb.thisdcos.directory":
			e.closed = netip.AddrPortFrom(v.Addr, 81)
		}
	}
	if !e.web4.IsValid() || !e.web6.IsValid() || !e.closed.IsValid() || e.ipvip.Addr() != netip.MustParseAddr(ipVIP) {
		t.Fatalf("VIPs: %+v", state.VIPs)
	}
	e.direct4 = netip.AddrPortFrom(topo.Backends[0].Addr4, srvPort)
	e.direct6 = netip.AddrPortFrom(topo.Backends[0].Addr6, srvPort)

	f, err := e.agent.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	k, err := nat.New(nat.DefaultTable, nat.WithNetNS(int(f.Fd())))
	if err != nil {
		t.Fatalf("nat.New: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	rs := nat.Compile(state, "")
	if _, err := k.Apply(context.Background(), rs, false); err != nil {
		t.Fatalf("nat Apply: %v", err)
	}
	e.want = WantFor(rs)
	e.fw = New(WithNetNS(int(f.Fd())))
	return e
}

func (e *env) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := e.agent.Run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) sync(t *testing.T) Result {
	t.Helper()
	res, err := e.fw.Sync(context.Background(), e.want)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return res
}

type probe struct {
	name string
	to   netip.AddrPort
	udp  bool
}

func (e *env) vipProbes() []probe {
	return []probe{
		{"tcp to a named VIP", e.web4, false},
		{"udp to a named VIP", e.web4, true},
		{"tcp to an IPv6 VIP", e.web6, false},
		{"udp to an IPv6 VIP", e.web6, true},
		{"tcp to an IP VIP outside the pool", e.ipvip, false},
	}
}

func (e *env) directProbes() []probe {
	return []probe{
		{"tcp straight to a backend", e.direct4, false},
		{"udp straight to a backend", e.direct4, true},
		{"tcp straight to an IPv6 backend", e.direct6, false},
	}
}

func (e *env) ask(p probe, timeout time.Duration) (string, error) {
	if p.udp {
		return e.ctr.AskUDP(p.to, netip.AddrPort{}, timeout)
	}
	return e.ctr.AskTCP(p.to, timeout)
}

// flows checks that every probe from the container reaches a backend.
func (e *env) flows(t *testing.T, when string, ps []probe) {
	t.Helper()
	for _, p := range ps {
		for range 3 {
			got, err := e.ask(p, 2*time.Second)
			if err != nil || !e.backendOf[got] {
				t.Errorf("%s: %s (%s): %q, %v", when, p.name, p.to, got, err)
				break
			}
		}
	}
}

// dropped checks that every probe from the container times out: silently
// dropped by FORWARD, neither answered nor refused.
// The probes run side by side: each waits out its timeout.
func (e *env) dropped(t *testing.T, when string, ps []probe) {
	t.Helper()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			got, err := e.ask(p, 800*time.Millisecond)
			if err == nil || netns.IsRefused(err) {
				t.Errorf("%s: %s (%s): %q, %v; want a timeout", when, p.name, p.to, got, err)
			}
		})
	}
	wg.Wait()
}

// TestForwardDrop is the scenario: FORWARD policy DROP in the
// agent, VIP traffic from a container to backends on the other bridge.
func TestForwardDrop(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	// Policy ACCEPT: traffic flows and l4lb installs nothing.
	e.flows(t, "policy ACCEPT", append(e.vipProbes(), e.directProbes()...))
	if res := e.sync(t); res.Changed() || len(res.Active) > 0 {
		t.Errorf("policy ACCEPT: %+v", res)
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if out := e.run(t, cmd, "-S"); strings.Contains(out, Chain) {
			t.Errorf("policy ACCEPT, %s -S:\n%s", cmd, out)
		}
	}

	// Docker's part, as far as it matters: a rule of its own, then DROP.
	for _, cmd := range []string{"iptables", "ip6tables"} {
		e.run(t, cmd, "-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-m", "comment", "--comment", "not l4lb's", "-j", "ACCEPT")
		e.run(t, cmd, "-P", "FORWARD", "DROP")
	}
	before4, before6 := e.run(t, "iptables", "-S"), e.run(t, "ip6tables", "-S")
	e.dropped(t, "policy DROP, no l4lb rules", append(e.vipProbes(), e.directProbes()...))

	// The next Sync sees the policy and lets VIP traffic through, in both
	// directions, and nothing else.
	res := e.sync(t)
	if !slices.Equal(res.Active, []string{"iptables-nft", "ip6tables-nft"}) || !res.Changed() || len(res.Unchecked) > 0 {
		t.Errorf("policy DROP: %+v", res)
	}
	want4 := []string{
		"-P FORWARD DROP",
		"-N L4LB-FORWARD",
		`-A FORWARD -m comment --comment "l4lb: accept connections to VIPs that l4lb DNATed" -j L4LB-FORWARD`,
		`-A FORWARD -i docker0 ! -o docker0 -m comment --comment "not l4lb\'s" -j ACCEPT`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.18.0.0/24 -m comment --comment "l4lb: VIP pool" -j ACCEPT`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.18.255.10 -m comment --comment "l4lb: IP VIP" -j ACCEPT`,
	}
	want6 := []string{
		"-P FORWARD DROP",
		"-N L4LB-FORWARD",
		`-A FORWARD -m comment --comment "l4lb: accept connections to VIPs that l4lb DNATed" -j L4LB-FORWARD`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst fd00:198:18::/64 -m comment --comment "l4lb: VIP pool" -j ACCEPT`,
	}
	checkLines(t, "iptables -S", e.run(t, "iptables", "-S"), want4)
	checkLines(t, "ip6tables -S", e.run(t, "ip6tables", "-S"), want6)
	e.flows(t, "l4lb's rules in place", e.vipProbes())
	e.dropped(t, "l4lb's rules in place", e.directProbes())
	// The backend's ICMP port unreachable is related to the DNATed
	// connection, so it passes too: the container hears "refused" at once.
	start := time.Now()
	if _, err := e.ctr.AskUDP(e.closed, netip.AddrPort{}, 3*time.Second); !netns.IsRefused(err) {
		t.Errorf("udp to a VIP whose backend port is closed: %v after %v, want a refusal, not a timeout", err, time.Since(start))
	}

	// Nothing changes on the next Sync.
	if res := e.sync(t); res.Changed() || len(res.Active) != 2 {
		t.Errorf("second Sync: %+v", res)
	}

	// Back to ACCEPT for IPv4: l4lb's IPv4 rules go, IPv6 stays.
	e.run(t, "iptables", "-P", "FORWARD", "ACCEPT")
	if res := e.sync(t); !slices.Equal(res.Active, []string{"ip6tables-nft"}) {
		t.Errorf("IPv4 policy ACCEPT: %+v", res)
	}
	if out := e.run(t, "iptables", "-S"); strings.Contains(out, Chain) || !strings.Contains(out, "not l4lb") {
		t.Errorf("IPv4 policy ACCEPT, iptables -S:\n%s", out)
	}
	e.flows(t, "IPv4 policy ACCEPT", e.vipProbes())

	// Docker sets DROP again later: picked up by the next Sync.
	e.run(t, "iptables", "-P", "FORWARD", "DROP")
	e.dropped(t, "DROP again, before Sync", e.vipProbes()[:2])
	if res := e.sync(t); len(res.Active) != 2 || !res.Changed() {
		t.Errorf("DROP again: %+v", res)
	}
	e.flows(t, "DROP again, after Sync", e.vipProbes())

	// Cleanup takes l4lb's chain and jump away and leaves FORWARD as the
	// host had it.
	if err := e.fw.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if got := e.run(t, "iptables", "-S"); got != before4 {
		t.Errorf("after Cleanup, iptables -S:\n%s\nwant\n%s", got, before4)
	}
	if got := e.run(t, "ip6tables", "-S"); got != before6 {
		t.Errorf("after Cleanup, ip6tables -S:\n%s\nwant\n%s", got, before6)
	}
	e.dropped(t, "after Cleanup", e.vipProbes()[:3])
	if err := e.fw.Cleanup(ctx); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}

	// Reading the nft backend, l4lb never instantiated a legacy table.
	if out := e.run(t, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"); strings.TrimSpace(out) != "" {
		t.Errorf("legacy tables created: %q", out)
	}
}

// TestForwardLegacy: the DROP policy is in the legacy tables (Docker with
// iptables-legacy); l4lb's rules go there, and nowhere else.
func TestForwardLegacy(t *testing.T) {
	e := newEnv(t)
	Require := func(tool string) {
		if _, err := e.agent.Run("sh", "-c", "command -v "+tool); err != nil {
			if netns.InCI() {
				t.Fatalf("%s missing", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	Require("iptables-legacy")
	Require("ip6tables-legacy")
	for _, cmd := range []string{"iptables-legacy", "ip6tables-legacy"} {
		e.run(t, cmd, "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT")
		e.run(t, cmd, "-P", "FORWARD", "DROP")
	}
	before4 := e.run(t, "iptables-legacy", "-S")
	e.dropped(t, "legacy DROP, no l4lb rules", e.vipProbes()[:2])
	res := e.sync(t)
	if !slices.Equal(res.Active, []string{"iptables-legacy", "ip6tables-legacy"}) {
		t.Errorf("legacy DROP: %+v", res)
	}
	checkLines(t, "iptables-legacy -S", e.run(t, "iptables-legacy", "-S"), []string{
		`-A FORWARD -m comment --comment "l4lb: accept connections to VIPs that l4lb DNATed" -j L4LB-FORWARD`,
		`-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.18.0.0/24 -m comment --comment "l4lb: VIP pool" -j ACCEPT`,
	})
	if out := e.run(t, "iptables-nft", "-S"); strings.Contains(out, Chain) {
		t.Errorf("l4lb's chain in the nft backend too:\n%s", out)
	}
	e.flows(t, "legacy, l4lb's rules in place", e.vipProbes())
	e.dropped(t, "legacy, l4lb's rules in place", e.directProbes())
	if res := e.sync(t); res.Changed() {
		t.Errorf("second Sync: %+v", res)
	}
	if err := e.fw.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.run(t, "iptables-legacy", "-S"); got != before4 {
		t.Errorf("after Cleanup:\n%s\nwant\n%s", got, before4)
	}
}

// checkLines checks that every wanted line is in out, in this order.
func checkLines(t *testing.T, what, out string, want []string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	i := 0
	for _, l := range lines {
		if i < len(want) && l == want[i] {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("%s lacks (in order) %q:\n%s", what, want[i], out)
	}
}
