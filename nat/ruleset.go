// Package nat compiles the desired state into l4lb's nftables ruleset and
// programs it into the kernel over netlink.
//
// The layout (DESIGN section 2) has no per-VIP chains or sets, and no
// verdict in any large map, so that the per-packet cost and the cost of a
// change do not grow with the number of VIPs:
//
//	set vips4 { type ipv4_addr . inet_proto . inet_service }   VIP addresses, ports and protocols
//	map be4   { typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport }
//	chain lb  { dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 offset 3 map @be4 ... }
//
// One shared backend map is keyed by VIP, protocol, port and slot. A VIP
// with N active backends fills the slots SlotBase(N) .. SlotBase(N)+N-1,
// so the slot ranges of different counts never overlap; chain lb has one
// DNAT rule per backend count in use, and a packet falls through the rules
// of other counts (their lookup misses) to the rule of its own, or to
// refuse when it has no slot. A change of count is data elements only: no
// verdict changes, so the kernel does not validate the table again.
// Compile is pure; the kernel adapter lives in kernel.go.
package nat

import (
	"hash/maphash"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/l4lb/l4lb/vip"
)

// Names of the objects in l4lb's table. The table is l4lb's alone; the
// names carry no prefix.
const (
	DefaultTable = "l4lb"

	setVIPs4     = "vips4"
	setVIPs6     = "vips6"
	mapBackends4 = "be4"
	mapBackends6 = "be6"
	setIPVIPs4   = "ipvips4"
	setIPVIPs6   = "ipvips6"
	setHairpin4  = "hairpin4"
	setHairpin6  = "hairpin6"

	chainPrerouting  = "nat-prerouting"
	chainOutput      = "nat-output"
	chainPostrouting = "nat-postrouting"
	chainRefuse      = "refuse"
	chainLB          = "lb"
)

// MaxComment is the longest comment nftables accepts.
const MaxComment = 128

// Ruleset is the compiled form of the desired state: plain data that the
// text form and the kernel adapter both render.
type Ruleset struct {
	Table   string
	Pool4   netip.Prefix
	Pool6   netip.Prefix
	VIPs    []VIPElem    // elements of vips4 and vips6 with their backends, sorted by key
	IPVIPs  []netip.Addr // addresses of IP VIPs: other ports on them are refused
	Hairpin []netip.Addr // addresses of active backends, masqueraded when they reach themselves

	gen      uint64 // generation, for deltas; 0 for a ruleset built by hand
	delta    *delta // how it differs from the ruleset it was patched from; nil: unknown
	lbCounts []int  // cached LBCounts; nil: compute
}

// VIPElem is one VIP: its element in the VIP set, and its N active
// backends, which fill slots SlotBase(N) .. SlotBase(N)+N-1 of the backend
// map (none: chain lb finds no slot and refuses).
type VIPElem struct {
	Key      vip.Key
	Comment  string
	Backends []netip.AddrPort // slot SlotBase(N)+i holds Backends[i]
	sum      uint64           // fingerprint of Comment and Backends, set by Sort
}

// MaxBackends bounds the backend count l4lb reads back from slots: a slot
// beyond SlotBase(MaxBackends+1) can only be a stray (written by hand).
const MaxBackends = 1 << 16

// SlotBase is the first backend-map slot of a VIP with n active backends:
// n(n-1)/2, the offset of numgen in chain lb's rule for n. The ranges of
// the counts 1, 2, 3, ... are [0], [1,2], [3,5], ...: they never overlap.
func SlotBase(n int) int { return n * (n - 1) / 2 }

// SlotCount is the inverse of SlotBase: the backend count whose range holds
// the slot, and the slot's index in it; n is 0 for a slot outside every
// range up to MaxBackends.
func SlotCount(slot int) (n, i int) {
	if slot < 0 || slot >= SlotBase(MaxBackends+1) {
		return 0, 0
	}
	n = int((1 + math.Sqrt(1+8*float64(slot))) / 2)
	for n > 1 && SlotBase(n) > slot {
		n--
	}
	for SlotBase(n+1) <= slot {
		n++
	}
	return n, slot - SlotBase(n)
}

// BackendElem is one active backend of a VIP in a slot of the backend map
// (the slot as the map's key holds it: SlotBase(N) + index).
type BackendElem struct {
	VIP     vip.Key
	Slot    int
	Backend netip.AddrPort
}

// Backends lists the elements of the backend maps, by VIP and slot.
func (r *Ruleset) Backends() []BackendElem {
	var out []BackendElem
	for _, v := range r.VIPs {
		for i, b := range v.Backends {
			out = append(out, BackendElem{VIP: v.Key, Slot: SlotBase(len(v.Backends)) + i, Backend: b})
		}
	}
	return out
}

