package nat

import (
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/l4lb/l4lb/vip"
)

// Compiler keeps a compiled ruleset up to date one change at a time, so
// that a change to a few VIPs costs a few elements to compile and to plan,
// whatever the number of VIPs. Full compiles everything (at start and on
// resync); Update patches the last ruleset with the VIPs a vip.Change
// lists. Either way the result equals Compile of the whole state.
//
// The Ruleset a Compiler returns belongs to it: the next Update may change
// it in place. Apply it before the next Update, and do not keep it.
type Compiler struct {
	table   string
	rs      *Ruleset
	hairpin map[netip.Addr]int // active backend addresses, with the number of VIP slots they fill
	ipvips  map[netip.Addr]int // IP VIP addresses, with their number of VIPs
	counts  map[int]int        // backend counts in use, with their number of VIPs
}

// NewCompiler returns a compiler for the table (DefaultTable when empty).
func NewCompiler(table string) *Compiler {
	if table == "" {
		table = DefaultTable
	}
	return &Compiler{table: table}
}

// generations numbers rulesets, so that the kernel adapter knows which
// ruleset a delta is relative to.
var generations atomic.Uint64

// delta says how a ruleset differs from the one it was patched from: only
// these VIPs and addresses changed.
type delta struct {
	base       uint64    // generation of the ruleset this one was patched from
	keys       []vip.Key // VIPs changed, added or removed, sorted
	ipvipsAdd  []netip.Addr
	ipvipsDel  []netip.Addr
	hairpinAdd []netip.Addr
	hairpinDel []netip.Addr
}

// Full compiles the whole state, as Compile does, and makes it the base of
// the next Update.
func (c *Compiler) Full(s vip.State) *Ruleset {
	r := Compile(s, c.table)
	// Updates change these lists in place: give them their own.
	r.Hairpin, r.IPVIPs = slices.Clone(r.Hairpin), slices.Clone(r.IPVIPs)
	c.rs = r
	c.hairpin, c.ipvips, c.counts = map[netip.Addr]int{}, map[netip.Addr]int{}, map[int]int{}
	for _, e := range r.VIPs {
		c.add(e, +1)
	}
	for _, v := range s.VIPs {
		if v.Name == "" {
			c.ipvips[v.Addr]++
		}
	}
	return r
}

// add counts a VIP element's backends and backend count in or out.
func (c *Compiler) add(e VIPElem, sign int) {
	for _, b := range e.Backends {
		c.hairpin[b.Addr()] += sign
	}
	if n := len(e.Backends); n > 0 {
		c.counts[n] += sign
	}
}

