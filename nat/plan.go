package nat

import (
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/vip"
)

// Deciding what to change is pure: the kernel's table as read back (or as
// last programmed) against the compiled ruleset gives a plan of element and
// chain changes. kernel.go turns plans into netlink batches.

// maxSlot bounds the slots l4lb keeps track of; backend elements in higher
// slots can only be strays (written by hand) and are deleted.
const maxSlot = 1 << 16

// chainStatus says how a chain in the kernel compares with what l4lb wants.
type chainStatus uint8

const (
	chainMissing chainStatus = iota
	chainOK
	chainWrongRules // exists with the right type, but other rules
	chainWrongHook  // exists, but as another kind of chain
)

// vipVal is the value side of a VIP element.
type vipVal struct {
	verdict string // chain it jumps to
	comment string
}

// observed is l4lb's table as the kernel holds it.
type observed struct {
	table  bool
	sets   map[string]bool // set name -> exists with the expected type
	chains map[string]chainStatus
	vips   map[vip.Key]vipVal
	// slots of each VIP in the backend maps; an invalid AddrPort is a hole.
	slots   map[vip.Key][]netip.AddrPort
	strays  []beKey // backend elements in impossible slots
	ipvips  map[netip.Addr]bool
	hairpin map[netip.Addr]bool
}

type beKey struct {
	vip  vip.Key
	slot int
}

func newObserved() *observed {
	return &observed{
		sets:    map[string]bool{},
		chains:  map[string]chainStatus{},
		vips:    map[vip.Key]vipVal{},
		slots:   map[vip.Key][]netip.AddrPort{},
		ipvips:  map[netip.Addr]bool{},
		hairpin: map[netip.Addr]bool{},
	}
}

// setSlot records a backend element read from the kernel.
func (o *observed) setSlot(k vip.Key, slot int, be netip.AddrPort) {
	if slot < 0 || slot >= maxSlot {
		o.strays = append(o.strays, beKey{k, slot})
		return
	}
	s := o.slots[k]
	for len(s) <= slot {
		s = append(s, netip.AddrPort{})
	}
	s[slot] = be
	o.slots[k] = s
}

// plan is the set of changes that turns observed into the wanted ruleset.
type plan struct {
	rebuild    bool        // (re)create the table and everything in it
	newSets    []setDecl   // sets to create
	newChains  []chainDecl // chains to create, with their rules
	fixChains  []chainDecl // chains to flush and refill
	units      []unit      // per-VIP element changes, each applied atomically
	ipvipsAdd  []netip.Addr
	ipvipsDel  []netip.Addr
	hairpinAdd []netip.Addr
	hairpinDel []netip.Addr
	strays     []beKey  // backend elements to delete
	dropChains []string // lbN chains no longer used, deleted last
}

// unit is one VIP's changes: the old element out, slots changed, the new
// element in. Applied in one batch, so a packet never sees half of it.
type unit struct {
	key      vip.Key
	delVIP   bool
	addVIP   *vipVal
	delSlots []int
	addSlots []slotVal
}

type slotVal struct {
	slot int
	be   netip.AddrPort
}

func (u unit) size() int { return 2 + len(u.delSlots) + len(u.addSlots) }

// empty reports whether the plan changes nothing.
func (p *plan) empty() bool {
	return !p.rebuild && len(p.newSets) == 0 && len(p.newChains) == 0 && len(p.fixChains) == 0 &&
		len(p.units) == 0 && len(p.ipvipsAdd) == 0 && len(p.ipvipsDel) == 0 && len(p.hairpinAdd) == 0 &&
		len(p.hairpinDel) == 0 && len(p.strays) == 0 && len(p.dropChains) == 0
}

// elements counts the element changes of the plan.
func (p *plan) elements() int {
	n := len(p.ipvipsAdd) + len(p.ipvipsDel) + len(p.hairpinAdd) + len(p.hairpinDel) + len(p.strays)
	for _, u := range p.units {
		n += len(u.delSlots) + len(u.addSlots)
		if u.delVIP {
			n++
		}
		if u.addVIP != nil {
			n++
		}
	}
	return n
}

