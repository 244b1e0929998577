package nat

import (
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/vip"
)

// Deciding what to change is pure: the kernel's table as read back (or as
// last programmed) against the compiled ruleset gives a plan of element and
// chain changes. kernel.go turns plans into netlink batches.

// chainStatus says how a chain in the kernel compares with what l4lb wants.
type chainStatus uint8

const (
	chainMissing chainStatus = iota
	chainOK
	chainWrongRules // exists with the right type, but other rules
	chainWrongHook  // exists, but as another kind of chain
)

// observed is l4lb's table as the kernel holds it. The VIPs and the address
// sets are sorted slices, so that comparing them with a ruleset is a merge
// walk without hashing: at 50,000 VIPs a change costs a few milliseconds.
type observed struct {
	table   bool
	sets    map[string]bool // set name -> exists with the expected type
	chains  map[string]chainStatus
	lb      []int        // the counts chain lb has a rule for, when chainOK
	vips    []obsVIP     // sorted by key
	strays  []beKey      // backend elements in impossible slots, or of no VIP
	ipvips  []netip.Addr // sorted
	hairpin []netip.Addr // sorted
}

// obsVIP is one VIP in the kernel: its element (if any) and its slots.
type obsVIP struct {
	key     vip.Key
	hasElem bool
	comment string
	// slots of its count N = len(slots) in the backend map: slots[i] is
	// slot SlotBase(N)+i; an invalid AddrPort is a hole.
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
	elems   map[vip.Key]string // VIP elements and their comments
	slots   map[vip.Key][]slotVal
	strays  []beKey
	ipvips  []netip.Addr
	hairpin []netip.Addr
}

func newReader() *reader {
	return &reader{elems: map[vip.Key]string{}, slots: map[vip.Key][]slotVal{}}
}

// setSlot records a backend element.
func (r *reader) setSlot(k vip.Key, slot int, be netip.AddrPort) {
	if n, _ := SlotCount(slot); n == 0 {
		r.strays = append(r.strays, beKey{k, slot})
		return
	}
	r.slots[k] = append(r.slots[k], slotVal{slot, be})
}

