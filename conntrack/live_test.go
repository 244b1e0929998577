package conntrack

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

const livePort = 31080 // backends serve TCP and UDP here

// liveApps is one app per family with a task on each backend of topo,
// states[i] being task i's state fragment ("" leaves the task out).
func liveApps(topo *netns.Topology, states []string) string {
	var t4, t6 []string
	for i, be := range topo.Backends {
		if states[i] == "" {
			continue
		}
		t4 = append(t4, fmt.Sprintf(`{"id": "web.%d", "host": "%s", "ports": [%d], %s}`, i+1, be.Addr4, livePort, states[i]))
		t6 = append(t6, fmt.Sprintf(`{"id": "web6.%d", "ipAddresses": [{"ipAddress": "%s", "protocol": "IPv6"}], %s}`, i+1, be.Addr6, states[i]))
	}
	return fmt.Sprintf(`{"apps": [
	  {"id": "/web", "healthChecks": [{"protocol": "TCP"}],
	   "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "web:80"}}],
	   "tasks": [%s]},
	  {"id": "/web6", "healthChecks": [{"protocol": "TCP"}], "networks": [{"mode": "container", "name": "six"}],
	   "container": {"portMappings": [{"containerPort": %d, "protocol": "udp,tcp", "labels": {"VIP_0": "web6:80"}}]},
	   "tasks": [%s]}]}`, strings.Join(t4, ","), livePort, strings.Join(t6, ","))
}

// held is a TCP connection through a VIP, with the backend it reached.
type held struct {
	from    string         // client namespace
	local   netip.AddrPort // client address and port
	backend string         // server name from the greeting
	conn    net.Conn
	r       *bufio.Reader
}

// echo sends a line and waits for the backend's echo; it returns the time
// the answer (or the error) took.
func (h *held) echo(line string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = h.conn.SetDeadline(start.Add(timeout))
	if _, err := fmt.Fprintf(h.conn, "%s\n", line); err != nil {
		return time.Since(start), err
	}
	got, err := h.r.ReadString('\n')
	if err != nil {
		return time.Since(start), err
	}
	if want := h.backend + " " + line + "\n"; got != want {
		return time.Since(start), fmt.Errorf("echo %q, want %q", got, want)
	}
	return time.Since(start), nil
}

// dialVIP connects from client to the VIP and reads the greeting.
func dialVIP(t *testing.T, client *netns.NS, to netip.AddrPort) *held {
	t.Helper()
	c, err := client.DialTCP(ctx(t), to)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", to, client.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	h := &held{from: client.Name, conn: c, r: bufio.NewReader(c),
		local: c.LocalAddr().(*net.TCPAddr).AddrPort()}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	greeting, err := h.r.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting from %s to %s: %v", to, client.Name, err)
	}
	h.backend = strings.TrimSpace(greeting)
	return h
}

