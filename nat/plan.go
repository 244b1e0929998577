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
	n       int // backend count: jumps to lbN, or refuse for 0; -1 for another verdict
	comment string
}

// observed is l4lb's table as the kernel holds it. The VIPs and the address
// sets are sorted slices, so that comparing them with a ruleset is a merge
// walk without hashing: at 50,000 VIPs a change costs a few milliseconds.
type observed struct {
	table   bool
	sets    map[string]bool // set name -> exists with the expected type
	chains  map[string]chainStatus
	vips    []obsVIP     // sorted by key
	strays  []beKey      // backend elements in impossible slots, or of no VIP
	ipvips  []netip.Addr // sorted
	hairpin []netip.Addr // sorted
}

// obsVIP is one VIP in the kernel: its element (if any) and its slots.
type obsVIP struct {
	key    vip.Key
	hasVal bool
	val    vipVal
	// slots in the backend map; an invalid AddrPort is a hole.
	slots []netip.AddrPort
	// sum is the fingerprint of the ruleset's element that produced this
	// state: when the next ruleset has the same, nothing changed. Unknown
	// (zero) for VIPs read back from the kernel until their first plan.
	sum uint64
}

type beKey struct {
	vip  vip.Key
	slot int
}

func newObserved() *observed {
	return &observed{sets: map[string]bool{}, chains: map[string]chainStatus{}}
}

// reader collects elements read back from the kernel, in any order.
type reader struct {
	vals    map[vip.Key]vipVal
	slots   map[vip.Key][]netip.AddrPort
	strays  []beKey
	ipvips  []netip.Addr
	hairpin []netip.Addr
}

func newReader() *reader {
	return &reader{vals: map[vip.Key]vipVal{}, slots: map[vip.Key][]netip.AddrPort{}}
}

// setSlot records a backend element.
func (r *reader) setSlot(k vip.Key, slot int, be netip.AddrPort) {
	if slot < 0 || slot >= maxSlot {
		r.strays = append(r.strays, beKey{k, slot})
		return
	}
	s := r.slots[k]
	for len(s) <= slot {
		s = append(s, netip.AddrPort{})
	}
	s[slot] = be
	r.slots[k] = s
}

