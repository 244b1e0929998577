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
		s += " +vip"
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
		// Three backends fill slots 3..5; two fill 1..2, four 6..9.
		{"backend removed from the middle: the VIP moves to the slots of two",
			ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.13:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -3 -4 -5 +1=198.19.0.11:8080 +2=198.19.0.13:8080"}},
		{"last backend removed", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -3 -4 -5 +1=198.19.0.11:8080 +2=198.19.0.12:8080"}},
		{"backend added", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080", "198.19.0.14:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -3 -4 -5 +6=198.19.0.11:8080 +7=198.19.0.12:8080 +8=198.19.0.13:8080 +9=198.19.0.14:8080"}},
		{"backend replaced: same count, one slot", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.19:8080"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -5 +5=198.19.0.19:8080"}},
		{"all backends gone (N->0): the element stays", ruleset(elem("198.18.0.1:80"), elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -3 -4 -5"}},
		{"first backend (0->N)", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080"), elem("198.18.0.2:80", "198.19.0.11:9090")),
			[]string{"198.18.0.2:80/tcp: +0=198.19.0.11:9090"}},
		{"VIP deleted", ruleset(elem("198.18.0.2:80")),
			[]string{"198.18.0.1:80/tcp: -vip -3 -4 -5"}},
		{"VIP added", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080"), elem("198.18.0.2:80"), elem("198.18.0.3:53", "198.19.0.11:53")),
			[]string{"198.18.0.3:53/tcp: +0=198.19.0.11:53 +vip"}},
		{"comment changed", ruleset(elem("198.18.0.1:80", "198.19.0.11:8080", "198.19.0.12:8080", "198.19.0.13:8080"), VIPElem{Key: key("198.18.0.2:80"), Comment: "other"}),
			[]string{"198.18.0.2:80/tcp: -vip +vip"}},
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
			if p.rebuild || len(p.newSets) > 0 || len(p.newChains) > 0 || len(p.dropChains) > 0 {
				t.Errorf("structural changes for an element change: %+v", p)
			}
			// Only chain lb changes, and only the rules of counts that
			// come into use or go out of it.
			if len(p.fixChains) > 0 {
				t.Errorf("chains refilled: %v", p.fixChains)
			}
			for _, n := range append(slices.Clone(p.lbAdd), p.lbDel...) {
				if slices.Contains(tc.want.LBCounts(), n) == slices.Contains(base.LBCounts(), n) {
					t.Errorf("rule for %d added or deleted: add %v del %v", n, p.lbAdd, p.lbDel)
				}
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

// backendsN is n backend addresses for elem.
func backendsN(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("198.19.0.%d:8080", 11+i))
	}
	return out
}

// standingPlus is chain lb's counts: the standing ones and the larger.
func standingPlus(larger ...int) []int {
	var out []int
	for n := 1; n <= StandingCounts; n++ {
		out = append(out, n)
	}
	return append(out, larger...)
}

func TestPlanChains(t *testing.T) {
	base := ruleset(elem("198.18.0.1:80", backendsN(StandingCounts+1)...))
	more := ruleset(elem("198.18.0.1:80", backendsN(StandingCounts+2)...))
	m, n := StandingCounts+1, StandingCounts+2
	// A standing count (1 to StandingCounts) never adds a rule to chain lb.
	for _, k := range []int{1, 2, StandingCounts} {
		if p := makePlan(programmed(base), ruleset(elem("198.18.0.1:80", backendsN(k)...))); len(p.lbAdd) != 0 {
			t.Errorf("full plan %d->%d: add %v del %v", m, k, p.lbAdd, p.lbDel)
		}
	}
	// Going from m backends to n, both beyond the standing counts: chain
	// lb gains the rule for n first (the rule for m stays: the VIP uses it
	// until its slots move), and a full plan deletes the rule for m last.
	p := makePlan(programmed(base), more)
	if !slices.Equal(p.lbAdd, []int{n}) || !slices.Equal(p.lbDel, []int{m}) || len(p.fixChains)+len(p.newChains)+len(p.dropChains) != 0 {
		t.Errorf("full plan m->n: add %v del %v fix %v new %v drop %v", p.lbAdd, p.lbDel, p.fixChains, p.newChains, p.dropChains)
	}
	if c, d := p.chainChanges(); c != 1 || d != 0 {
		t.Errorf("full plan m->n: %d chain changes, %d dropped", c, d)
	}
	after := programmed(base).apply(p, more)
	if !slices.Equal(after.lb, standingPlus(n)) {
		t.Errorf("after the full plan, lb has %v", after.lb)
	}
	// A delta keeps the rule for m; going back to m changes no chain.
	o := programmed(base)
	p = &plan{}
	p.structure(o, more, true)
	if !slices.Equal(p.lbAdd, []int{n}) || len(p.lbDel) != 0 {
		t.Errorf("delta plan m->n: add %v del %v", p.lbAdd, p.lbDel)
	}
	o = o.apply(p, more)
	p = &plan{}
	p.structure(o, base, true)
	if len(p.fixChains)+len(p.newChains)+len(p.lbAdd)+len(p.lbDel) != 0 {
		t.Errorf("delta plan n->m with both rules: add %v del %v fix %v", p.lbAdd, p.lbDel, p.fixChains)
	}
	// The next full plan drops the unused rule: not drift.
	p = makePlan(o, base)
	if c, d := p.chainChanges(); len(p.lbAdd) != 0 || !slices.Equal(p.lbDel, []int{n}) || c != 1 || d != 1 {
		t.Errorf("full plan with an unused count: add %v del %v, %d chain changes, %d dropped", p.lbAdd, p.lbDel, c, d)
	}
	// A chain with other rules is refilled, a missing one recreated, one of
	// the wrong kind forces a rebuild, one l4lb does not know is dropped.
	o = programmed(base)
	o.chains[chainOutput] = chainWrongRules
	delete(o.chains, chainRefuse)
	o.chains["lb7"] = chainOK
	p = makePlan(o, base)
	if len(p.fixChains) != 1 || p.fixChains[0].name != chainOutput || len(p.newChains) != 1 || p.newChains[0].name != chainRefuse ||
		p.rebuild || !slices.Equal(p.dropChains, []string{"lb7"}) {
		t.Errorf("fix %v new %v drop %v rebuild %v", p.fixChains, p.newChains, p.dropChains, p.rebuild)
	}
	o = programmed(base)
	o.chains[chainLB] = chainWrongRules
	if p = makePlan(o, base); len(p.fixChains) != 1 || !slices.Equal(p.fixChains[0].counts, standingPlus(m)) || len(p.lbAdd)+len(p.lbDel) != 0 {
		t.Errorf("lb with other rules: fix %v add %v del %v", p.fixChains, p.lbAdd, p.lbDel)
	}
	o = programmed(base)
	o.chains[chainLB] = chainWrongHook
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
	// Read back: a hole (the first of the two slots, 1, deleted by hand),
	// a slot in the range of three backends, and a stray slot far away.
	rd := newReader()
	rd.elems[key("198.18.0.1:80")] = "198.18.0.1:80"
	rd.setSlot(key("198.18.0.1:80"), 2, ap("198.19.0.12:8080"))
	rd.setSlot(key("198.18.0.1:80"), 4, ap("198.19.0.13:8080"))
	rd.setSlot(key("198.18.0.1:80"), 1<<40, ap("198.19.0.99:1"))
	o := programmed(base)
	rd.into(o)
	p := makePlan(o, base)
	var got []string
	for _, u := range p.units {
		got = append(got, describe(u))
	}
	if !slices.Equal(got, []string{"198.18.0.1:80/tcp: +1=198.19.0.11:8080"}) || len(p.strays) != 2 {
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

func TestSlotCount(t *testing.T) {
	for n := 1; n <= 400; n++ {
		for i := range n {
			if m, j := SlotCount(SlotBase(n) + i); m != n || j != i {
				t.Fatalf("SlotCount(SlotBase(%d)+%d) = %d, %d", n, i, m, j)
			}
		}
	}
	last := SlotBase(MaxBackends + 1)
	for slot, want := range map[int][2]int{-1: {0, 0}, 0: {1, 0}, 1: {2, 0}, 2: {2, 1}, 3: {3, 0}, 45: {10, 0}, 54: {10, 9},
		last: {0, 0}, last - 1: {MaxBackends, MaxBackends - 1}, 1 << 40: {0, 0}} {
		if n, i := SlotCount(slot); n != want[0] || i != want[1] {
			t.Errorf("SlotCount(%d) = %d, %d; want %v", slot, n, i, want)
		}
	}
}
