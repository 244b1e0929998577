package nat

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/vip"
)

// Snapshot is l4lb's table as the kernel holds it, decoded for an operator
// (l4lb explain): which VIP elements there are, which backend fills which
// slot, which addresses are refused, and the text of every rule. Kernel's
// Snapshot reads it; it is plain data.
type Snapshot struct {
	Table  string
	Exists bool                               // the table is in the kernel
	Pools  []netip.Prefix                     // prefixes the hooked chains refuse (the VIP pools)
	IPVIPs []netip.Addr                       // addresses of ipvips4/ipvips6: every other port refused
	VIPs   map[vip.Key]SnapVIP                // elements of vips4/vips6
	Slots  map[vip.Key]map[int]netip.AddrPort // backend map: slot (as the map's key holds it) -> backend
	Chains map[string][]SnapRule              // rules of each chain of the table, in order
	Hooks  map[string]string                  // hook of each base chain ("output", ...)
}

// SnapVIP is one element of a VIP set.
type SnapVIP struct {
	Set     string // vips4 or vips6
	Comment string
}

// SnapRule is one rule of a chain: its handle and its nft text.
type SnapRule struct {
	Handle uint64
	Text   string
}

// Element returns the VIP set's element for k, and the text nft would
// list it with (without its comment).
func (s *Snapshot) Element(k vip.Key) (SnapVIP, string, bool) {
	e, ok := s.VIPs[k]
	if !ok {
		return SnapVIP{}, "", false
	}
	return e, fmt.Sprintf("%s . %s . %d", k.Addr, k.Proto, k.Port), true
}

// Count says which backend count the kernel's slots give the VIP k: that
// of the slot range holding most of them (0 when it has none), with the
// backend in each slot of that range (invalid where missing). Strays are
// its slots outside that range, sorted.
func (s *Snapshot) Count(k vip.Key) (n int, slots []netip.AddrPort, strays []int) {
	per := map[int]int{}
	for slot := range s.Slots[k] {
		if m, _ := SlotCount(slot); m > 0 {
			per[m]++
			if per[m] > per[n] || (per[m] == per[n] && m < n) {
				n = m
			}
		}
	}
	slots = make([]netip.AddrPort, n)
	for slot, be := range s.Slots[k] {
		if m, i := SlotCount(slot); m == n && n > 0 {
			slots[i] = be
		} else {
			strays = append(strays, slot)
		}
	}
	slices.Sort(strays)
	return n, slots, strays
}

// LBRule returns the handle and text of chain lb's rule for VIPs of a's
// family with n backends, when the chain has it.
func (s *Snapshot) LBRule(a netip.Addr, n int) (SnapRule, bool) {
	want := DNATRuleText(a, n)
	for _, r := range s.Chains[chainLB] {
		if r.Text == want {
			return r, true
		}
	}
	return SnapRule{}, false
}

// Refuses reports why the hooked chains refuse traffic to a, when no VIP
// element matches: a pool that holds it, or the IP VIP set. Empty when
// l4lb leaves such traffic alone.
func (s *Snapshot) Refuses(a netip.Addr) string {
	for _, p := range s.Pools {
		if p.Contains(a) {
			return fmt.Sprintf("%s daddr %s goto %s", ipOf(a.Is6()), p, chainRefuse)
		}
	}
	if slices.Contains(s.IPVIPs, a) {
		set := setIPVIPs4
		if a.Is6() {
			set = setIPVIPs6
		}
		return fmt.Sprintf("%s daddr @%s goto %s", ipOf(a.Is6()), set, chainRefuse)
	}
	return ""
}

// RuleText returns the text of the rule with the handle in the chain.
func (s *Snapshot) RuleText(chain string, handle uint64) (string, bool) {
	for _, r := range s.Chains[chain] {
		if r.Handle == handle {
			return r.Text, true
		}
	}
	return "", false
}

// BackendMap is the name of the backend map of an address's family.
func BackendMap(a netip.Addr) string {
	if a.Is6() {
		return mapBackends6
	}
	return mapBackends4
}

// RefuseChain is the chain that rejects traffic l4lb refuses.
const RefuseChain = chainRefuse

// LBChain is the chain that DNATs a VIP's new connections.
const LBChain = chainLB

// knownRules returns the rules l4lb writes into a chain of that name, given
// the pools the hooked chains refuse, with their texts.
func knownRules(chain string, pools []netip.Prefix) ([]rule, bool) {
	r := &Ruleset{}
	for _, p := range pools {
		if p.Addr().Is4() && !r.Pool4.IsValid() {
			r.Pool4 = p
		} else if p.Addr().Is6() && !r.Pool6.IsValid() {
			r.Pool6 = p
		}
	}
	for _, c := range r.chains() {
		if c.name == chain {
			return c.rules, true
		}
	}
	return nil, false
}
