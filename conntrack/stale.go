package conntrack

import (
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/vip"
)

// Options say which flows Stale looks at and which backends keep theirs.
type Options struct {
	// FlushUnhealthy deletes the flows of unhealthy backends (--flush-unhealthy,
	// on by default). When off, unhealthy backends keep their flows like
	// draining ones.
	FlushUnhealthy bool

	// FormerVIPs are addresses that were VIPs and may still have flows, but
	// that the state no longer shows as l4lb's: IP VIPs outside the pools
	// that were removed since the last successful cleanup (Lost returns
	// them). The pools and the addresses of the state's VIPs are always
	// l4lb's and need not be listed.
	FormerVIPs []netip.Addr

	// Suspects narrows the pass to flows whose reply source address is one
	// of these: the backends that lost their place since the last successful
	// cleanup (Lost returns them). Empty means every flow: the full pass.
	Suspects []netip.Addr

	// Backends, when set, narrows the listing further, for a kernel that
	// can (Cleanup: a PortLister): to the flows whose reply comes from one
	// of these, in its protocol (LostBackends returns them; their addresses
	// are the Suspects).
	Backends []Suspect
}

// A Suspect is a backend that lost its place in some VIP: the flows whose
// reply comes from it, in its protocol, may be stale.
type Suspect struct {
	Proto   vip.Proto
	Backend netip.AddrPort
}

// LostBackends is LostIn's suspects as backends (protocol, address and
// port) rather than addresses, sorted.
func LostBackends(before []vip.VIP, cur vip.State, flushUnhealthy bool) []Suspect {
	sus := map[Suspect]bool{}
	for _, v := range before {
		now, ok := lookupVIP(cur, v.Key())
		for _, b := range v.Backends {
			if keeps(b.State, flushUnhealthy) && (!ok || !kept(now, b.AddrPort(), flushUnhealthy)) {
				sus[Suspect{Proto: v.Proto, Backend: b.AddrPort()}] = true
			}
		}
	}
	return sortedSuspects(sus)
}

func sortedSuspects(m map[Suspect]bool) []Suspect {
	out := make([]Suspect, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Suspect) int {
		if c := a.Backend.Compare(b.Backend); c != 0 {
			return c
		}
		return int(a.Proto) - int(b.Proto)
	})
	return out
}

// pair is a backend of a VIP.
type pair struct {
	vip     vip.Key
	backend netip.AddrPort
}

// findVIP returns the VIP of key k in a state (VIPs sorted by key).
func lookupVIP(s vip.State, k vip.Key) (vip.VIP, bool) {
	i, ok := slices.BinarySearchFunc(s.VIPs, k, func(v vip.VIP, k vip.Key) int { return v.Key().Compare(k) })
	if !ok {
		return vip.VIP{}, false
	}
	return s.VIPs[i], true
}

// kept reports whether the VIP keeps the flows of backend be.
func kept(v vip.VIP, be netip.AddrPort, flushUnhealthy bool) bool {
	for _, b := range v.Backends {
		if b.AddrPort() == be && keeps(b.State, flushUnhealthy) {
			return true
		}
	}
	return false
}

// hasAddr reports whether some VIP of the state has address a.
func hasAddr(s vip.State, a netip.Addr) bool {
	i, _ := slices.BinarySearchFunc(s.VIPs, vip.Key{Addr: a}, func(v vip.VIP, k vip.Key) int { return v.Key().Compare(k) })
	return i < len(s.VIPs) && s.VIPs[i].Addr == a
}

// keeps reports whether a backend in state st keeps its established flows.
// A starting backend never had traffic: there is nothing to flush.
func keeps(st vip.BackendState, flushUnhealthy bool) bool {
	switch st {
	case vip.Active, vip.Draining, vip.Starting:
		return true
	case vip.Unhealthy:
		return !flushUnhealthy
	}
	return false
}