// Update patches the last ruleset with a change of the state: the VIPs in
// ch.Before are replaced by those in ch.After. Without a previous Full it
// compiles s whole.
func (c *Compiler) Update(s vip.State, ch vip.Change) *Ruleset {
	if c.rs == nil || c.rs.Pool4 != s.Pool4.Masked() || c.rs.Pool6 != s.Pool6.Masked() {
		return c.Full(s)
	}
	old := c.rs
	r := &Ruleset{Table: old.Table, Pool4: old.Pool4, Pool6: old.Pool6, IPVIPs: old.IPVIPs, Hairpin: old.Hairpin, gen: generations.Add(1)}
	d := &delta{base: old.gen}

	hairpinBefore := map[netip.Addr]bool{}
	ipBefore := map[netip.Addr]bool{}
	touch := func(m map[netip.Addr]int, seen map[netip.Addr]bool, a netip.Addr) {
		if _, ok := seen[a]; !ok {
			seen[a] = m[a] > 0
		}
	}
	var before, after []VIPElem
	for _, v := range ch.Before {
		i, ok := searchElem(old.VIPs, v.Key())
		if !ok {
			continue
		}
		e := old.VIPs[i]
		for _, b := range e.Backends {
			touch(c.hairpin, hairpinBefore, b.Addr())
		}
		c.add(e, -1)
		if v.Name == "" {
			touch(c.ipvips, ipBefore, v.Addr)
			c.ipvips[v.Addr]--
		}
		before = append(before, e)
		d.keys = append(d.keys, e.Key)
	}
	for _, v := range ch.After {
		e := compileVIP(v)
		for _, b := range e.Backends {
			touch(c.hairpin, hairpinBefore, b.Addr())
		}
		c.add(e, +1)
		if v.Name == "" {
			touch(c.ipvips, ipBefore, v.Addr)
			c.ipvips[v.Addr]++
		}
		after = append(after, e)
		d.keys = append(d.keys, e.Key)
	}
	var h hasher
	for i := range after {
		after[i].sum = after[i].fingerprint(h.get())
	}
	slices.SortFunc(after, func(a, b VIPElem) int { return a.Key.Compare(b.Key) })
	slices.SortFunc(d.keys, vip.Key.Compare)
	d.keys = slices.Compact(d.keys)

	r.VIPs = patchElems(old.VIPs, before, after)
	d.hairpinAdd, d.hairpinDel = flips(c.hairpin, hairpinBefore)
	d.ipvipsAdd, d.ipvipsDel = flips(c.ipvips, ipBefore)
	r.Hairpin = patchAddrs(old.Hairpin, d.hairpinAdd, d.hairpinDel)
	r.IPVIPs = patchAddrs(old.IPVIPs, d.ipvipsAdd, d.ipvipsDel)
	for n, k := range c.counts {
		if k <= 0 {
			delete(c.counts, n)
		}
	}
	inUse := make(map[int]bool, len(c.counts))
	for n := range c.counts {
		inUse[n] = true
	}
	r.lbCounts = lbCounts(inUse)
	r.delta = d
	c.rs = r
	return r
}

// flips lists the addresses whose presence changed: counted now and not
// before (added), or the other way (deleted), each sorted.
func flips(m map[netip.Addr]int, before map[netip.Addr]bool) (add, del []netip.Addr) {
	for a, was := range before {
		now := m[a] > 0
		if !now {
			delete(m, a)
		}
		switch {
		case now && !was:
			add = append(add, a)
		case was && !now:
			del = append(del, a)
		}
	}
	slices.SortFunc(add, netip.Addr.Compare)
	slices.SortFunc(del, netip.Addr.Compare)
	return add, del
}

// patchAddrs changes a sorted list in place: add inserted, del removed.
func patchAddrs(list, add, del []netip.Addr) []netip.Addr {
	for _, a := range del {
		if i, ok := slices.BinarySearchFunc(list, a, netip.Addr.Compare); ok {
			list = slices.Delete(list, i, i+1)
		}
	}
	for _, a := range add {
		if i, ok := slices.BinarySearchFunc(list, a, netip.Addr.Compare); !ok {
			list = slices.Insert(list, i, a)
		}
	}
	return list
}

func searchElem(list []VIPElem, k vip.Key) (int, bool) {
	return slices.BinarySearchFunc(list, k, func(e VIPElem, k vip.Key) int { return e.Key.Compare(k) })
}

// patchElems replaces before by after in a sorted list. When every key of
// after replaces one of before, the list is changed in place; otherwise a
// new list is merged.
func patchElems(list, before, after []VIPElem) []VIPElem {
	if len(before) == len(after) {
		inPlace := true
		idx := make([]int, len(after))
		for i, e := range after {
			j, ok := searchElem(list, e.Key)
			if !ok || before[i].Key != e.Key {
				inPlace = false
				break
			}
			idx[i] = j
		}
		if inPlace {
			for i, e := range after {
				list[idx[i]] = e
			}
			return list
		}
	}
	gone := make(map[vip.Key]bool, len(before))
	for _, e := range before {
		gone[e.Key] = true
	}
	out := make([]VIPElem, 0, len(list)-len(before)+len(after))
	k := 0
	for _, e := range list {
		for k < len(after) && after[k].Key.Compare(e.Key) < 0 {
			out = append(out, after[k])
			k++
		}
		if gone[e.Key] {
			continue
		}
		out = append(out, e)
	}
	return append(out, after[k:]...)
}
