package nat

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func key(s string) vip.Key {
	a := ap(s)
	return vip.Key{Addr: a.Addr(), Proto: vip.TCP, Port: a.Port()}
}

func ruleset(vips ...VIPElem) *Ruleset {
	r := &Ruleset{Table: DefaultTable, Pool4: testPool4, Pool6: testPool6, VIPs: vips}
	r.Sort()
	return r
}

func elem(k string, backends ...string) VIPElem {
	e := VIPElem{Key: key(k), Comment: k}
	for _, b := range backends {
		e.Backends = append(e.Backends, ap(b))
	}
	return e
}

// programmed is the observed state after a successful cold start.
func programmed(r *Ruleset) *observed {
	p := makePlan(newObserved(), r)
	return newObserved().apply(p, r)
}

// describe renders a unit for comparison.
func describe(u unit) string {
	s := u.key.String() + ":"
	if u.delVIP {
		s += " -vip"
	}
	for _, d := range u.delSlots {
		s += fmt.Sprintf(" -%d", d)
	}
	for _, a := range u.addSlots {
		s += fmt.Sprintf(" +%d=%s", a.slot, a.be)
	}
	if u.addVIP != nil {
		s += " +vip>" + verdictFor(u.addVIP.n)
	}
	return s
}

func TestPlanElementChanges(t *testing.T) {
	base := ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080"), elem("198.18.0.2:80"))
	for _, tc := range []struct {
		name string
		want *Ruleset
		plan []string
	}{
		{"no change", base, nil},
		{"backend removed from the middle: the last moves into its slot",
			ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.13:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -vip -1 -2 +1=198.19.0.13:8080 +vip>lb2"}},
		{"last backend removed", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -vip -2 +vip>lb2"}},
		{"backend added", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080", "198.19.0.14:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -vip +3=198.19.0.14:8080 +vip>lb4"}},
		{"backend replaced: same count, one slot", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.19:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -2 +2=198.19.0.19:8080"}},
		{"all backends gone (N->0)", ruleset(elem("198.18.0.1:80"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -vip -0 -1 -2 +vip>refuse"}},
		{"first backend (0->N)", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080"), elem("198.18.0.2:80", "198.19.0.11:9090")),
			[]string{"198.18.0.2:80/tcp: -vip +0=198.19.0.11:9090 +vip>lb1"}},
		{"VIP deleted", ruleset(elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -vip -0 -1 -2"}},
		{"VIP added", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080"), elem("198.18.0.2:80"), elem("198.18.0.3:53", "198.19.0.11:53")),
			[]string{"198.18.0.3:53/tcp: +0=198.19.0.11:53 +vip>lb1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := makePlan(programmed(base), tc.want)
			var got []string
			for _, u := range p.units {
				got = append(got, describe(u))
			}
			if !slices.Equal(got, tc.plan) {
				t.Errorf("plan:\n%q\nwant:\n%q", got, tc.plan)
			}
			if p.rebuild || len(p.newSets) > 0 || len(p.fixChains) > 0 {
				t.Errorf("structural changes for an element change: %+v", p)
			}
			// After the plan, the observed state is the wanted one: planning
			// again finds nothing to do.
			after := programmed(base).apply(p, tc.want)
			if again := makePlan(after, tc.want); !again.empty() {
				t.Errorf("second plan not empty: %+v", again)
			}
		})
	}
}

func TestPlanChains(t *testing.T) {
	base := ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080"))
	// Going from lb2 to lb3 creates lb3 and drops lb2 once unused.
	p := makePlan(programmed(base), ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080")))
	if len(p.newChains) != 1 || p.newChains[0].name != "lb3" || !slices.Equal(p.dropChains, []string{"lb2"}) {
		t.Errorf("new %v, drop %v", p.newChains, p.dropChains)
	}
	// A chain with other rules is refilled, a missing one recreated, one of
	// the wrong kind forces a rebuild.
	o := programmed(base)
	o.chains[chainOutput] = chainWrongRules
	delete(o.chains, chainRefuse)
	p = makePlan(o, base)
	if len(p.fixChains) != 1 || p.fixChains[0].name != chainOutput || len(p.newChains) != 1 || p.newChains[0].name != chainRefuse || p.rebuild {
		t.Errorf("fix %v new %v rebuild %v", p.fixChains, p.newChains, p.rebuild)
	}
	o = programmed(base)
	o.chains["lb2"] = chainWrongHook
	if p = makePlan(o, base); !p.rebuild || len(p.units) != 1 {
		t.Errorf("wrong hook: rebuild %v, units %d", p.rebuild, len(p.units))
	}
	// A set of the wrong type forces a rebuild too.
	o = programmed(base)
	o.sets[setHairpin4] = false
	if p = makePlan(o, base); !p.rebuild {
		t.Error("wrong set type: no rebuild")
	}
	// No table: everything.
	if p = makePlan(newObserved(), base); !p.rebuild || len(p.newSets) != 8 || len(p.newChains) != 5 {
		t.Errorf("cold: %+v", p)
	}
}

func TestPlanStraysAndHoles(t *testing.T) {
	base := ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080"))
	// Read back: a hole (slot 0 deleted by hand) and a stray slot far away.
	rd := newReader()
	rd.vals[key("198.18.0.1:80")] = vipVal{n: 2, comment: "198.18.0.1:80"}
	rd.setSlot(key("198.18.0.1:80"), 1, ap("198.19.0.12:8080"))
	rd.setSlot(key("198.18.0.1:80"), 1<<20, ap("198.19.0.99:1"))
	o := programmed(base)
	rd.into(o)
	p := makePlan(o, base)
	var got []string
	for _, u := range p.units {
		got = append(got, describe(u))
	}
	if !slices.Equal(got, []string{"198.18.0.1:80/tcp: +0=198.19.0.11:8080"}) || len(p.strays) != 1 {
		t.Errorf("units %q strays %v", got, p.strays)
	}
	// The same backends in another order change no element.
	o = programmed(base)
	swapped := ruleset(elem("198.18.0.1:80", "198.19.0.12:8080", "198.19.0.11:8080"))
	p = makePlan(o, swapped)
	if p.elements() != 0 {
		t.Errorf("reordered backends: %d element changes", p.elements())
	}
	o = o.apply(p, swapped)
	if p = makePlan(o, swapped); len(p.units) != 0 {
		t.Errorf("units %q strays %v", got, p.strays)
	}
}

func TestAssignSlotsKeepsPositions(t *testing.T) {
	a, b, c, d := ap("198.19.0.1:1"), ap("198.19.0.2:1"), ap("198.19.0.3:1"), ap("198.19.0.4:1")
	for _, tc := range []struct {
		cur, want, out []netip.AddrPort
	}{
		{nil, []netip.AddrPort{a, b}, []netip.AddrPort{a, b}},
		{[]netip.AddrPort{c, a, b}, []netip.AddrPort{a, b, c}, []netip.AddrPort{c, a, b}},
		{[]netip.AddrPort{a, b, c}, []netip.AddrPort{a, c}, []netip.AddrPort{a, c}},
		{[]netip.AddrPort{a, b, c}, []netip.AddrPort{b, c, d}, []netip.AddrPort{d, b, c}},
		{[]netip.AddrPort{a, {}, c}, []netip.AddrPort{a, b, c}, []netip.AddrPort{a, b, c}},
		{[]netip.AddrPort{a, b}, nil, nil},
	} {
		if got := assignSlots(tc.cur, tc.want); !slices.Equal(got, tc.out) {
			t.Errorf("assignSlots(%v, %v) = %v, want %v", tc.cur, tc.want, got, tc.out)
		}
	}
}

func TestWantedRoutes(t *testing.T) {
	r := &Ruleset{Pool4: testPool4, Pool6: testPool6, IPVIPs: []netip.Addr{
		netip.MustParseAddr("198.18.255.1"), netip.MustParseAddr("198.19.255.1"), netip.MustParseAddr("fd00:198:18::1"), netip.MustParseAddr("fd00:198:19::1:1"),
	}}
	got := wantedRoutes(r)
	want := []netip.Prefix{testPool4, testPool6, netip.MustParsePrefix("198.19.255.1/32"), netip.MustParsePrefix("fd00:198:19::1:1/128")}
	if !slices.Equal(got, want) {
		t.Errorf("routes %v, want %v", got, want)
	}
}

func TestVerdictCount(t *testing.T) {
	for chain, n := range map[string]int{"refuse": 0, "lb1": 1, "lb12": 12, "lb0": -1, "lb03": -1, "lb": -1, "accept": -1, "lb-1": -1} {
		if got := verdictCount(chain); got != n {
			t.Errorf("verdictCount(%q) = %d, want %d", chain, got, n)
		}
	}
}