// owner answers whether a destination address is l4lb's: in the pools, an
// address of the state's VIPs (looked up, so that a pass costs what its
// flows cost, not what the state holds), or a former VIP.
type owner struct {
	s      vip.State
	former map[netip.Addr]bool
}

func newOwner(s vip.State, former []netip.Addr) owner {
	o := owner{s: s, former: make(map[netip.Addr]bool, len(former))}
	for _, a := range former {
		o.former[a] = true
	}
	return o
}

func (o owner) inPools(a netip.Addr) bool {
	return (o.s.Pool4.IsValid() && o.s.Pool4.Contains(a)) || (o.s.Pool6.IsValid() && o.s.Pool6.Contains(a))
}

func (o owner) owns(a netip.Addr) bool { return o.inPools(a) || o.former[a] || hasAddr(o.s, a) }

// Stale returns the flows to delete: flows that l4lb DNATed (their original
// destination is one of its addresses and their reply comes from elsewhere)
// and that the desired state no longer stands behind, because their VIP is
// gone or their backend is not an active or draining backend of that VIP
// (nor an unhealthy one, when FlushUnhealthy is off). Flows that are not to
// an l4lb address are never returned. Stale is pure; the result keeps the
// order of flows. Its cost grows with the flows, and only with the log of
// the state's size.
func Stale(flows []Flow, s vip.State, opts Options) []Flow {
	o := newOwner(s, opts.FormerVIPs)
	var suspects map[netip.Addr]bool
	if len(opts.Suspects) > 0 {
		suspects = make(map[netip.Addr]bool, len(opts.Suspects))
		for _, a := range opts.Suspects {
			suspects[a] = true
		}
	}
	var out []Flow
	for _, f := range flows {
		if !f.DNATed() || !o.owns(f.OrigDst.Addr()) {
			continue
		}
		if suspects != nil && !suspects[f.ReplySrc.Addr()] {
			continue
		}
		k := vip.Key{Addr: f.OrigDst.Addr(), Proto: f.Proto, Port: f.OrigDst.Port()}
		if v, ok := lookupVIP(s, k); ok && kept(v, f.ReplySrc, opts.FlushUnhealthy) {
			continue
		}
		out = append(out, f)
	}
	return out
}

// Lost compares the state before and after a change and returns what the
// change may have made stale: the addresses of backends that kept their
// flows for some VIP before and no longer do, and the addresses of VIPs
// that are no longer l4lb's at all (removed IP VIPs outside the pools).
// Both are sorted. A Cleanup with these as Suspects and FormerVIPs finds
// every flow the change made stale, looking only at those backends' flows.
func Lost(prev, cur vip.State, flushUnhealthy bool) (suspects, former []netip.Addr) {
	return LostIn(prev.VIPs, cur, flushUnhealthy)
}

// LostIn is Lost when only some VIPs changed: before lists them as they
// were (the others are the same in cur), so the cost is that of the change.
func LostIn(before []vip.VIP, cur vip.State, flushUnhealthy bool) (suspects, former []netip.Addr) {
	return suspectAddrs(LostBackends(before, cur, flushUnhealthy)), formerVIPs(before, cur)
}

// suspectAddrs is the addresses of backends, sorted.
func suspectAddrs(backends []Suspect) []netip.Addr {
	sus := make(map[netip.Addr]bool, len(backends))
	for _, b := range backends {
		sus[b.Backend.Addr()] = true
	}
	return sortedAddrs(sus)
}

// formerVIPs is the addresses of VIPs of before that are no longer l4lb's
// at all in cur, sorted.
func formerVIPs(before []vip.VIP, cur vip.State) []netip.Addr {
	o := newOwner(cur, nil)
	gone := map[netip.Addr]bool{}
	for _, v := range before {
		if !o.owns(v.Addr) {
			gone[v.Addr] = true
		}
	}
	return sortedAddrs(gone)
}

func sortedAddrs(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