// TestCleanupLive is the scenario with real connections: a dozen
// held TCP connections per family from the agent (output hook) and from a
// container (prerouting) to a VIP, over three backends. One backend turns
// unhealthy and one starts draining: after the ruleset change and the
// cleanup, the unhealthy one's clients get a reset on their next packet,
// the others keep working, new connections avoid both, and a UDP flow
// pinned to the unhealthy one moves. Then the draining task goes away, and
// finally the last backend fails (N to 0).
func TestCleanupLive(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4cl", 3, 1, "nft", "conntrack", "stdbuf")
	agent, ctr := topo.Agent.NS, topo.Containers[0].NS
	names := map[string]int{}
	for i, be := range topo.Backends {
		name := fmt.Sprintf("be%d", i+1)
		names[name] = i
		for _, a := range []netip.Addr{be.Addr4, be.Addr6} {
			srv, err := be.Serve(name, netip.AddrPortFrom(a, livePort))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Close)
		}
	}
	// Local clients need routes to the VIP pools, as l4lb installs them.
	for _, args := range [][]string{
		{"ip", "route", "add", testPool4.String(), "dev", "lo"},
		{"ip", "-6", "route", "add", testPool6.String(), "dev", "lo"},
	} {
		if _, err := agent.Run(args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}

	alive := `"state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}]`
	dead := `"state": "TASK_RUNNING", "healthCheckResults": [{"alive": false}]`
	state := stateOf(t, liveApps(topo, []string{alive, alive, alive}), vip.State{})
	vips := map[bool]netip.AddrPort{} // by "is IPv6"
	for _, v := range state.VIPs {
		if v.Proto == vip.TCP {
			vips[v.Addr.Is6()] = netip.AddrPortFrom(v.Addr, v.Port)
		}
	}
	dp := newDataPlane(t, agent)
	dp.apply(t, state)
	k := kernelFor(t, agent)
	cleaner := NewCleaner(k, true, nil)
	if r, err := cleaner.Applied(ctx(t), state); err != nil || !r.Full || r.Deleted != 0 {
		t.Fatalf("first pass: %+v, %v", r, err)
	}

	// A dozen connections per family, at least two per backend from each
	// client.
	var conns []*held
	for _, six := range []bool{false, true} {
		for _, client := range []*netns.NS{agent, ctr} {
			per := map[string]int{}
			for tries := 0; len(per) < 3 || minCount(per) < 2; tries++ {
				if tries == 60 {
					t.Fatalf("60 connections from %s did not reach every backend twice: %v", client.Name, per)
				}
				h := dialVIP(t, client, vips[six])
				per[h.backend]++
				conns = append(conns, h)
			}
		}
	}
	for _, h := range conns {
		if _, err := h.echo("hello", 2*time.Second); err != nil {
			t.Fatalf("%s -> %s before any change: %v", h.from, h.backend, err)
		}
	}

	// UDP flows from fixed source ports, pinned to be1.
	type udpFlow struct {
		client *netns.NS
		local  netip.AddrPort
		vip    netip.AddrPort
	}
	var udps []udpFlow
	for _, u := range []struct {
		client *netns.NS
		addr   netip.Addr
		six    bool
	}{{agent, topo.Agent.Addr4, false}, {ctr, topo.Containers[0].Addr4, false}, {ctr, topo.Containers[0].Addr6, true}} {
		v := vips[u.six]
		found := false
		for port := uint16(40000); port < 40100 && !found; port++ {
			local := netip.AddrPortFrom(u.addr, port)
			name, err := u.client.AskUDP(v, local, 2*time.Second)
			if err != nil {
				t.Fatalf("udp %s -> %s: %v", local, v, err)
			}
			if name == "be1" {
				udps = append(udps, udpFlow{u.client, local, v})
				found = true
			}
		}
		if !found {
			t.Fatalf("no UDP source port of %s reached be1", u.addr)
		}
	}
	askUDP := func(u udpFlow) string {
		t.Helper()
		name, err := u.client.AskUDP(u.vip, u.local, 2*time.Second)
		if err != nil {
			t.Fatalf("udp %s -> %s: %v", u.local, u.vip, err)
		}
		return name
	}

	// be1 unhealthy, be2 draining, be3 healthy.
	prev := state
	state = stateOf(t, liveApps(topo, []string{dead, `"state": "TASK_KILLING"`, alive}), prev)
	dp.apply(t, state)
	// The ruleset alone breaks nothing: established flows keep their entry.
	for _, h := range conns {
		if _, err := h.echo("ruleset", 2*time.Second); err != nil {
			t.Fatalf("%s -> %s after the ruleset change: %v", h.from, h.backend, err)
		}
	}
	for _, u := range udps {
		if got := askUDP(u); got != "be1" {
			t.Fatalf("UDP %s moved to %s before the cleanup", u.local, got)
		}
	}
	cleanup := func(what string, gone ...netns.Host) {
		t.Helper()
		want := 0
		for _, be := range gone {
			want += len(toolFlows(t, agent, "--reply-src", be.Addr4.String()))
			want += len(toolFlows(t, agent, "--reply-src", be.Addr6.String()))
		}
		r, err := cleaner.Applied(ctx(t), state)
		t.Logf("%s: %+v", what, r)
		if err != nil || r.Full || r.Deleted != want {
			t.Errorf("%s: %+v, %v; want a suspects pass deleting the %d flows conntrack -L showed", what, r, err, want)
		}
		for _, be := range gone {
			for _, a := range []netip.Addr{be.Addr4, be.Addr6} {
				if left := toolFlows(t, agent, "--reply-src", a.String()); len(left) != 0 {
					t.Errorf("%s: conntrack -L still shows flows of %s:%s", what, a, flowsString(left))
				}
			}
		}
	}
	if n := count(conns, "be1"); n < 4 {
		t.Fatalf("%d connections to be1", n)
	}
	// Which host resets whom is recorded by the kernel in each backend's
	// namespace and in the agent's: the witness does not depend on seeing
	// the clients' next packets as they happen. Their next packet may be a
	// delayed ACK sent before the test writes anything, and the reset it
	// draws then breaks the connection before checkHeld's write.
	resets := map[string]*netns.ResetWitness{}
	for name, i := range names {
		w, err := topo.Backends[i].WatchResets(livePort)
		if err != nil {
			t.Fatal(err)
		}
		resets[name] = w
	}
	refusals, err := agent.WatchResets(vips[false].Port())
	if err != nil {
		t.Fatal(err)
	}
	resets["agent"] = refusals
	cleanup("unhealthy and draining", topo.Backends[0])
	// be1's clients get a reset at their next packet: conntrack picks the
	// packet up as a new flow, the VIP's chain DNATs it to be3, and be3,
	// which knows no such connection, resets it.
	checkHeld(t, conns, map[string]bool{"be1": true})
	resetBy(t, resets, conns, "be1", "be3")
	for _, u := range udps {
		if got := askUDP(u); got != "be3" {
			t.Errorf("UDP %s -> %s went to %s after the cleanup, want be3", u.local, u.vip, got)
		}
	}
	newConnsGoTo(t, []*netns.NS{agent, ctr}, vips, "be3")

	// be2's task is gone: its drained connections go too.
	state = stateOf(t, liveApps(topo, []string{dead, "", alive}), state)
	dp.apply(t, state)
	cleanup("draining task gone", topo.Backends[1])
	checkHeld(t, conns, map[string]bool{"be1": true, "be2": true})
	resetBy(t, resets, conns, "be2", "be3")

	// N to 0: the last backend fails; the VIP refuses everything.
	state = stateOf(t, liveApps(topo, []string{dead, "", dead}), state)
	dp.apply(t, state)
	cleanup("N to 0", topo.Backends[2])
	checkHeld(t, conns, map[string]bool{"be1": true, "be2": true, "be3": true})
	// No backend is left: the agent's refuse chain resets, from the VIP.
	resetBy(t, resets, conns, "be3", "agent")
	if left := toolFlows(t, agent); len(left) != 0 {
		t.Errorf("DNATed flows left with no backend:%s", flowsString(left))
	}
}

