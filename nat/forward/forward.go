// Package forward lets l4lb's VIP traffic through an iptables FORWARD chain
// whose policy drops it.
//
// l4lb DNATs VIP traffic in its own nftables table at prerouting; the
// forwarded packets then still traverse iptables' filter FORWARD chain,
// whether iptables runs on nftables (iptables-nft, the `ip filter` and
// `ip6 filter` tables) or on the legacy x_tables (iptables-legacy). Docker
// sets that chain's policy to DROP, which black-holes VIP traffic from
// containers on other bridges (Mesos, CNI) to backends on other hosts. An
// accept in l4lb's own table cannot help: an accept ends only the base chain
// it is in, and iptables' chain still drops the packet afterwards.
//
// So, only when the FORWARD chain of a family and backend blocks (policy
// DROP, or a last rule that drops or rejects everything), l4lb adds a chain
// of its own, L4LB-FORWARD, and a jump to it at the top of FORWARD:
//
//	-A FORWARD -m comment --comment "l4lb: accept connections to VIPs that l4lb DNATed" -j L4LB-FORWARD
//	-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 11.0.0.0/8 -m comment --comment "l4lb: VIP pool" -j ACCEPT
//	-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 10.21.1.15 -m comment --comment "l4lb: IP VIP" -j ACCEPT
//
// Connections are recognised by conntrack, not by marks: a DNATed
// connection whose original destination is a VIP. That one match covers both
// directions (and the ICMP errors related to the connection), and nothing
// else: traffic to a backend's own address stays under the host's policy.
// When the chain stops blocking, l4lb removes what it added; Cleanup removes
// it for good. Rules that are not l4lb's are never changed.
//
// The decisions (what to want, whether a chain blocks, what differs) are
// pure functions over the text of `iptables -S`; iptables.go is the only
// file that runs iptables (through github.com/coreos/go-iptables).
package forward

import (
	"context"
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/nat"
)

// Chain is l4lb's chain in the filter table, of every family and backend.
const Chain = "L4LB-FORWARD"

const (
	tableFilter  = "filter"
	chainForward = "FORWARD"

	commentJump  = "l4lb: accept connections to VIPs that l4lb DNATed"
	commentPool  = "l4lb: VIP pool"
	commentIPVIP = "l4lb: IP VIP"
)

// Interface is what the sync loop holds.
type Interface interface {
	// Sync makes every iptables FORWARD chain that blocks forwarded traffic
	// accept l4lb's connections to want, and removes l4lb's rules where the
	// chain no longer blocks. It reads the chains every time (Docker may
	// change the policy at any moment) and changes only what differs.
	Sync(ctx context.Context, want Want) (Result, error)
	// Cleanup removes l4lb's chain and jump from every backend and family.
	Cleanup(ctx context.Context) error
}

// Want is what l4lb's connections are recognised by: their original
// destination is in a VIP pool or is an IP VIP.
type Want struct {
	Pool4, Pool6 netip.Prefix // VIP pools; an invalid prefix is no pool
	IPVIPs       []netip.Addr // IP VIP addresses; those inside a pool are covered by it
}

// WantFor returns what the compiled ruleset's connections are recognised
// by.
func WantFor(r *nat.Ruleset) Want {
	if r == nil {
		return Want{}
	}
	return Want{Pool4: r.Pool4, Pool6: r.Pool6, IPVIPs: r.IPVIPs}
}

// Result says what a Sync did.
type Result struct {
	// Active lists the backends ("iptables-nft", "ip6tables-legacy", ...)
	// whose FORWARD chain blocks and where l4lb's rules are in place.
	Active []string
	// Unchecked lists the backends whose filter table is in use but whose
	// iptables binary is missing, so that l4lb cannot see their policy.
	Unchecked []string
	// Changes counts the iptables commands that changed a chain.
	Changes int
}

// Changed reports whether the Sync changed any chain.
func (r Result) Changed() bool { return r.Changes > 0 }

// rule is one rule of l4lb's chain: accept DNATed connections whose
// original destination is in dest.
type rule struct {
	dest    netip.Prefix
	comment string
}

// rules returns l4lb's chain for one family: the pool first, then the IP
// VIPs outside it, in address order and without duplicates. An empty list
// means l4lb has nothing of that family to let through.
func (w Want) rules(v6 bool) []rule {
	pool := w.Pool4
	if v6 {
		pool = w.Pool6
	}
	var out []rule
	if pool.IsValid() && pool.Addr().Is6() == v6 {
		out = append(out, rule{dest: pool.Masked(), comment: commentPool})
	}
	var addrs []netip.Addr
	for _, a := range w.IPVIPs {
		a = a.Unmap()
		if !a.IsValid() || a.Is6() != v6 || (len(out) > 0 && out[0].dest.Contains(a)) {
			continue
		}
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range slices.Compact(addrs) {
		out = append(out, rule{dest: netip.PrefixFrom(a, a.BitLen()), comment: commentIPVIP})
	}
	return out
}

// spec is the rule's specification as iptables takes it and as
// `iptables -S` prints it (after "-A L4LB-FORWARD").
func (r rule) spec() []string {
	return []string{"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", prefixArg(r.dest),
		"-m", "comment", "--comment", r.comment, "-j", "ACCEPT"}
}

// jumpSpec is the rule in FORWARD that jumps to l4lb's chain.
func jumpSpec() []string {
	return []string{"-m", "comment", "--comment", commentJump, "-j", Chain}
}

// prefixArg writes a prefix as iptables prints it: a single address
// without its length.
func prefixArg(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
