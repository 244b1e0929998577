package nat

import (
	"fmt"
	"net/netip"
	"slices"
)

// The static part of the table, described once and rendered twice: as nft
// text (text.go) and as netlink expressions (kernel.go).

// setKind says what a set holds.
type setKind uint8

const (
	kindVIPs     setKind = iota // addr . proto . port, with a comment
	kindBackends                // addr . proto . port . slot : addr . port
	kindAddrs                   // addr
	kindPairs                   // addr . addr
)

type setDecl struct {
	name string
	kind setKind
	v6   bool
	typ  string // the nft declaration line
}

func (r *Ruleset) setDecls() []setDecl {
	return []setDecl{
		{setVIPs4, kindVIPs, false, "type ipv4_addr . inet_proto . inet_service"},
		{setVIPs6, kindVIPs, true, "type ipv6_addr . inet_proto . inet_service"},
		{mapBackends4, kindBackends, false, "typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport"},
		{mapBackends6, kindBackends, true, "typeof ip6 daddr . meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport"},
		{setIPVIPs4, kindAddrs, false, "type ipv4_addr"},
		{setIPVIPs6, kindAddrs, true, "type ipv6_addr"},
		{setHairpin4, kindPairs, false, "type ipv4_addr . ipv4_addr"},
		{setHairpin6, kindPairs, true, "type ipv6_addr . ipv6_addr"},
	}
}

// isMap reports whether the set is declared with "map".
func (d setDecl) isMap() bool { return d.kind == kindBackends }

// ruleKind is the shape of a rule.
type ruleKind uint8

const (
	ruleVIPLookup    ruleKind = iota // daddr . l4proto . dport @set goto lb
	ruleRefusePrefix                 // daddr in prefix: goto refuse
	ruleRefuseSet                    // daddr in @set: goto refuse
	ruleDNAT                         // dnat to daddr . l4proto . dport . numgen mod n offset SlotBase(n) map @set
	ruleGotoRefuse                   // goto refuse
	ruleRejectTCP                    // tcp: reject with tcp reset
	ruleReject                       // reject (icmpx port unreachable)
	ruleHairpin                      // DNATed, not to lo, saddr . daddr in @set: masquerade
)

type rule struct {
	kind   ruleKind
	v6     bool
	set    string
	prefix netip.Prefix
	n      int
	text   string
}

type chainDecl struct {
	name     string
	hook     string // empty for regular chains
	priority string // dstnat or srcnat
	prio     int
	rules    []rule
	counts   []int // chain lb: the backend counts it has a rule for
}

func ipOf(v6 bool) string {
	if v6 {
		return "ip6"
	}
	return "ip"
}

func lookupRule(v6 bool, set string) rule {
	return rule{kind: ruleVIPLookup, v6: v6, set: set,
		text: fmt.Sprintf("%s daddr . meta l4proto . th dport @%s goto %s", ipOf(v6), set, chainLB)}
}

func refusePrefixRule(p netip.Prefix) rule {
	return rule{kind: ruleRefusePrefix, v6: p.Addr().Is6(), prefix: p,
		text: fmt.Sprintf("%s daddr %s goto %s", ipOf(p.Addr().Is6()), p, chainRefuse)}
}

func refuseSetRule(v6 bool, set string) rule {
	return rule{kind: ruleRefuseSet, v6: v6, set: set,
		text: fmt.Sprintf("%s daddr @%s goto %s", ipOf(v6), set, chainRefuse)}
}

func dnatRule(v6 bool, n int, set string) rule {
	ip := ipOf(v6)
	offset := "" // nft prints no "offset 0"
	if b := SlotBase(n); b > 0 {
		offset = fmt.Sprintf(" offset %d", b)
	}
	return rule{kind: ruleDNAT, v6: v6, n: n, set: set,
		text: fmt.Sprintf("dnat %s to %s daddr . meta l4proto . th dport . numgen random mod %d%s map @%s", ip, ip, n, offset, set)}
}

// DNATRuleText is the text of chain lb's rule for VIPs of the address's
// family with n active backends.
func DNATRuleText(a netip.Addr, n int) string {
	return dnatRule(a.Is6(), n, BackendMap(a)).text
}

func hairpinRule(v6 bool, set string) rule {
	ip := ipOf(v6)
	return rule{kind: ruleHairpin, v6: v6, set: set,
		text: fmt.Sprintf("ct status dnat oif != \"lo\" %s saddr . %s daddr @%s masquerade", ip, ip, set)}
}

// dispatchRules are the rules of both hooked dstnat chains: one lookup per
// family, then refusal of anything else aimed at VIP addresses.
func (r *Ruleset) dispatchRules() []rule {
	rules := []rule{lookupRule(false, setVIPs4), lookupRule(true, setVIPs6)}
	if r.Pool4.IsValid() {
		rules = append(rules, refusePrefixRule(r.Pool4))
	}
	rules = append(rules, refuseSetRule(false, setIPVIPs4))
	if r.Pool6.IsValid() {
		rules = append(rules, refusePrefixRule(r.Pool6))
	}
	return append(rules, refuseSetRule(true, setIPVIPs6))
}

// chains lists every chain of the ruleset: the hooked chains, refuse, and
// lb with a rule for each backend count in use.
func (r *Ruleset) chains() []chainDecl {
	out := []chainDecl{
		{name: chainPrerouting, hook: "prerouting", priority: "dstnat", prio: -100, rules: r.dispatchRules()},
		{name: chainOutput, hook: "output", priority: "-100", prio: -100, rules: r.dispatchRules()},
		{name: chainPostrouting, hook: "postrouting", priority: "srcnat", prio: 100,
			rules: []rule{hairpinRule(false, setHairpin4), hairpinRule(true, setHairpin6)}},
		{name: chainRefuse, rules: []rule{
			{kind: ruleRejectTCP, text: "meta l4proto tcp reject with tcp reset"},
			{kind: ruleReject, text: "reject"},
		}},
	}
	return append(out, lbChainDecl(r.LBCounts()))
}

// lbChainDecl is chain lb for the backend counts (ascending): the IPv4
// rules, the IPv6 rules, then refuse for a VIP without any slot.
func lbChainDecl(counts []int) chainDecl {
	c := chainDecl{name: chainLB, counts: slices.Clip(counts)}
	for _, v6 := range []bool{false, true} {
		set := mapBackends4
		if v6 {
			set = mapBackends6
		}
		for _, n := range counts {
			c.rules = append(c.rules, dnatRule(v6, n, set))
		}
	}
	c.rules = append(c.rules, rule{kind: ruleGotoRefuse, text: "goto " + chainRefuse})
	return c
}