func minCount(m map[string]int) int {
	low := -1
	for _, n := range m {
		if low < 0 || n < low {
			low = n
		}
	}
	return low
}

func count(conns []*held, backend string) int {
	n := 0
	for _, h := range conns {
		if h.backend == backend {
			n++
		}
	}
	return n
}

// checkHeld sends a line on every held connection not already broken: the
// ones to a backend in reset must get a reset within a second, the others
// their echo.
func checkHeld(t *testing.T, conns []*held, reset map[string]bool) {
	t.Helper()
	for _, h := range conns {
		if h.conn == nil {
			continue
		}
		// A reset, not a timeout, is the point: the deadline only tells a
		// hang apart (shared machines stall, so it is not one second).
		took, err := h.echo("after", 3*time.Second)
		switch {
		case reset[h.backend] && !netns.IsRefused(err):
			t.Errorf("%s -> %s: %v after %v, want a reset, not a hang", h.from, h.backend, err, took)
		case !reset[h.backend] && err != nil:
			t.Errorf("%s -> %s broke: %v", h.from, h.backend, err)
		}
		if reset[h.backend] {
			h.conn.Close()
			h.conn = nil
		}
	}
}

// newConnsGoTo dials the VIPs a few times from each client and expects
// every connection to reach backend.
func newConnsGoTo(t *testing.T, clients []*netns.NS, vips map[bool]netip.AddrPort, backend string) {
	t.Helper()
	for _, six := range []bool{false, true} {
		for _, c := range clients {
			for range 8 {
				name, err := c.AskTCP(vips[six], 2*time.Second)
				if err != nil || name != backend {
					t.Errorf("new connection %s -> %s: %q, %v; want %s", c.Name, vips[six], name, err, backend)
				}
			}
		}
	}
}

// resetBy checks, with the reset witnesses, that every held connection
// that was served by backend was reset by the host by (a backend's name or
// "agent") and by no other host. A reset the agent's refuse chain sends to
// a container's packet leaves through the bridge port the packet came in
// by, not through the output hook, so the agent's witness sees only the
// resets of its own clients: a container's connection refused by the agent
// is one that no backend reset.
func resetBy(t *testing.T, resets map[string]*netns.ResetWitness, conns []*held, backend, by string) {
	t.Helper()
	peers := map[string]map[netip.AddrPort]bool{}
	for name, w := range resets {
		p, err := w.Peers()
		if err != nil {
			t.Fatal(err)
		}
		peers[name] = p
	}
	for _, h := range conns {
		if h.backend != backend {
			continue
		}
		var who []string
		for name, p := range peers {
			if p[h.local] {
				who = append(who, name)
			}
		}
		if by == "agent" && len(who) == 0 && h.from != resets["agent"].Name() {
			continue // a container's, refused through the bridge
		}
		if len(who) != 1 || who[0] != by {
			t.Errorf("%s -> %s (%s): reset by %v, want by %s alone", h.from, backend, h.local, who, by)
		}
	}
}

// syncBuffer is a strings.Builder that a command writes to while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