// into fills o with what was read. A VIP's count is that of the range
// holding most of its slots; slots in other ranges (left by a change that
// failed halfway, or written by hand) are strays, deleted by the next plan.
func (r *reader) into(o *observed) {
	keys := make([]vip.Key, 0, len(r.elems)+len(r.slots))
	for k := range r.elems {
		keys = append(keys, k)
	}
	for k := range r.slots {
		if _, ok := r.elems[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, vip.Key.Compare)
	o.vips = make([]obsVIP, len(keys))
	for i, k := range keys {
		c, ok := r.elems[k]
		o.vips[i] = obsVIP{key: k, hasElem: ok, comment: c, slots: r.vipSlots(k)}
	}
	o.strays = r.strays
	slices.SortFunc(r.ipvips, netip.Addr.Compare)
	slices.SortFunc(r.hairpin, netip.Addr.Compare)
	o.ipvips, o.hairpin = slices.Compact(r.ipvips), slices.Compact(r.hairpin)
}

// vipSlots places the slots read for k by the count they belong to.
func (r *reader) vipSlots(k vip.Key) []netip.AddrPort {
	read := r.slots[k]
	if len(read) == 0 {
		return nil
	}
	n, _ := SlotCount(read[0].slot)
	mixed := false
	for _, s := range read[1:] {
		if m, _ := SlotCount(s.slot); m != n {
			mixed = true
		}
	}
	if mixed {
		per := map[int]int{}
		for _, s := range read {
			m, _ := SlotCount(s.slot)
			per[m]++
			if per[m] > per[n] || (per[m] == per[n] && m < n) {
				n = m
			}
		}
	}
	out := make([]netip.AddrPort, n)
	for _, s := range read {
		if m, i := SlotCount(s.slot); m == n {
			out[i] = s.be
		} else {
			r.strays = append(r.strays, beKey{k, s.slot})
		}
	}
	return out
}

// plan is the set of changes that turns observed into the wanted ruleset.
type plan struct {
	rebuild    bool        // (re)create the table and everything in it
	newSets    []setDecl   // sets to create
	newChains  []chainDecl // chains to create, with their rules
	fixChains  []chainDecl // chains to flush and refill
	lbAdd      []int       // counts whose rules are inserted into chain lb (ascending), first
	lbDel      []int       // counts whose rules are deleted from chain lb, last
	units      []unit      // per-VIP element changes, each applied atomically
	ipvipsAdd  []netip.Addr
	ipvipsDel  []netip.Addr
	hairpinAdd []netip.Addr
	hairpinDel []netip.Addr
	strays     []beKey  // backend elements to delete
	dropChains []string // chains l4lb does not know, deleted last
	delta      bool     // from makeDeltaPlan: the address lists are patched, not copied
}

// unit is one VIP's changes: the old element out, slots changed, the new
// element in. Applied in one batch, so a packet never sees half of it.
// Slots are the backend map's keys (SlotBase(N) + index).
type unit struct {
	key      vip.Key
	delVIP   bool
	addVIP   *string // the comment of the element added
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
	return !p.rebuild && len(p.newSets) == 0 && len(p.newChains) == 0 && len(p.fixChains) == 0 && len(p.lbAdd) == 0 && len(p.lbDel) == 0 &&
		len(p.units) == 0 && len(p.ipvipsAdd) == 0 && len(p.ipvipsDel) == 0 && len(p.hairpinAdd) == 0 &&
		len(p.hairpinDel) == 0 && len(p.strays) == 0 && len(p.dropChains) == 0
}

// chainChanges counts the chains the plan creates, changes or deletes,
// and of those the ones that only drop what earlier changes left unused
// (rules of chain lb for counts no longer used, chains l4lb does not know).
func (p *plan) chainChanges() (chains, dropped int) {
	dropped = len(p.dropChains)
	lb := 0
	switch {
	case len(p.lbAdd) > 0:
		lb = 1
	case len(p.lbDel) > 0:
		lb = 1
		dropped++
	}
	return len(p.newChains) + len(p.fixChains) + len(p.dropChains) + lb, dropped
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
	o = p.structure(o, want, false)

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
			p.units = append(p.units, removeUnit(o.vips[i]))
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
//
// Chain lb gains the rule of a count when the count comes into use, in the
// transaction of the VIPs' slots; the rules of counts no longer in use
// stay until a full plan (delta false), which deletes them last, once no
// VIP uses them.
func (p *plan) structure(o *observed, want *Ruleset, delta bool) *observed {
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
		case chainOK:
			if c.name != chainLB {
				break
			}
			// Only the rules of counts that change: a rule added walks
			// every element of the backend map it looks up (the kernel
			// checks each against the rule's register), so the rules of
			// the counts kept are never rewritten.
			p.lbAdd = subtractCounts(c.counts, o.lb)
			if !delta {
				p.lbDel = subtractCounts(o.lb, c.counts)
			}
		}
	}
	if delta {
		return o
	}
	for name := range o.chains {
		if !wanted[name] {
			p.dropChains = append(p.dropChains, name)
		}
	}
	slices.Sort(p.dropChains)
	return o
}

