// Package dns is l4lb's name server for the VIP zone (DESIGN section 5): A
// and AAAA records of named VIPs under l4lb.thisdcos.directory, SOA and NS
// at the apex, NXDOMAIN and NODATA where due, over UDP and TCP with EDNS0;
// other names are forwarded to upstream servers or refused.
//
// The pure part is Records, which turns the desired state into an immutable
// Zone, and (*Zone).Intersect, which the sync loop uses to withdraw names
// before their rules go. The Handler answers from the Zone it was last given
// (an atomic pointer swap, CoreDNS style); the Server runs it on UDP and TCP
// sockets.
package dns

import (
	"hash/fnv"
	"math"
	"net/netip"
	"slices"
	"strings"

	mdns "github.com/miekg/dns"

	"github.com/l4lb/l4lb/vip"
)

// TTL is the time to live, in seconds, of every record the server gives out,
// and of negative answers (the SOA minimum): VIPs come and go with tasks,
// so clients must not hold on to them.
const TTL = 5

// Zone is an immutable snapshot of the VIP zone: each named VIP's IPv4 and
// IPv6 addresses. Build it with Records; it is safe for concurrent use.
type Zone struct {
	origin string           // apex, lower case, fully qualified: "l4lb.thisdcos.directory."
	nodes  map[string]*node // lower-case FQDN -> node; empty non-terminals have a node without addresses
	count  int              // A and AAAA records
	serial uint32
	// over holds the names a Patch changed since nodes was built (a nil
	// node: removed), so that a change costs what it changes; nodes is
	// shared between versions and never written after build.
	over map[string]*node
}

// node returns the node of a canonical name, nil when it does not exist.
func (z *Zone) node(name string) *node {
	if n, ok := z.over[name]; ok {
		return n
	}
	return z.nodes[name]
}

// each calls fn for every node of the zone.
func (z *Zone) each(fn func(name string, n *node)) {
	for name, n := range z.over {
		if n != nil {
			fn(name, n)
		}
	}
	for name, n := range z.nodes {
		if _, ok := z.over[name]; !ok {
			fn(name, n)
		}
	}
}

// Patch returns the zone with the addresses of the given names (canonical
// or not) replaced: an empty list removes the name. Names outside the zone
// or invalid are ignored, as Records does. The cost is that of the names
// given: the new zone shares z's records and keeps the changes apart until
// they grow past about twice the square root of the zone, when they are
// merged. A removed name
// may leave its parent as an empty non-terminal until then.
func (z *Zone) Patch(names map[string][]netip.Addr) *Zone {
	if len(names) == 0 {
		return z
	}
	nz := &Zone{origin: z.origin, nodes: z.nodes, count: z.count, serial: z.serial + 1,
		over: make(map[string]*node, len(z.over)+len(names))}
	for k, v := range z.over {
		nz.over[k] = v
	}
	for raw, addrs := range names {
		name := fqdn(raw)
		if !inZone(name, z.origin) || name == z.origin {
			continue
		}
		if _, ok := mdns.IsDomainName(name); !ok {
			continue
		}
		if old := nz.node(name); old != nil {
			nz.count -= len(old.a) + len(old.aaaa)
		}
		n := newNode(name, addrs)
		if n == nil {
			if old := nz.node(name); old != nil && len(old.a)+len(old.aaaa) > 0 {
				nz.over[name] = nil
			}
			continue
		}
		nz.count += len(n.a) + len(n.aaaa)
		nz.over[name] = n
		for p := parent(name); p != "" && p != z.origin && inZone(p, z.origin); p = parent(p) {
			if nz.node(p) == nil {
				nz.over[p] = &node{}
			}
		}
	}
	// The overlay is copied at every patch and merging costs the whole
	// zone: bounding it by about the square root of the zone keeps both
	// near that, per change.
	if limit := max(64, 2*int(math.Sqrt(float64(len(nz.nodes))))); len(nz.over) > limit {
		addrs := map[string][]netip.Addr{}
		nz.each(func(name string, n *node) {
			if len(n.a)+len(n.aaaa) > 0 {
				addrs[name] = append(slices.Clone(n.a), n.aaaa...)
			}
		})
		serial := nz.serial
		nz = build(z.origin, addrs)
		nz.serial = serial
	}
	return nz
}

// newNode makes the node of a name with addresses; nil without any.
func newNode(name string, as []netip.Addr) *node {
	n := &node{}
	as = slices.Clone(as)
	slices.SortFunc(as, netip.Addr.Compare)
	for _, a := range slices.Compact(as) {
		a = a.Unmap()
		if a.Is4() {
			n.a = append(n.a, a)
			n.rrA = append(n.rrA, newA(name, a))
		} else {
			n.aaaa = append(n.aaaa, a)
			n.rrAAAA = append(n.rrAAAA, newAAAA(name, a))
		}
	}
	if len(n.a)+len(n.aaaa) == 0 {
		return nil
	}
	// Answers share these slices: clipped, an append to them copies.
	n.rrA, n.rrAAAA = slices.Clip(n.rrA), slices.Clip(n.rrAAAA)
	return n
}

// node holds the records of one name. The resource records are built once,
// with the lower-case owner name, and shared by every answer that spells the
// name that way; they are never modified after Records returns.
type node struct {
	a, aaaa     []netip.Addr // sorted, no duplicates
	rrA, rrAAAA []mdns.RR
}