// Compile turns the desired state into the ruleset. Active backends take
// slots 0..N-1 in address order.
func Compile(s vip.State, table string) *Ruleset {
	if table == "" {
		table = DefaultTable
	}
	r := &Ruleset{Table: table, Pool4: s.Pool4.Masked(), Pool6: s.Pool6.Masked(), gen: generations.Add(1)}
	ipvips := map[netip.Addr]bool{}
	hairpin := map[netip.Addr]bool{}
	r.VIPs = make([]VIPElem, 0, len(s.VIPs))
	for _, v := range s.VIPs {
		e := compileVIP(v)
		for _, b := range e.Backends {
			hairpin[b.Addr()] = true
		}
		r.VIPs = append(r.VIPs, e)
		if v.Name == "" {
			ipvips[v.Addr] = true
		}
	}
	r.IPVIPs = sortedAddrs(ipvips)
	r.Hairpin = sortedAddrs(hairpin)
	r.Sort()
	r.lbCounts = append([]int{}, r.LBCounts()...)
	return r
}

// compileVIP is one VIP's element: its active backends in address order.
func compileVIP(v vip.VIP) VIPElem {
	e := VIPElem{Key: v.Key(), Comment: Comment(v)}
	n := 0
	for _, b := range v.Backends {
		if b.State == vip.Active {
			n++
		}
	}
	if n == 0 {
		return e
	}
	e.Backends = make([]netip.AddrPort, 0, n)
	for _, b := range v.Backends {
		if b.State == vip.Active {
			e.Backends = append(e.Backends, b.AddrPort())
		}
	}
	return e
}

// hasher hands out a maphash seeded for fingerprints.
type hasher struct{ h *maphash.Hash }

func (h *hasher) get() *maphash.Hash {
	if h.h == nil {
		h.h = &maphash.Hash{}
		h.h.SetSeed(sumSeed)
	}
	return h.h
}

// Sort puts the VIPs and addresses in canonical order and fingerprints each
// VIP, so that the kernel adapter compares a VIP with what it programmed in
// one word. Compile's output is sorted; a Ruleset built by hand must be
// sorted before use and not changed afterwards.
func (r *Ruleset) Sort() {
	slices.SortFunc(r.VIPs, func(a, b VIPElem) int { return a.Key.Compare(b.Key) })
	slices.SortFunc(r.IPVIPs, netip.Addr.Compare)
	slices.SortFunc(r.Hairpin, netip.Addr.Compare)
	var h maphash.Hash
	h.SetSeed(sumSeed)
	for i := range r.VIPs {
		r.VIPs[i].sum = r.VIPs[i].fingerprint(&h)
	}
}

var sumSeed = maphash.MakeSeed()

// Fingerprint summarizes the whole ruleset (after Sort): two rulesets with
// the same fingerprint program the same table. Within one process only.
func (r *Ruleset) Fingerprint() uint64 {
	var h maphash.Hash
	h.SetSeed(sumSeed)
	h.WriteString(r.Table)
	h.WriteString(r.Pool4.String())
	h.WriteString(r.Pool6.String())
	var b [8]byte
	for _, v := range r.VIPs {
		k := vipKeyBytes(v.Key)
		h.Write(k)
		hostOrder.PutUint64(b[:], v.sum)
		h.Write(b[:])
	}
	for _, list := range [][]netip.Addr{r.IPVIPs, r.Hairpin} {
		h.WriteByte('|')
		for _, a := range list {
			h.Write(addrBytes(a))
		}
	}
	return h.Sum64()
}

func (e *VIPElem) fingerprint(h *maphash.Hash) uint64 {
	h.Reset()
	h.WriteString(e.Comment)
	var b [18]byte
	for _, ap := range e.Backends {
		a := ap.Addr().As16()
		copy(b[:], a[:])
		b[16], b[17] = byte(ap.Port()>>8), byte(ap.Port())
		h.Write(b[:])
	}
	return h.Sum64()
}

func sortedAddrs(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// StandingCounts is the number of backend counts (1 to StandingCounts)
// whose rules chain lb always has, in use or not. Adding a rule that looks
// up the backend map makes the kernel walk every element of the map (about
// 120 ms at 500,000), while the rules of the table's creation cost nothing
// (the maps are empty then): so the counts most VIPs have never pay it when
// they first come into use, as a health flip or a task added to a VIP of 10
// would. A connection to a VIP of N backends falls through the rules of the
// smaller counts first (BenchmarkNewConnsByCounts: no difference measured
// between 1 and 30 rules before it).
const StandingCounts = 16

// LBCounts returns the backend counts chain lb has a DNAT rule for,
// ascending: 1 to StandingCounts, and every larger count in use.
func (r *Ruleset) LBCounts() []int {
	if r.lbCounts != nil {
		return r.lbCounts
	}
	seen := map[int]bool{}
	for _, v := range r.VIPs {
		seen[len(v.Backends)] = true
	}
	return lbCounts(seen)
}

// lbCounts is the counts of chain lb when the counts in use are those
// that inUse holds true.
func lbCounts(inUse map[int]bool) []int {
	out := make([]int, 0, StandingCounts+len(inUse))
	for n := 1; n <= StandingCounts; n++ {
		out = append(out, n)
	}
	for n, ok := range inUse {
		if ok && n > StandingCounts {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// Comment is the audit comment of a VIP: "name:port/proto" first, then the
// ids of the apps that declare it, cut to fit nftables' 128 bytes.
func Comment(v vip.VIP) string {
	s := v.String()
	if len(v.Apps) > 0 {
		s += " " + strings.Join(v.Apps, ",")
	}
	return truncate(s, MaxComment)
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}