// into fills o with what was read.
func (r *reader) into(o *observed) {
	keys := make([]vip.Key, 0, len(r.vals)+len(r.slots))
	for k := range r.vals {
		keys = append(keys, k)
	}
	for k := range r.slots {
		if _, ok := r.vals[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, vip.Key.Compare)
	o.vips = make([]obsVIP, len(keys))
	for i, k := range keys {
		v, ok := r.vals[k]
		o.vips[i] = obsVIP{key: k, hasVal: ok, val: v, slots: r.slots[k]}
	}
	o.strays = r.strays
	slices.SortFunc(r.ipvips, netip.Addr.Compare)
	slices.SortFunc(r.hairpin, netip.Addr.Compare)
	o.ipvips, o.hairpin = slices.Compact(r.ipvips), slices.Compact(r.hairpin)
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
	delta      bool     // from makeDeltaPlan: the address lists are patched, not copied
}

// unit is one VIP's changes: the old element out, slots changed, the new
// element in. Applied in one batch, so a packet never sees half of it.
type unit struct {
	key      vip.Key
	delVIP   bool
	addVIP   *vipVal
	delSlots []int
	addSlots []slotVal
	next     obsVIP // the VIP after the change; gone when its key is invalid
}

type slotVal struct {
	slot int
	be   netip.AddrPort
}

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
// table, or a set or chain of the wrong type (which cannot be changed in
// place), means rebuilding the table; otherwise only what differs changes.
// Backends keep their slots where they can, so a change touches as few
// elements as possible.
func makePlan(o *observed, want *Ruleset) *plan {
	p := &plan{rebuild: !o.table}
	o = p.structure(o, want)

	// VIP elements and backend slots: a merge walk of two sorted lists.
	i, j := 0, 0
	for i < len(o.vips) || j < len(want.VIPs) {
		var c int
		switch {
		case i == len(o.vips):
			c = 1
		case j == len(want.VIPs):
			c = -1
		default:
			c = o.vips[i].key.Compare(want.VIPs[j].Key)
		}
		switch {
		case c < 0: // in the kernel only: remove
			cur := o.vips[i]
			u := unit{key: cur.key, delVIP: cur.hasVal}
			u.delSlots, _ = slotChanges(cur.slots, nil)
			p.units = append(p.units, u)
			i++
		case c > 0: // wanted only: add
			if u, ok := vipUnit(obsVIP{key: want.VIPs[j].Key}, want.VIPs[j]); ok {
				p.units = append(p.units, u)
			}
			j++
		default:
			if u, ok := vipUnit(o.vips[i], want.VIPs[j]); ok {
				p.units = append(p.units, u)
			}
			i++
			j++
		}
	}
	p.strays = o.strays
	p.ipvipsAdd, p.ipvipsDel = addrChanges(o.ipvips, want.IPVIPs)
	p.hairpinAdd, p.hairpinDel = addrChanges(o.hairpin, want.Hairpin)
	return p
}

// structure plans the sets and chains: a missing table, or a set or chain
// of the wrong type (which cannot be changed in place), means rebuilding
// the table. It returns what the VIP elements are to be compared with:
// nothing when rebuilding.
func (p *plan) structure(o *observed, want *Ruleset) *observed {
	for _, d := range want.setDecls() {
		if ok, present := o.sets[d.name]; present && !ok {
			p.rebuild = true
		}
	}
	wantChains := want.chains()
	for _, c := range wantChains {
		if o.chains[c.name] == chainWrongHook {
			p.rebuild = true
		}
	}
	if p.rebuild {
		o = newObserved()
	}
	for _, d := range want.setDecls() {
		if _, present := o.sets[d.name]; !present {
			p.newSets = append(p.newSets, d)
		}
	}
	wanted := map[string]bool{}
	for _, c := range wantChains {
		wanted[c.name] = true
		switch o.chains[c.name] {
		case chainMissing:
			p.newChains = append(p.newChains, c)
		case chainWrongRules:
			p.fixChains = append(p.fixChains, c)
		}
	}
	for name := range o.chains {
		if !wanted[name] {
			p.dropChains = append(p.dropChains, name)
		}
	}
	slices.Sort(p.dropChains)

	return o
}

// makeDeltaPlan plans the change from the ruleset the kernel holds (o) to
// want, which differs from it only where want.delta says: the sets and
// chains are checked, but only the VIPs and addresses of the delta are
// compared, so the plan costs what the change costs. When the structure
// needs rebuilding it falls back to makePlan.
func makeDeltaPlan(o *observed, want *Ruleset) *plan {
	p := &plan{rebuild: !o.table}
	if p.structure(o, want); p.rebuild {
		return makePlan(o, want)
	}
	// lbN chains no longer used stay until the next full plan: deleting
	// one is a transaction of its own, and the count often comes back.
	p.dropChains = nil
	d := want.delta
	for _, k := range d.keys {
		i, inO := slices.BinarySearchFunc(o.vips, k, func(v obsVIP, k vip.Key) int { return v.key.Compare(k) })
		j, inW := searchElem(want.VIPs, k)
		switch {
		case inO && !inW:
			cur := o.vips[i]
			u := unit{key: cur.key, delVIP: cur.hasVal}
			u.delSlots, _ = slotChanges(cur.slots, nil)
			p.units = append(p.units, u)
		case inW:
			cur := obsVIP{key: k}
			if inO {
				cur = o.vips[i]
			}
			if u, ok := vipUnit(cur, want.VIPs[j]); ok {
				p.units = append(p.units, u)
			}
		}
	}
	p.strays = o.strays
	p.ipvipsAdd, p.ipvipsDel = d.ipvipsAdd, d.ipvipsDel
	p.hairpinAdd, p.hairpinDel = d.hairpinAdd, d.hairpinDel
	p.delta = true
	return p
}

// vipUnit compares one VIP; ok is false when nothing changes.
func vipUnit(cur obsVIP, w VIPElem) (unit, bool) {
	if cur.sum != 0 && cur.sum == w.sum {
		return unit{}, false
	}
	val := vipVal{n: len(w.Backends), comment: w.Comment}
	u := unit{key: w.Key}
	if !cur.hasVal || cur.val != val {
		u.delVIP = cur.hasVal
		u.addVIP = &val
	}
	next := assignSlots(cur.slots, w.Backends)
	u.delSlots, u.addSlots = diffSlots(cur.slots, next)
	u.next = obsVIP{key: w.Key, hasVal: true, val: val, slots: next, sum: w.sum}
	if len(next) == 0 {
		u.next.slots = nil
	}
	// A unit may change no element (the same backends in another order,
	// or a VIP read back): it still records the fingerprint, so that next
	// time the fast path holds.
	return u, true
}

// slotChanges turns the current slots of a VIP into the wanted backends.
func slotChanges(cur []netip.AddrPort, want []netip.AddrPort) (del []int, add []slotVal) {
	return diffSlots(cur, assignSlots(cur, want))
}

// diffSlots lists the slots to delete (changed or beyond the new count) and
// the slots to add.
func diffSlots(cur, next []netip.AddrPort) (del []int, add []slotVal) {
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

// assignSlots returns the wanted backends in slot order: a backend that is
// wanted stays in its slot when that slot still exists; the other wanted
// backends fill the free slots in order.
func assignSlots(cur []netip.AddrPort, want []netip.AddrPort) []netip.AddrPort {
	n := len(want)
	if n == 0 {
		return nil
	}
	if len(cur) == n && slices.Equal(cur, want) {
		return cur
	}
	if len(cur) == 0 {
		// Nothing to keep in place: the wanted order is the slot order.
		// The list is shared, never changed (rulesets replace it).
		return slices.Clip(want)
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

// addrChanges compares two sorted address lists.
func addrChanges(cur, want []netip.Addr) (add, del []netip.Addr) {
	i, j := 0, 0
	for i < len(cur) || j < len(want) {
		switch {
		case i == len(cur):
			add = append(add, want[j])
			j++
		case j == len(want):
			del = append(del, cur[i])
			i++
		default:
			switch c := cur[i].Compare(want[j]); {
			case c < 0:
				del = append(del, cur[i])
				i++
			case c > 0:
				add = append(add, want[j])
				j++
			default:
				i++
				j++
			}
		}
	}
	return add, del
}

// apply updates o to what the kernel holds after the plan succeeded and
// returns it. It keeps no reference to want's address lists (a Compiler
// changes them in place).
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
	o.vips = applyUnits(o.vips, p.units)
	o.strays = nil
	if p.delta {
		// o's lists are its own: patch them as the plan did the kernel.
		o.ipvips = patchAddrs(o.ipvips, p.ipvipsAdd, p.ipvipsDel)
		o.hairpin = patchAddrs(o.hairpin, p.hairpinAdd, p.hairpinDel)
	} else {
		o.ipvips = slices.Clone(want.IPVIPs)
		o.hairpin = slices.Clone(want.Hairpin)
	}
	return o
}

// applyUnits updates the sorted VIP list with the units (sorted by key). A
// change to existing VIPs is made in place; adding or removing VIPs merges
// into a new list.
func applyUnits(vips []obsVIP, units []unit) []obsVIP {
	inPlace := true
	idx := make([]int, len(units))
	i := 0
	for n, u := range units {
		for i < len(vips) && vips[i].key.Compare(u.key) < 0 {
			i++
		}
		if i == len(vips) || vips[i].key != u.key || !u.next.key.Addr.IsValid() {
			inPlace = false
			break
		}
		idx[n] = i
	}
	if inPlace {
		for n, u := range units {
			vips[idx[n]] = u.next
		}
		return vips
	}
	out := make([]obsVIP, 0, len(vips)+len(units))
	i = 0
	for _, u := range units {
		for i < len(vips) && vips[i].key.Compare(u.key) < 0 {
			out = append(out, vips[i])
			i++
		}
		if i < len(vips) && vips[i].key == u.key {
			i++
		}
		if u.next.key.Addr.IsValid() {
			out = append(out, u.next)
		}
	}
	return append(out, vips[i:]...)
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
