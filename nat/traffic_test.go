package nat

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// trafficApps are the apps of the traffic tests, backed by the servers of
// the topology: three backends on hosts0 and a container behind the agent.
func trafficApps(topo *netns.Topology, port int, webBackends []int) string {
	var web []string
	for _, i := range webBackends {
		b := topo.Backends[i]
		web = append(web, fmt.Sprintf(`{"id": "web.%d", "host": "%s", "ports": [%d], "state": "TASK_RUNNING"}`, i+1, b.Addr4, port))
	}
	var six, all []string
	for i, b := range topo.Backends {
		six = append(six, fmt.Sprintf(`{"id": "six.%d", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "%s", "protocol": "IPv6"}]}`, i+1, b.Addr6))
		all = append(all, fmt.Sprintf(`{"id": "ip.%d", "host": "%s", "ports": [%d], "state": "TASK_RUNNING"}`, i+1, b.Addr4, port))
	}
	c := topo.Containers[0]
	return fmt.Sprintf(`{"apps": [
	  {"id": "/web", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "web:80"}}], "tasks": [%s]},
	  {"id": "/six", "networks": [{"mode": "container", "name": "six"}],
	   "container": {"portMappings": [{"containerPort": %d, "protocol": "udp,tcp", "labels": {"VIP_0": "six:80"}}]}, "tasks": [%s]},
	  {"id": "/ipvip", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.18.255.10:8080"}}], "tasks": [%s]},
	  {"id": "/empty", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "empty:81"}}]},
	  {"id": "/hair", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "hair:90"}}],
	   "tasks": [{"id": "hair.1", "host": "%s", "ports": [%d], "state": "TASK_RUNNING"}]}
	]}`, strings.Join(web, ","), port, strings.Join(six, ","), strings.Join(all, ","), c.Addr4, port)
}

func desiredFrom(t *testing.T, apps string) vip.State {
	t.Helper()
	parsed, problems, err := vip.ParseApps([]byte(apps))
	if err != nil || len(problems) > 0 {
		t.Fatalf("apps: %v %v", err, problems)
	}
	s, problems := vip.Desired(parsed, vip.Config{Pool4: testPool4, Pool6: testPool6})
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	return s
}

// vipAddr finds the address of a named VIP of the family.
func vipAddr(t *testing.T, s vip.State, name string, v6 bool) netip.Addr {
	t.Helper()
	for _, v := range s.VIPs {
		if v.Name == name+".marathon.l4lb.thisdcos.directory" && v.Addr.Is6() == v6 {
			return v.Addr
		}
	}
	t.Fatalf("no VIP %s (v6 %v)", name, v6)
	return netip.Addr{}
}

// spread connects n times and counts which server answered.
func spread(t *testing.T, from *netns.NS, to netip.AddrPort, udp bool, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := range n {
		var name string
		var err error
		if udp {
			name, err = from.AskUDP(to, netip.AddrPort{}, 2*time.Second)
		} else {
			name, err = from.AskTCP(to, 2*time.Second)
		}
		if err != nil {
			t.Fatalf("%s #%d from %s: %v", to, i, from.Name, err)
		}
		seen[name]++
	}
	return seen
}

type trafficEnv struct {
	topo    *netns.Topology
	k       *Kernel
	port    int
	servers map[string]*netns.Server
}