// unionCounts merges two ascending lists of counts.
func unionCounts(a, b []int) []int {
	out := make([]int, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// subtractCounts lists the counts of a (ascending) that b lacks.
func subtractCounts(a, b []int) []int {
	var out []int
	for _, n := range a {
		if _, found := slices.BinarySearch(b, n); !found {
			out = append(out, n)
		}
	}
	return out
}

// makeDeltaPlan plans the change from the ruleset the kernel holds (o) to
// want, which differs from it only where want.delta says: the sets and
// chains are checked, but only the VIPs and addresses of the delta are
// compared, so the plan costs what the change costs. When the structure
// needs rebuilding it falls back to makePlan.
func makeDeltaPlan(o *observed, want *Ruleset) *plan {
	p := &plan{rebuild: !o.table}
	if p.structure(o, want, true); p.rebuild {
		return makePlan(o, want)
	}
	d := want.delta
	for _, k := range d.keys {
		i, inO := slices.BinarySearchFunc(o.vips, k, func(v obsVIP, k vip.Key) int { return v.key.Compare(k) })
		j, inW := searchElem(want.VIPs, k)
		switch {
		case inO && !inW:
			p.units = append(p.units, removeUnit(o.vips[i]))
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

// removeUnit removes a VIP: its element and every slot.
func removeUnit(cur obsVIP) unit {
	u := unit{key: cur.key, delVIP: cur.hasElem}
	u.delSlots, _ = diffSlots(cur.slots, nil)
	return u
}

// vipUnit compares one VIP; ok is false when nothing changes.
func vipUnit(cur obsVIP, w VIPElem) (unit, bool) {
	if cur.sum != 0 && cur.sum == w.sum {
		return unit{}, false
	}
	u := unit{key: w.Key}
	if !cur.hasElem || cur.comment != w.Comment {
		u.delVIP = cur.hasElem
		c := w.Comment
		u.addVIP = &c
	}
	next := assignSlots(cur.slots, w.Backends)
	u.delSlots, u.addSlots = diffSlots(cur.slots, next)
	u.next = obsVIP{key: w.Key, hasElem: true, comment: w.Comment, slots: next, sum: w.sum}
	if len(next) == 0 {
		u.next.slots = nil
	}
	// A unit may change no element (the same backends in another order,
	// or a VIP read back): it still records the fingerprint, so that next
	// time the fast path holds.
	return u, true
}

// diffSlots lists the slots to delete and the slots to add (as keys of the
// backend map) to go from cur to next. Within one count only the slots
// that differ change; a change of count moves the VIP to the range of the
// new count: every old slot out, every new one in.
func diffSlots(cur, next []netip.AddrPort) (del []int, add []slotVal) {
	from, to := SlotBase(len(cur)), SlotBase(len(next))
	same := len(cur) == len(next)
	for i, a := range cur {
		if a.IsValid() && (!same || next[i] != a) {
			del = append(del, from+i)
		}
	}
	for i, a := range next {
		if !same || cur[i] != a {
			add = append(add, slotVal{to + i, a})
		}
	}
	return del, add
}

// assignSlots returns the wanted backends in slot order. When the count
// stays, a backend that is still wanted keeps its slot and the others
// fill the free slots in order; otherwise the wanted order is the slot
// order.
func assignSlots(cur []netip.AddrPort, want []netip.AddrPort) []netip.AddrPort {
	n := len(want)
	if n == 0 {
		return nil
	}
	if len(cur) != n {
		// Nothing to keep in place: the wanted order is the slot order.
		// The list is shared, never changed (rulesets replace it).
		return slices.Clip(want)
	}
	if slices.Equal(cur, want) {
		return cur
	}
	wanted := make(map[netip.AddrPort]bool, n)
	for _, a := range want {
		wanted[a] = true
	}
	next := make([]netip.AddrPort, n)
	placed := make(map[netip.AddrPort]bool, n)
	for i, a := range cur {
		if a.IsValid() && wanted[a] && !placed[a] {
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
	for _, c := range append(append([]chainDecl{}, p.newChains...), p.fixChains...) {
		o.chains[c.name] = chainOK
		if c.name == chainLB {
			o.lb = c.counts
		}
	}
	if len(p.lbAdd)+len(p.lbDel) > 0 {
		o.lb = subtractCounts(unionCounts(o.lb, p.lbAdd), p.lbDel)
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