// fqdn returns the canonical form of a zone or host name: lower case with
// the trailing dot.
func fqdn(name string) string {
	return mdns.Fqdn(strings.ToLower(name))
}

// normOrigin is the canonical apex of a zone name; empty means the default.
func normOrigin(zone string) string {
	zone = strings.TrimSpace(zone)
	if zone == "" || zone == "." {
		zone = vip.DefaultDomain
	}
	return fqdn(zone)
}

// inZone reports whether the canonical name is the origin or below it.
func inZone(name, origin string) bool {
	if len(name) == len(origin) {
		return name == origin
	}
	return len(name) > len(origin) && strings.HasSuffix(name, origin) && name[len(name)-len(origin)-1] == '.'
}

// Records builds the zone of the named VIPs of s under zone (the default
// l4lb.thisdcos.directory when empty). A name gets the address of each of
// its VIPs, one IPv4 and one IPv6 at most in a consistent state, whatever its
// ports and protocols. IP VIPs have no name and are skipped, and so are names
// outside the zone or not valid domain names.
func Records(s vip.State, zone string) *Zone {
	origin := normOrigin(zone)
	addrs := map[string][]netip.Addr{}
	for _, v := range s.VIPs {
		if v.Name == "" || !v.Addr.IsValid() {
			continue
		}
		name := fqdn(v.Name)
		if !inZone(name, origin) {
			continue
		}
		if _, ok := mdns.IsDomainName(name); !ok {
			continue
		}
		addrs[name] = append(addrs[name], v.Addr.Unmap())
	}
	return build(origin, addrs)
}

// build makes a zone from names (canonical, inside origin) and their
// addresses in any order, with duplicates.
func build(origin string, addrs map[string][]netip.Addr) *Zone {
	z := &Zone{origin: origin, nodes: map[string]*node{origin: {}}}
	for name, as := range addrs {
		n := newNode(name, as)
		if n == nil {
			continue
		}
		z.count += len(n.a) + len(n.aaaa)
		z.nodes[name] = n
	}
	// Every name between a VIP name and the apex exists, without records of
	// its own (an empty non-terminal): NODATA there, not NXDOMAIN (RFC 8020).
	for name := range addrs {
		if z.nodes[name] == nil {
			continue
		}
		for p := parent(name); p != "" && p != origin && inZone(p, origin); p = parent(p) {
			if z.nodes[p] == nil {
				z.nodes[p] = &node{}
			}
		}
	}
	z.serial = z.hash()
	return z
}

// parent strips the first label of a canonical name; "" for the root.
func parent(name string) string {
	i, end := mdns.NextLabel(name, 0)
	if end {
		return ""
	}
	return name[i:]
}

// hash is the SOA serial: it changes whenever the content does. Nobody
// transfers this zone, so it needs no order, only to tell versions apart.
func (z *Zone) hash() uint32 {
	h := fnv.New32a()
	for _, name := range z.Names() {
		h.Write([]byte(name))
		n := z.node(name)
		for _, a := range append(slices.Clone(n.a), n.aaaa...) {
			b, _ := a.MarshalBinary()
			h.Write(b)
		}
	}
	return h.Sum32()
}

func newA(name string, a netip.Addr) *mdns.A {
	return &mdns.A{
		Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: TTL},
		A:   a.AsSlice(),
	}
}

func newAAAA(name string, a netip.Addr) *mdns.AAAA {
	return &mdns.AAAA{
		Hdr:  mdns.RR_Header{Name: name, Rrtype: mdns.TypeAAAA, Class: mdns.ClassINET, Ttl: TTL},
		AAAA: a.AsSlice(),
	}
}

// Intersect returns the zone that keeps only the names and addresses present
// in both z and o, with z's origin. The sync loop publishes it before
// removing rules, so that a name is withdrawn before its rules are, and
// publishes the new zone once the new rules are in. A nil zone is empty.
func (z *Zone) Intersect(o *Zone) *Zone {
	if z == nil {
		return Records(vip.State{}, "")
	}
	addrs := map[string][]netip.Addr{}
	if o != nil {
		z.each(func(name string, n *node) {
			m := o.node(name)
			if m == nil {
				return
			}
			for _, a := range append(slices.Clone(n.a), n.aaaa...) {
				if slices.Contains(m.a, a) || slices.Contains(m.aaaa, a) {
					addrs[name] = append(addrs[name], a)
				}
			}
		})
	}
	return build(z.origin, addrs)
}

// Origin is the zone's apex, fully qualified and in lower case.
func (z *Zone) Origin() string { return z.origin }

// Len is the number of A and AAAA records.
func (z *Zone) Len() int {
	if z == nil {
		return 0
	}
	return z.count
}

// Serial is the SOA serial of this version of the zone.
func (z *Zone) Serial() uint32 { return z.serial }

// Names returns the names that have addresses, sorted.
func (z *Zone) Names() []string {
	var out []string
	z.each(func(name string, n *node) {
		if len(n.a)+len(n.aaaa) > 0 {
			out = append(out, name)
		}
	})
	slices.Sort(out)
	return out
}

// Lookup returns the IPv4 and IPv6 addresses of a name (any case, with or
// without the trailing dot); ok is false when the name has no address.
func (z *Zone) Lookup(name string) (v4, v6 []netip.Addr, ok bool) {
	n := z.node(fqdn(name))
	if n == nil || len(n.a)+len(n.aaaa) == 0 {
		return nil, nil, false
	}
	return slices.Clone(n.a), slices.Clone(n.aaaa), true
}