func newTrafficEnv(t *testing.T) *trafficEnv {
	topo := netns.TopologyForTest(t, "l4nt", 3, 1, "nft")
	env := &trafficEnv{topo: topo, port: 8080, servers: map[string]*netns.Server{}}
	serve := func(h netns.Host, name string) {
		for _, a := range []netip.Addr{h.Addr4, h.Addr6} {
			s, err := h.Serve(name, netip.AddrPortFrom(a, uint16(env.port)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			env.servers[name+"/"+a.String()] = s
		}
	}
	for i, b := range topo.Backends {
		serve(b, fmt.Sprintf("be%d", i+1))
	}
	serve(topo.Containers[0], "ctr1")
	env.k = kernelFor(t, topo.Agent.NS)
	return env
}

func (e *trafficEnv) apply(t *testing.T, s vip.State, full bool) Result {
	t.Helper()
	res, err := e.k.Apply(context.Background(), Compile(s, ""), full)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

func TestTraffic(t *testing.T) {
	env := newTrafficEnv(t)
	topo := env.topo
	agent, ctr := topo.Agent.NS, topo.Containers[0].NS
	state := desiredFrom(t, trafficApps(topo, env.port, []int{0, 1, 2}))
	env.apply(t, state, false)

	web4 := netip.AddrPortFrom(vipAddr(t, state, "web", false), 80)
	six := netip.AddrPortFrom(vipAddr(t, state, "six", true), 80)
	ipvip := netip.MustParseAddrPort("198.18.255.10:8080")
	all := []string{"be1", "be2", "be3"}

	t.Run("spread over all backends", func(t *testing.T) {
		for _, c := range []struct {
			name string
			from *netns.NS
			to   netip.AddrPort
			udp  bool
		}{
			{"tcp from the agent (output)", agent, web4, false},
			{"udp from the agent (output)", agent, web4, true},
			{"tcp from a container (prerouting)", ctr, web4, false},
			{"udp from a container (prerouting)", ctr, web4, true},
			{"tcp ipv6 from the agent", agent, six, false},
			{"udp ipv6 from a container", ctr, six, true},
			{"tcp ip vip from the agent", agent, ipvip, false},
			{"tcp ip vip from a container", ctr, ipvip, false},
		} {
			seen := spread(t, c.from, c.to, c.udp, 40)
			for _, name := range all {
				if seen[name] == 0 {
					t.Errorf("%s: %s got none of 40 connections: %v", c.name, name, seen)
				}
			}
		}
	})

	t.Run("refused at once", func(t *testing.T) {
		empty := netip.AddrPortFrom(vipAddr(t, state, "empty", false), 81)
		for _, c := range []struct {
			name string
			from *netns.NS
			to   netip.AddrPort
			udp  bool
		}{
			{"VIP without backends, tcp, agent", agent, empty, false},
			{"VIP without backends, tcp, container", ctr, empty, false},
			{"VIP without backends, udp, agent", agent, empty, true},
			{"VIP without backends, udp, container", ctr, empty, true},
			{"unknown port of a VIP", agent, netip.AddrPortFrom(web4.Addr(), 9999), false},
			{"unknown port of a VIP, container", ctr, netip.AddrPortFrom(web4.Addr(), 9999), false},
			{"pool address without VIP", agent, netip.MustParseAddrPort("198.18.77.77:80"), false},
			{"unknown port of an IP VIP", agent, netip.MustParseAddrPort("198.18.255.10:1"), false},
			{"ipv6 pool address without VIP", ctr, netip.MustParseAddrPort("[fd00:198:18::7]:80"), false},
		} {
			// A refusal (reset, port unreachable, EPERM) rather than a
			// timeout is what "at once" means here.
			var err error
			if c.udp {
				_, err = c.from.AskUDP(c.to, netip.AddrPort{}, 3*time.Second)
			} else {
				_, err = c.from.AskTCP(c.to, 3*time.Second)
			}
			if !netns.IsRefused(err) {
				t.Errorf("%s (%s): %v, want a refusal, not a timeout", c.name, c.to, err)
			}
		}
	})

	t.Run("hairpin", func(t *testing.T) {
		hair := netip.AddrPortFrom(vipAddr(t, state, "hair", false), 90)
		for range 3 {
			got, err := ctr.AskTCP(hair, 2*time.Second)
			if err != nil || got != "ctr1" {
				t.Fatalf("container to its own VIP: %q, %v", got, err)
			}
		}
	})

	t.Run("audit comments", func(t *testing.T) {
		out, err := agent.Run("nft", "list", "ruleset")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			`comment "web.marathon.l4lb.thisdcos.directory:80/tcp /web"`,
			`comment "web.marathon.l4lb.thisdcos.directory:80/udp /web"`,
			`comment "198.18.255.10:8080/tcp /ipvip"`,
			`comment "six.marathon.l4lb.thisdcos.directory:80/tcp /six"`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("nft list ruleset lacks %s", want)
			}
		}
	})

	t.Run("routes via lo", func(t *testing.T) {
		for _, args := range [][]string{{"route", "show", "proto", "241"}, {"-6", "route", "show", "proto", "241"}} {
			out, err := agent.Run("ip", args...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "dev lo") {
				t.Errorf("ip %v: %q, want the pool via lo", args, out)
			}
		}
	})

	t.Run("removed backend gets no new connection", func(t *testing.T) {
		s2 := desiredFrom(t, trafficApps(topo, env.port, []int{0, 2}))
		res := env.apply(t, s2, false)
		// web:80 over tcp and udp: each moves from the three slots of
		// three backends to the two of two; hairpin loses be2. A handful of
		// elements, not a rewrite.
		if res.Elements == 0 || res.Elements > 12 || res.Rebuilt || res.Batches != 1 {
			t.Errorf("removing one backend: %+v", res)
		}
		for _, from := range []*netns.NS{agent, ctr} {
			seen := spread(t, from, web4, false, 40)
			if seen["be2"] > 0 || seen["be1"] == 0 || seen["be3"] == 0 {
				t.Errorf("after removing be2, from %s: %v", from.Name, seen)
			}
		}
		env.apply(t, state, false)
	})
}

// TestDriftRepaired changes the table behind l4lb's back; a full Apply puts
// it back.
func TestDriftRepaired(t *testing.T) {
	env := newTrafficEnv(t)
	agent := env.topo.Agent.NS
	state := desiredFrom(t, trafficApps(env.topo, env.port, []int{0, 1, 2}))
	r := Compile(state, "")
	env.apply(t, state, false)
	want := listText(t, agent)
	web4 := netip.AddrPortFrom(vipAddr(t, state, "web", false), 80)

	for _, drift := range []struct {
		name string
		nft  string
	}{
		{"VIP element deleted", fmt.Sprintf("delete element inet l4lb vips4 { %s . tcp . 80 }", web4.Addr())},
		{"backend element deleted", fmt.Sprintf("delete element inet l4lb be4 { %s . tcp . 80 . 4 }", web4.Addr())},
		{"backend element rewritten", fmt.Sprintf("delete element inet l4lb be4 { %s . tcp . 80 . 3 }\nadd element inet l4lb be4 { %s . tcp . 80 . 3 : 198.19.0.99 . 1 }", web4.Addr(), web4.Addr())},
		{"backend element in the slots of another count", fmt.Sprintf("add element inet l4lb be4 { %s . tcp . 80 . 0 : 198.19.0.99 . 1 }", web4.Addr())},
		{"stray elements added", "add element inet l4lb be4 { 198.18.9.9 . tcp . 1 . 0 : 198.19.0.99 . 1 }\nadd element inet l4lb vips4 { 198.18.9.9 . udp . 1 }"},
		{"chain flushed", "flush chain inet l4lb nat-output"},
		{"rule added", "add rule inet l4lb nat-prerouting counter"},
		{"lb chain flushed", "flush chain inet l4lb lb"},
		{"lb rule deleted", "delete rule inet l4lb lb handle LBRULE"},
		{"map flushed", "flush map inet l4lb be4"},
		{"table deleted", "delete table inet l4lb"},
		// A set of another type cannot be changed in place: the rules using
		// it go first, then the set is swapped.
		{"set replaced by another type", "flush chain inet l4lb nat-postrouting\ndelete set inet l4lb hairpin4\nadd set inet l4lb hairpin4 { type ipv4_addr; }"},
	} {
		t.Run(drift.name, func(t *testing.T) {
			script := drift.nft
			if strings.Contains(script, "LBRULE") {
				// The first rule of chain lb (the DNAT of the smallest count).
				out, err := agent.Run("nft", "-a", "list", "chain", "inet", DefaultTable, chainLB)
				if err != nil {
					t.Fatal(err)
				}
				_, h, ok := strings.Cut(out, "map @be4 # handle ")
				if !ok {
					t.Fatalf("no DNAT rule in chain lb:\n%s", out)
				}
				script = strings.ReplaceAll(script, "LBRULE", strings.Fields(h)[0])
			}
			if _, err := agent.RunStdin([]byte(script+"\n"), "nft", "-f", "-"); err != nil {
				t.Fatalf("make drift: %v", err)
			}
			if listText(t, agent) == want {
				t.Fatal("the drift changed nothing")
			}
			res, err := env.k.Apply(context.Background(), r, true)
			if err != nil {
				t.Fatalf("repair: %v", err)
			}
			if !res.Changed() {
				t.Errorf("repair changed nothing: %+v", res)
			}
			if got := listText(t, agent); got != want {
				t.Errorf("after repair:\n%s", diffLines(want, got))
			}
			seen := spread(t, agent, web4, false, 60) // three backends: missing one in 60 is 1e-10
			if len(seen) != 3 {
				t.Errorf("after repair: %v", seen)
			}
		})
	}
}

// TestRestartKeepsConnections holds connections through a VIP while the
// daemon's kernel state is dropped and a new Kernel adopts the table.
func TestRestartKeepsConnections(t *testing.T) {
	env := newTrafficEnv(t)
	agent, ctr := env.topo.Agent.NS, env.topo.Containers[0].NS
	state := desiredFrom(t, trafficApps(env.topo, env.port, []int{0, 1, 2}))
	env.apply(t, state, false)
	web4 := netip.AddrPortFrom(vipAddr(t, state, "web", false), 80)

	type held struct {
		r *bufio.Reader
		w func(string) error
		c func() error
	}
	var conns []held
	for _, from := range []*netns.NS{agent, ctr, agent, ctr} {
		c, err := from.DialTCP(context.Background(), web4)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, held{r, func(s string) error { _, err := fmt.Fprintln(c, s); return err }, c.Close})
	}
	ping := func(when string) {
		for i, h := range conns {
			if err := h.w("ping"); err != nil {
				t.Fatalf("%s: conn %d write: %v", when, i, err)
			}
			line, err := h.r.ReadString('\n')
			if err != nil || !strings.HasSuffix(strings.TrimSpace(line), " ping") {
				t.Fatalf("%s: conn %d: %q, %v", when, i, line, err)
			}
		}
	}
	ping("before restart")
	env.k.Close()
	k2 := kernelFor(t, agent)
	res, err := k2.Apply(context.Background(), Compile(state, ""), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed() {
		t.Errorf("restart changed the kernel: %+v", res)
	}
	ping("after restart")
}
