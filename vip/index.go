package vip

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// Index is the desired state kept up to date one change at a time: groups
// of declarations (a Marathon app, a Mesos task) are set and deleted by
// key, and Commit recomputes only the VIP units those changes reach. A unit
// is a VIP name with all its ports and protocols (they share addresses), or
// an IP VIP's address. After any sequence of changes the state equals what
// Build computes from the current declarations with the Index's
// allocations as Previous. An Index is not safe for concurrent use; the
// States it returns are immutable and may be shared.
//
// The IP VIP guard (Guard) is applied to every IP VIP unit it recomputes,
// with the task hosts given to Set (Build takes the same hosts). The index
// counts the groups that use each task host and backend address (and
// names them where an IP VIP is declared), so that a change costs the
// addresses it touches; an IP VIP at an address whose uses changed is
// recomputed, and all IP VIPs (never named ones) when the agent's networks
// change (SetLocal).
type Index struct {
	cfg    Config
	pool4  pool
	pool6  pool
	groups map[string]*indexGroup
	units  map[unitKey]*indexUnit
	alloc4 map[string]netip.Addr
	alloc6 map[string]netip.Addr
	owner  map[netip.Addr]string // named allocations: address -> name
	dirty  map[unitKey]bool
	ips    map[netip.Addr]bool // addresses of the IP VIP units
	// hosts counts the groups that use each task host and backend
	// address; users names them, for the addresses of IP VIP units only
	// (what a refusal needs), so that a host with many tasks costs a count.
	hosts map[netip.Addr]int32
	users map[netip.Addr]map[string]bool

	vips         []VIP // sorted by key; changed in place by Commit
	version      uint64
	allocChanged bool
	allocSnap    Allocations
	problems     []Problem // sorted; nil when it must be rebuilt
	nProblems    int       // groups and units with problems
}

type indexGroup struct {
	decls    []Decl
	problems []Problem
	hosts    []Host
}

type indexUnit struct {
	groups   []unitRef // the groups that declare it (most units have one)
	vips     []VIP     // sorted by key
	problems []Problem
}

// unitRef is a group that declares a unit, with its count of declarations.
type unitRef struct {
	key string
	n   int
}

// ref adds d (+1 or -1) to the count of group key.
func (u *indexUnit) ref(key string, d int) {
	for i := range u.groups {
		if u.groups[i].key == key {
			if u.groups[i].n += d; u.groups[i].n <= 0 {
				u.groups = slices.Delete(u.groups, i, i+1)
			}
			return
		}
	}
	if d > 0 {
		u.groups = append(u.groups, unitRef{key, d})
	}
}

// NewIndex returns an empty index. cfg.Previous holds addresses to give
// back to names when they first appear (the persisted allocations).
func NewIndex(cfg Config) *Index {
	cfg = cfg.withDefaults()
	return &Index{
		cfg: cfg, pool4: newPool(cfg.Pool4), pool6: newPool(cfg.Pool6),
		groups: map[string]*indexGroup{}, units: map[unitKey]*indexUnit{},
		alloc4: map[string]netip.Addr{}, alloc6: map[string]netip.Addr{},
		owner: map[netip.Addr]string{}, dirty: map[unitKey]bool{},
		ips: map[netip.Addr]bool{}, hosts: map[netip.Addr]int32{}, users: map[netip.Addr]map[string]bool{},
		allocSnap: Allocations{V4: map[string]netip.Addr{}, V6: map[string]netip.Addr{}},
	}
}

// Set replaces the declarations, problems and task hosts of the group key
// (or adds it). hosts are the addresses of the group's task hosts
// (AppHosts), which no IP VIP may take, as no IP VIP may take a backend's.
// Nothing is recomputed before Commit. The arguments must not be changed
// afterwards.
func (x *Index) Set(key string, decls []Decl, problems []Problem, hosts ...Host) {
	old := x.groups[key]
	var oldAddrs []netip.Addr
	if old != nil {
		if slices.EqualFunc(old.decls, decls, declEqual) && slices.Equal(old.problems, problems) && slices.Equal(old.hosts, hosts) {
			return
		}
		x.unlink(key, old)
		oldAddrs = old.addrs()
	}
	g := &indexGroup{decls: decls, problems: problems, hosts: hosts}
	x.groups[key] = g
	x.useHosts(key, oldAddrs, g.addrs())
	if len(problems) > 0 {
		x.problems = nil
		x.nProblems++
	}
	for _, d := range decls {
		u := d.unit()
		iu := x.units[u]
		if iu == nil {
			iu = &indexUnit{}
			x.units[u] = iu
			if u.name == "" {
				x.newIP(u.ip)
			}
		}
		iu.ref(key, 1)
		x.dirty[u] = true
	}
}

