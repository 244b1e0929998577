package nat

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// TestTrafficManyCounts carries real TCP and UDP through VIPs of 1, 2, 3,
// 10 and 17 backends in one table (one DNAT rule per count in chain lb: the
// standing counts 1 to StandingCounts and the larger ones in use; one
// shared backend map), changes counts as deltas while the other VIPs keep
// serving, takes a VIP to zero and back, and checks after each step that
// every VIP spreads over exactly its backends or is refused at once.
func TestTrafficManyCounts(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4nc", 3, 1, "nft")
	agent, ctr := topo.Agent.NS, topo.Containers[0].NS
	// 18 endpoints per family: ports 9001..9006 on each of 3 hosts.
	var eps4, eps6 []netip.AddrPort
	names := map[netip.AddrPort]string{}
	for i, h := range topo.Backends {
		for port := uint16(9001); port <= 9006; port++ {
			for _, a := range []netip.Addr{h.Addr4, h.Addr6} {
				ap := netip.AddrPortFrom(a, port)
				name := fmt.Sprintf("b%d:%d", i+1, port)
				srv, err := h.Serve(name, ap)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(srv.Close)
				names[ap] = name
				if a.Is4() {
					eps4 = append(eps4, ap)
				} else {
					eps6 = append(eps6, ap)
				}
			}
		}
	}
	mk := func(addr string, proto vip.Proto, eps []netip.AddrPort) vip.VIP {
		v := vip.VIP{Name: "n" + strings.NewReplacer(".", "-", ":", "-").Replace(addr) + ".marathon.l4lb.thisdcos.directory",
			Addr: netip.MustParseAddr(addr), Port: 80, Proto: proto, Apps: []string{"/counts"}}
		for _, ep := range eps {
			v.Backends = append(v.Backends, vip.Backend{Addr: ep.Addr(), Port: ep.Port(), State: vip.Active})
		}
		return v
	}
	s := vip.State{Pool4: testPool4, Pool6: testPool6, VIPs: []vip.VIP{
		mk("198.18.10.1", vip.TCP, eps4[:1]),
		mk("198.18.10.2", vip.TCP, eps4[1:3]),
		mk("198.18.10.2", vip.UDP, eps4[1:3]),
		mk("198.18.10.3", vip.TCP, eps4[3:6]),
		mk("198.18.10.10", vip.TCP, eps4[:17]),
		mk("fd00:198:18::10:3", vip.TCP, eps6[:3]),
		mk("fd00:198:18::10:10", vip.UDP, eps6[2:12]),
	}}
	k := kernelFor(t, agent)
	c := NewCompiler("")
	ctx := context.Background()
	if _, err := k.Apply(ctx, c.Full(s), false); err != nil {
		t.Fatal(err)
	}
	// set changes VIP i to the endpoints and applies the change as a delta.
	set := func(i int, eps []netip.AddrPort) Result {
		t.Helper()
		old := s.VIPs[i]
		nv := mk(old.Addr.String(), old.Proto, eps)
		s.VIPs[i] = nv
		res, err := k.Apply(ctx, c.Update(s, vip.Change{Before: []vip.VIP{old}, After: []vip.VIP{nv}}), false)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// Every UDP ask leaves from a port of its own: a datagram from a port
	// that an earlier ask used would follow that flow's conntrack entry
	// (and its DNAT) instead of the ruleset; this test has no conntrack
	// cleaner, the daemon's job.
	udpPort := uint16(40000)
	askUDP := func(from *netns.NS, to netip.AddrPort) (string, error) {
		udpPort++
		local := netip.AddrPortFrom(netip.IPv4Unspecified(), udpPort)
		if to.Addr().Is6() {
			local = netip.AddrPortFrom(netip.IPv6Unspecified(), udpPort)
		}
		return from.AskUDP(to, local, 3*time.Second)
	}
	// check asks every VIP from the agent (output) and the container
	// (prerouting): it reaches every one of its backends and no other, or
	// is refused at once when it has none.
	check := func(step string) {
		t.Helper()
		for _, v := range s.VIPs {
			to := netip.AddrPortFrom(v.Addr, v.Port)
			udp := v.Proto == vip.UDP
			want := map[string]bool{}
			for _, b := range v.Backends {
				want[names[b.AddrPort()]] = true
			}
			for _, from := range []*netns.NS{agent, ctr} {
				if len(want) == 0 {
					var err error
					if udp {
						_, err = askUDP(from, to)
					} else {
						_, err = from.AskTCP(to, 3*time.Second)
					}
					if !netns.IsRefused(err) {
						t.Errorf("%s: %s/%s from %s: %v, want a refusal", step, to, v.Proto, from.Name, err)
					}
					continue
				}
				// Missing one of N backends in 15N tries: N(1-1/N)^15N, at most 2e-6 here.
				seen := map[string]int{}
				if udp {
					for range 15 * len(want) {
						name, err := askUDP(from, to)
						if err != nil {
							t.Fatalf("%s: %s/udp from %s: %v", step, to, from.Name, err)
						}
						seen[name]++
					}
				} else {
					seen = spread(t, from, to, false, 15*len(want))
				}
				for name := range seen {
					if !want[name] {
						t.Errorf("%s: %s/%s from %s reached %s, not its backend: %v", step, to, v.Proto, from.Name, name, seen)
					}
				}
				if len(seen) != len(want) {
					t.Errorf("%s: %s/%s from %s reached %d of its %d backends: %v", step, to, v.Proto, from.Name, len(seen), len(want), seen)
				}
			}
		}
	}
	lbRules := func() []string {
		t.Helper()
		out, err := agent.Run("nft", "list", "chain", "inet", DefaultTable, chainLB)
		if err != nil {
			t.Fatal(err)
		}
		var rules []string
		for _, l := range strings.Split(out, "\n") {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, "dnat ") || l == "goto refuse" {
				rules = append(rules, l)
			}
		}
		return rules
	}
	// wantLB checks chain lb: the standing counts and the larger ones.
	wantLB := func(step string, larger ...int) {
		t.Helper()
		var counts []int
		for n := 1; n <= StandingCounts; n++ {
			counts = append(counts, n)
		}
		var want []string
		for _, r := range lbChainDecl(append(counts, larger...)).rules {
			want = append(want, r.text)
		}
		if got := lbRules(); !slices.Equal(got, want) {
			t.Errorf("%s: chain lb:\n%s\nwant:\n%s", step, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}

	wantLB("start", 17)
	check("start")

	// 3 -> 2 backends, a count in use: data elements only, no chain.
	res := set(3, eps4[3:5])
	if res.Chains != 0 || res.Batches != 1 || res.Elements != 5 {
		t.Errorf("3 -> 2 backends: %+v, want 3 slots out, 2 in, no chain", res)
	}
	check("3 -> 2")
	// 2 -> 4 backends, a standing count no VIP used: data elements only.
	res = set(3, eps4[3:7])
	if res.Chains != 0 || res.Batches != 1 {
		t.Errorf("2 -> 4 backends: %+v, want data elements only", res)
	}
	wantLB("2 -> 4", 17)
	check("2 -> 4")
	// 17 -> 18, a count larger than all: chain lb gains its rules in the
	// same batch, its IPv4 rule before the first IPv6 rule, its IPv6 rule
	// before goto refuse; the rule for 17, now unused, stays until a full
	// apply.
	if res := set(4, eps4[:18]); res.Chains != 1 || res.Batches != 1 {
		t.Errorf("17 -> 18 backends: %+v, want one batch adding its rules to chain lb", res)
	}
	wantLB("17 -> 18", 17, 18)
	check("17 -> 18")
	// The VIP of 1 backend goes to 10.
	set(0, eps4[2:12])
	// Both VIPs of 2 backends go to zero: refused at once, the others serve.
	set(1, nil)
	set(2, nil)
	check("to zero")
	wantLB("to zero", 17, 18)
	// ... and back.
	set(1, eps4[7:9])
	set(2, eps4[7:9])
	check("back from zero")

	// A full apply (resync) drops the rule for 17, which no VIP uses (a
	// standing count's rule stays, used or not): not drift.
	res, err := k.Apply(ctx, c.Full(s), true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Dropped != 1 || res.Chains != 1 || res.Elements != 0 || res.Drift() {
		t.Errorf("full apply after the deltas: %+v, want only the unused rule dropped", res)
	}
	wantLB("after the full apply", 18)
	check("after the full apply")
	if res, err := k.Apply(ctx, c.Full(s), true); err != nil || res.Changed() {
		t.Errorf("second full apply: %+v %v, want no change", res, err)
	}
}