// makePlan compares the observed table with the wanted ruleset. A missing
// table, or a set of the wrong type (which cannot be changed in place), means
// rebuilding the table; otherwise only what differs changes. Backends keep
// their slots where they can, so a change touches as few elements as
// possible.
func makePlan(o *observed, want *Ruleset) *plan {
	p := &plan{}
	if !o.table {
		p.rebuild = true
	}
	for _, d := range want.setDecls() {
		ok, present := o.sets[d.name]
		if present && !ok {
			p.rebuild = true
		}
		if !present {
			p.newSets = append(p.newSets, d)
		}
	}
	if p.rebuild {
		o = newObserved()
		p.newSets = want.setDecls()
	}

	wantChains := want.chains()
	wanted := map[string]bool{}
	for _, c := range wantChains {
		wanted[c.name] = true
		switch o.chains[c.name] {
		case chainMissing:
			p.newChains = append(p.newChains, c)
		case chainWrongRules:
			p.fixChains = append(p.fixChains, c)
		case chainWrongHook:
			// A chain of the wrong kind cannot be changed in place.
			p.rebuild = true
		}
	}
	if p.rebuild && o.table {
		return makePlan(&observed{}, want)
	}
	for name := range o.chains {
		if !wanted[name] {
			p.dropChains = append(p.dropChains, name)
		}
	}
	slices.Sort(p.dropChains)

	// VIP elements and backend slots, walking both sides by key.
	seen := make(map[vip.Key]bool, len(want.VIPs))
	for _, v := range want.VIPs {
		seen[v.Key] = true
		u := unit{key: v.Key}
		cur, had := o.vips[v.Key]
		val := vipVal{verdict: v.Verdict(), comment: v.Comment}
		if !had || cur != val {
			u.delVIP = had
			u.addVIP = &val
		}
		u.delSlots, u.addSlots = slotChanges(o.slots[v.Key], v.Backends)
		if u.delVIP || u.addVIP != nil || len(u.delSlots) > 0 || len(u.addSlots) > 0 {
			p.units = append(p.units, u)
		}
	}
	var gone []vip.Key
	for k := range o.vips {
		if !seen[k] {
			gone = append(gone, k)
		}
	}
	for k := range o.slots {
		if _, ok := o.vips[k]; !ok && !seen[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, vip.Key.Compare)
	gone = slices.Compact(gone)
	for _, k := range gone {
		u := unit{key: k}
		_, u.delVIP = o.vips[k]
		u.delSlots, _ = slotChanges(o.slots[k], nil)
		p.units = append(p.units, u)
	}
	p.strays = o.strays

	p.ipvipsAdd, p.ipvipsDel = addrChanges(o.ipvips, want.IPVIPs)
	p.hairpinAdd, p.hairpinDel = addrChanges(o.hairpin, want.Hairpin)
	return p
}

// slotChanges turns the current slots of a VIP into the wanted backends:
// a backend that is wanted stays in its slot when that slot still exists;
// the other wanted backends fill the free slots in order. It returns the
// slots to delete (changed or beyond the new count) and the slots to add.
func slotChanges(cur []netip.AddrPort, want []netip.AddrPort) (del []int, add []slotVal) {
	next := assignSlots(cur, want)
	for i, a := range cur {
		if !a.IsValid() {
			continue
		}
		if i >= len(next) || next[i] != a {
			del = append(del, i)
		}
	}
	for i, a := range next {
		if i >= len(cur) || cur[i] != a {
			add = append(add, slotVal{i, a})
		}
	}
	return del, add
}

// assignSlots returns the wanted backends in slot order, keeping each in its
// current slot where possible.
func assignSlots(cur []netip.AddrPort, want []netip.AddrPort) []netip.AddrPort {
	n := len(want)
	if n == 0 {
		return nil
	}
	// Fast path: nothing moved.
	if len(cur) == n && slices.Equal(cur, want) {
		return cur
	}
	wanted := make(map[netip.AddrPort]bool, n)
	for _, a := range want {
		wanted[a] = true
	}
	next := make([]netip.AddrPort, n)
	placed := make(map[netip.AddrPort]bool, n)
	for i, a := range cur {
		if i < n && a.IsValid() && wanted[a] && !placed[a] {
			next[i] = a
			placed[a] = true
		}
	}
	j := 0
	for _, a := range want {
		if placed[a] {
			continue
		}
		for next[j].IsValid() {
			j++
		}
		next[j] = a
		placed[a] = true
	}
	return next
}

func addrChanges(cur map[netip.Addr]bool, want []netip.Addr) (add, del []netip.Addr) {
	w := make(map[netip.Addr]bool, len(want))
	for _, a := range want {
		w[a] = true
		if !cur[a] {
			add = append(add, a)
		}
	}
	for a := range cur {
		if !w[a] {
			del = append(del, a)
		}
	}
	slices.SortFunc(del, netip.Addr.Compare)
	return add, del
}

// apply updates observed to what the kernel holds after the plan succeeded.
func (o *observed) apply(p *plan, want *Ruleset) *observed {
	if p.rebuild {
		o = newObserved()
	}
	o.table = true
	for _, d := range want.setDecls() {
		o.sets[d.name] = true
	}
	for _, c := range p.newChains {
		o.chains[c.name] = chainOK
	}
	for _, c := range p.fixChains {
		o.chains[c.name] = chainOK
	}
	for _, name := range p.dropChains {
		delete(o.chains, name)
	}
	for _, u := range p.units {
		if u.delVIP {
			delete(o.vips, u.key)
		}
		if u.addVIP != nil {
			o.vips[u.key] = *u.addVIP
		}
		s := slices.Clone(o.slots[u.key])
		for _, i := range u.delSlots {
			if i < len(s) {
				s[i] = netip.AddrPort{}
			}
		}
		for _, a := range u.addSlots {
			for len(s) <= a.slot {
				s = append(s, netip.AddrPort{})
			}
			s[a.slot] = a.be
		}
		for len(s) > 0 && !s[len(s)-1].IsValid() {
			s = s[:len(s)-1]
		}
		if len(s) == 0 {
			delete(o.slots, u.key)
		} else {
			o.slots[u.key] = s
		}
	}
	o.strays = nil
	for _, a := range p.ipvipsAdd {
		o.ipvips[a] = true
	}
	for _, a := range p.ipvipsDel {
		delete(o.ipvips, a)
	}
	for _, a := range p.hairpinAdd {
		o.hairpin[a] = true
	}
	for _, a := range p.hairpinDel {
		delete(o.hairpin, a)
	}
	return o
}

// wantedRoutes are the routes local clients need: each VIP pool, and each
// IP VIP outside the pools, via lo.
func wantedRoutes(r *Ruleset) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{r.Pool4, r.Pool6} {
		if p.IsValid() && p.Bits() > 0 {
			out = append(out, p.Masked())
		}
	}
	for _, a := range r.IPVIPs {
		if (r.Pool4.IsValid() && r.Pool4.Contains(a)) || (r.Pool6.IsValid() && r.Pool6.Contains(a)) {
			continue
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}