// Delete removes the group key; an unknown key is ignored.
func (x *Index) Delete(key string) {
	if old := x.groups[key]; old != nil {
		x.unlink(key, old)
		delete(x.groups, key)
		x.useHosts(key, old.addrs(), nil)
	}
}

// addrs returns the task host and backend addresses a group uses, sorted,
// each once.
func (g *indexGroup) addrs() []netip.Addr {
	var out []netip.Addr
	for _, h := range g.hosts {
		out = append(out, h.Addr)
	}
	for _, d := range g.decls {
		for _, b := range d.Backends {
			out = append(out, b.Addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// useHosts moves the uses of the group key from the addresses old to the
// addresses cur (both sorted). An IP VIP at any of these addresses is
// recomputed: the address may have become free or taken, or another task
// may now be the one its refusal names.
func (x *Index) useHosts(key string, old, cur []netip.Addr) {
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		var a netip.Addr
		switch {
		case j == len(cur) || i < len(old) && old[i].Less(cur[j]):
			a = old[i]
			i++
			if n := x.hosts[a] - 1; n > 0 {
				x.hosts[a] = n
			} else {
				delete(x.hosts, a)
			}
			if users := x.users[a]; users != nil {
				delete(users, key)
				if len(users) == 0 {
					delete(x.users, a)
				}
			}
		case i == len(old) || cur[j].Less(old[i]):
			a = cur[j]
			j++
			x.hosts[a]++
			if x.ips[a] {
				users := x.users[a]
				if users == nil {
					users = map[string]bool{}
					x.users[a] = users
				}
				users[key] = true
			}
		default:
			a = old[i]
			i++
			j++
		}
		if x.ips[a] {
			x.dirty[unitKey{ip: a}] = true
		}
	}
}

// taken says which task host or backend uses a, for the guard: the least
// use over the groups that use it (see hostUse), as Build chooses it.
func (x *Index) taken(a netip.Addr) (string, bool) {
	var best hostUse
	for key := range x.users[a] {
		g := x.groups[key]
		for _, h := range g.hosts {
			if h.Addr != a {
				continue
			}
			if u := h.use(); best.what == "" || u.compare(best) < 0 {
				best = u
			}
		}
		for _, d := range g.decls {
			for _, b := range d.Backends {
				if b.Addr != a {
					continue
				}
				if u := backendUse(b); best.what == "" || u.compare(best) < 0 {
					best = u
				}
			}
		}
	}
	return best.what, best.what != ""
}

// newIP starts naming the users of the address of a new IP VIP unit. Only
// when a task host or backend already uses the address (an IP VIP declared
// at a host: a mistake or a hijack, refused) does this look at every group.
func (x *Index) newIP(a netip.Addr) {
	x.ips[a] = true
	if x.hosts[a] == 0 {
		return
	}
	users := map[string]bool{}
	for key, g := range x.groups {
		if slices.ContainsFunc(g.hosts, func(h Host) bool { return h.Addr == a }) ||
			slices.ContainsFunc(g.decls, func(d Decl) bool {
				return slices.ContainsFunc(d.Backends, func(b Backend) bool { return b.Addr == a })
			}) {
			users[key] = true
		}
	}
	x.users[a] = users
}

// SetLocal gives the index the agent's networks, re-read every sync. When
// they differ from the ones it holds, every IP VIP is checked again at the
// next Commit; named VIPs are not touched.
func (x *Index) SetLocal(l *LocalNets) {
	cur := x.cfg.Guard.Local
	if cur == l || cur != nil && l != nil && slices.Equal(cur.Own, l.Own) && slices.Equal(cur.Connected, l.Connected) {
		return
	}
	x.cfg.Guard.Local = l
	for a := range x.ips {
		x.dirty[unitKey{ip: a}] = true
	}
}

// Has reports whether the group key is held.
func (x *Index) Has(key string) bool { return x.groups[key] != nil }

// Keys returns the keys of the groups held, in no order.
func (x *Index) Keys() []string { return slices.Collect(maps.Keys(x.groups)) }

func (x *Index) unlink(key string, g *indexGroup) {
	if len(g.problems) > 0 {
		x.problems = nil
		x.nProblems--
	}
	for _, d := range g.decls {
		u := d.unit()
		if iu := x.units[u]; iu != nil {
			iu.ref(key, -1)
		}
		x.dirty[u] = true
	}
}

func declEqual(a, b Decl) bool {
	return a.Spec == b.Spec && a.Proto == b.Proto && a.App == b.App && a.Label == b.Label && a.Addr == b.Addr &&
		slices.Equal(a.Backends, b.Backends)
}

// Change is what a Commit changed.
type Change struct {
	Before []VIP // the VIPs that changed or went, as they were, sorted by key
	After  []VIP // the VIPs that changed or came, as they are, sorted by key
	// Allocations is set when named VIP addresses were given or released.
	Allocations bool
}

// Empty reports whether nothing changed.
func (c Change) Empty() bool { return len(c.Before) == 0 && len(c.After) == 0 && !c.Allocations }

// smallCommit is the most units a commit may have reached and keep its
// dirty map for the next one.
const smallCommit = 256

// Commit recomputes the units that changes reached and returns what changed
// in the state.
func (x *Index) Commit() Change {
	var before, after []VIP
	x.allocChanged = false
	units := 0
	// Names first: giving or releasing an address changes the IP VIP at
	// that address, which is then recomputed too.
	for pass := 0; pass < 2; pass++ {
		for u := range x.dirty {
			if (pass == 0) != (u.name != "") {
				continue
			}
			delete(x.dirty, u)
			units++
			b, a := x.recompute(u)
			before, after = append(before, b...), append(after, a...)
		}
	}
	if units > smallCommit {
		// A map keeps its size once grown, and ranging over it costs that
		// size: after a full list, the next changes start small again.
		x.dirty = map[unitKey]bool{}
	} else {
		clear(x.dirty)
	}
	slices.SortFunc(before, func(a, b VIP) int { return a.Key().Compare(b.Key()) })
	slices.SortFunc(after, func(a, b VIP) int { return a.Key().Compare(b.Key()) })
	if len(before)+len(after) > 0 {
		x.vips = patchVIPs(x.vips, before, after)
		x.version++
	}
	if x.allocChanged {
		x.allocSnap = Allocations{V4: maps.Clone(x.alloc4), V6: maps.Clone(x.alloc6)}
	}
	return Change{Before: before, After: after, Allocations: x.allocChanged}
}

// Version counts the Commits that changed the VIPs.
func (x *Index) Version() uint64 { return x.version }

// State returns the current desired state. It is a view: its VIPs are
// changed in place by the next Commit (so that a change costs what it
// changes, not a copy of every VIP). Copy it to keep it, and do not change
// it.
func (x *Index) State() State {
	return State{VIPs: x.vips, Pool4: x.cfg.Pool4, Pool6: x.cfg.Pool6, Allocations: x.allocSnap}
}

// Problems returns what the groups and units skipped, sorted.
func (x *Index) Problems() []Problem {
	if x.problems == nil && x.nProblems > 0 {
		var ps []Problem
		for _, g := range x.groups {
			ps = append(ps, g.problems...)
		}
		for _, u := range x.units {
			ps = append(ps, u.problems...)
		}
		x.problems = sortProblems(ps)
	}
	return x.problems
}

// recompute rebuilds one unit and returns its VIPs that went or changed
// (as they were) and that came or changed (as they are).
func (x *Index) recompute(u unitKey) (before, after []VIP) {
	iu := x.units[u]
	if iu == nil {
		return nil, nil
	}
	groups := map[groupID]*group{}
	for _, ref := range iu.groups {
		for _, d := range x.groups[ref.key].decls {
			if d.unit() != u {
				continue
			}
			k := groupID{name: d.Spec.Name, ip: d.Spec.IP, port: d.Spec.Port, proto: d.Proto}
			g := groups[k]
			if g == nil {
				g = &group{spec: d.Spec, proto: d.Proto, apps: map[string]bool{}}
				groups[k] = g
			}
			g.add(d)
		}
	}
	keys := slices.SortedFunc(maps.Keys(groups), groupID.compare)
	for _, k := range keys {
		groups[k].dedupe()
	}
	var vips []VIP
	var problems []Problem
	if u.name != "" {
		vips, problems = x.buildName(u.name, keys, groups)
	} else {
		vips, problems = x.buildIP(u.ip, keys, groups)
	}
	slices.SortFunc(vips, func(a, b VIP) int { return a.Key().Compare(b.Key()) })
	before, after = diffVIPs(iu.vips, vips)
	if len(iu.problems) > 0 || len(problems) > 0 {
		x.problems = nil
		if len(iu.problems) > 0 {
			x.nProblems--
		}
		if len(problems) > 0 {
			x.nProblems++
		}
	}
	iu.vips, iu.problems = vips, problems
	if len(iu.groups) == 0 {
		delete(x.units, u)
		if u.name == "" {
			delete(x.ips, u.ip)
			delete(x.users, u.ip)
		}
	}
	return before, after
}

// buildName allocates a name's addresses and builds its VIPs, as build
// does for one name.
func (x *Index) buildName(name string, keys []groupID, groups map[groupID]*group) ([]VIP, []Problem) {
	var v4, v6 bool
	for _, k := range keys {
		for _, b := range groups[k].backends {
			if b.Addr.Is4() {
				v4 = true
			} else {
				v6 = true
			}
		}
	}
	if len(keys) > 0 && !v6 {
		v4 = true
	}
	gs := make([]*group, 0, len(keys))
	for _, k := range keys {
		gs = append(gs, groups[k])
	}
	pin4, pin6, pinned := namePins(gs)
	if pinned {
		v4, v6 = pin4.IsValid(), pin6.IsValid()
	}
	fams := []struct {
		is4   bool
		need  bool
		pin   netip.Addr
		alloc map[string]netip.Addr
		prev  map[string]netip.Addr
		p     pool
	}{{true, v4, pin4, x.alloc4, x.cfg.Previous.V4, x.pool4}, {false, v6, pin6, x.alloc6, x.cfg.Previous.V6, x.pool6}}
	var vips []VIP
	var problems []Problem
	for _, f := range fams {
		a, has := f.alloc[name]
		if !f.need || (has && f.pin.IsValid() && a != f.pin) {
			if has {
				x.release(f.alloc, name, a)
				has = false
			}
			if !f.need {
				continue
			}
		}
		if !has && f.pin.IsValid() {
			a, has = f.pin, true
			f.alloc[name] = a
			x.owner[a] = name
			x.allocChanged = true
			x.touchIP(a)
		}
		if !has {
			var err error
			if a, err = x.allocate(f.p, name, f.prev[name], uint64(len(f.alloc))); err != nil {
				if len(keys) > 0 {
					problems = append(problems, groupProblems(groups[keys[0]], err.Error())...)
				}
				continue
			}
			f.alloc[name] = a
			x.owner[a] = name
			x.allocChanged = true
			x.touchIP(a)
		}
		for _, k := range keys {
			g := groups[k]
			v := newVIP(g, a)
			v.Backends = familyBackends(g.backends, f.is4)
			vips = append(vips, v)
		}
	}
	return vips, problems
}

// allocate finds an address for a new name: its previous address when that
// is in the pool and free, else the first free one from the hash of the
// name that no IP VIP asks for.
func (x *Index) allocate(p pool, name string, prev netip.Addr, used uint64) (netip.Addr, error) {
	if prev.IsValid() && p.owns(prev) && x.owner[prev] == "" {
		return prev, nil
	}
	if used >= p.capacity() {
		return netip.Addr{}, fmt.Errorf("%w: no free address in %s for %s", errPoolExhausted, p.prefix, name)
	}
	start := p.hashOffset(name)
	for i := uint64(0); i < p.size; i++ {
		off := (start + i) & (p.size - 1)
		if !p.usable(off) {
			continue
		}
		a := p.addr(off)
		if x.owner[a] != "" || x.units[unitKey{ip: a}] != nil {
			continue
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: no free address in %s for %s", errPoolExhausted, p.prefix, name)
}

func (x *Index) release(alloc map[string]netip.Addr, name string, a netip.Addr) {
	delete(alloc, name)
	delete(x.owner, a)
	x.allocChanged = true
	x.touchIP(a)
}

// touchIP marks the IP VIP at a for recomputation: a named VIP took or left
// its address.
func (x *Index) touchIP(a netip.Addr) {
	if u := (unitKey{ip: a}); x.units[u] != nil {
		x.dirty[u] = true
	}
}

// buildIP builds the VIPs of an IP VIP address, as build does: the guard
// first, then the named VIPs, then the backends' family.
func (x *Index) buildIP(ip netip.Addr, keys []groupID, groups map[groupID]*group) ([]VIP, []Problem) {
	var vips []VIP
	var problems []Problem
	if len(keys) > 0 {
		if reason := x.cfg.Guard.reason(ip, x.taken); reason != "" {
			for _, k := range keys {
				problems = append(problems, refusedProblems(groups[k], reason)...)
			}
			return nil, problems
		}
	}
	for _, k := range keys {
		g := groups[k]
		if name := x.owner[ip]; name != "" {
			problems = append(problems, groupProblems(g, fmt.Sprintf("IP VIP address %s is in use by named VIP %s", ip, name))...)
			continue
		}
		v := newVIP(g, ip)
		for _, b := range g.backends {
			if b.Addr.Is4() != ip.Is4() {
				problems = append(problems, Problem{App: b.App, Task: b.Task,
					Reason: fmt.Sprintf("backend %s does not match the address family of IP VIP %s", b.AddrPort(), v)})
				continue
			}
			v.Backends = append(v.Backends, b)
		}
		vips = append(vips, v)
	}
	return vips, problems
}

// familyBackends returns the backends of one family: the list itself when
// they all are (the common case: no copy), else a copy of those that are.
func familyBackends(list []Backend, is4 bool) []Backend {
	n := 0
	for _, b := range list {
		if b.Addr.Is4() == is4 {
			n++
		}
	}
	switch n {
	case 0:
		return nil
	case len(list):
		return slices.Clip(list)
	}
	out := make([]Backend, 0, n)
	for _, b := range list {
		if b.Addr.Is4() == is4 {
			out = append(out, b)
		}
	}
	return out
}

// VIPEqual reports whether two VIPs are the same in every field.
func VIPEqual(a, b VIP) bool {
	return a.Name == b.Name && a.Addr == b.Addr && a.Port == b.Port && a.Proto == b.Proto &&
		slices.Equal(a.Apps, b.Apps) && slices.Equal(a.Backends, b.Backends)
}

// diffVIPs compares two sorted lists of VIPs.
func diffVIPs(old, cur []VIP) (before, after []VIP) {
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		c := 0
		switch {
		case i == len(old):
			c = 1
		case j == len(cur):
			c = -1
		default:
			c = old[i].Key().Compare(cur[j].Key())
		}
		switch {
		case c < 0:
			before = append(before, old[i])
			i++
		case c > 0:
			after = append(after, cur[j])
			j++
		default:
			if !VIPEqual(old[i], cur[j]) {
				before, after = append(before, old[i]), append(after, cur[j])
			}
			i++
			j++
		}
	}
	return before, after
}

// patchVIPs changes a sorted list in place: the VIPs of before are
// replaced by the VIPs of after with the same key, or removed, and the
// other VIPs of after are inserted. Only insertions and removals move
// memory; no change allocates unless the list grows past its capacity.
func patchVIPs(vips, before, after []VIP) []VIP {
	if len(before)+len(after) > 64 && len(before)+len(after) > len(vips)/64 {
		// Many changes (a relist): one merge, not a move per insertion.
		return mergeVIPs(vips, before, after)
	}
	next := make(map[Key]int, len(after))
	for i, v := range after {
		next[v.Key()] = i
	}
	done := make([]bool, len(after))
	for _, v := range before {
		i := searchVIP(vips, v.Key())
		if i == len(vips) || vips[i].Key() != v.Key() {
			continue
		}
		if j, ok := next[v.Key()]; ok {
			vips[i] = after[j]
			done[j] = true
			continue
		}
		vips = slices.Delete(vips, i, i+1)
	}
	for j, v := range after {
		if done[j] {
			continue
		}
		i := searchVIP(vips, v.Key())
		if i < len(vips) && vips[i].Key() == v.Key() {
			vips[i] = v
			continue
		}
		vips = slices.Insert(vips, i, v)
	}
	return vips
}

// mergeVIPs returns a new sorted list: vips without before, with after.
func mergeVIPs(vips, before, after []VIP) []VIP {
	gone := make(map[Key]bool, len(before))
	for _, v := range before {
		gone[v.Key()] = true
	}
	out := make([]VIP, 0, len(vips)-len(before)+len(after))
	k := 0
	for _, v := range vips {
		for k < len(after) && after[k].Key().Compare(v.Key()) < 0 {
			out = append(out, after[k])
			k++
		}
		if gone[v.Key()] {
			continue
		}
		out = append(out, v)
	}
	return append(out, after[k:]...)
}

// searchVIP returns the index of the first VIP whose key is not below k.
func searchVIP(vips []VIP, k Key) int {
	i, _ := slices.BinarySearchFunc(vips, k, func(v VIP, k Key) int { return v.Key().Compare(k) })
	return i
}

// NameAddrs returns the addresses a name holds now (one per family at
// most), for DNS; none when the name has no VIP.
func (x *Index) NameAddrs(name string) []netip.Addr {
	var out []netip.Addr
	if a, ok := x.alloc4[name]; ok {
		out = append(out, a)
	}
	if a, ok := x.alloc6[name]; ok {
		out = append(out, a)
	}
	return out
}
