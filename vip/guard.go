package vip

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// An IP VIP takes over its address on every agent: a route via lo, every
// other port of the address refused. A label must therefore never take an
// address that is not meant for VIPs (the hole of Kubernetes' CVE-2020-8554
// with externalIPs). The check has three parts, so that each can run where
// its facts are known:
//   - StaticReason: what no IP VIP may ever be (loopback, unspecified,
//     link-local, multicast, broadcast); the same everywhere;
//   - LocalNets.Reason: the agent's own addresses and the networks it is
//     directly connected to; only the agent knows them, so in cluster mode
//     each agent applies this part itself;
//   - Guard.Reason: both, plus the addresses of task hosts and backends and
//     the --ip-vip-ranges bound. Build (so Desired) consults it for every
//     IP VIP, Index for every IP VIP a change reaches (it keeps which
//     groups use each host and backend address); Guard.Filter applies it
//     to a state computed elsewhere.

// staticRefused are the ranges no IP VIP and no VIP pool may touch, with
// why.
var staticRefused = []struct {
	p      netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified address (0.0.0.0/8, \"this network\")"},
	{netip.MustParsePrefix("::/128"), "unspecified address"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback address"},
	{netip.MustParsePrefix("::1/128"), "loopback address"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local address"},
	{netip.MustParsePrefix("fe80::/10"), "link-local address"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast address"},
	{netip.MustParsePrefix("ff00::/8"), "multicast address"},
	{netip.MustParsePrefix("255.255.255.255/32"), "broadcast address"},
}

// StaticReason says why a may never be an IP VIP address (loopback,
// unspecified, link-local, multicast, broadcast), or "" when none of these
// applies.
func StaticReason(a netip.Addr) string {
	a = a.Unmap()
	if !a.IsValid() {
		return "not an address"
	}
	if a.Zone() != "" {
		return "address with a zone"
	}
	for _, r := range staticRefused {
		if r.p.Contains(a) {
			return r.reason
		}
	}
	return ""
}

// StaticPoolReason says why p may not be a named VIP pool: it overlaps
// loopback, unspecified, link-local, multicast or broadcast addresses. ""
// when it does not.
func StaticPoolReason(p netip.Prefix) string {
	p = p.Masked()
	for _, r := range staticRefused {
		if r.p.Overlaps(p) {
			return fmt.Sprintf("overlaps %s: %s", r.p, r.reason)
		}
	}
	return ""
}

// LocalNets is the agent's side of the check, read from its routing table:
// its own addresses (local and broadcast routes) and the networks it is
// directly connected to (scope link routes, and IPv6 routes without a
// gateway), without l4lb's own routes. Do not change the lists after the
// first Reason: they are indexed then.
type LocalNets struct {
	Own       []netip.Prefix // local (and broadcast) routes: addresses of the agent
	Connected []netip.Prefix // networks reached without a gateway

	once      sync.Once
	own, conn prefixIndex
}

// prefixIndex finds the longest prefix of a list that holds an address in
// one map lookup per prefix length, not one test per prefix: a host with a
// route per pod has thousands of connected /32s.
type prefixIndex struct {
	bits []int // the lengths present, longest first
	set  map[netip.Prefix]bool
}

func newPrefixIndex(ps []netip.Prefix) prefixIndex {
	ix := prefixIndex{set: make(map[netip.Prefix]bool, len(ps))}
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		ix.set[p] = true
		if !slices.Contains(ix.bits, p.Bits()) {
			ix.bits = append(ix.bits, p.Bits())
		}
	}
	slices.SortFunc(ix.bits, func(a, b int) int { return b - a })
	return ix
}

// lookup returns the longest prefix that holds a.
func (ix *prefixIndex) lookup(a netip.Addr) (netip.Prefix, bool) {
	for _, bits := range ix.bits {
		if bits > a.BitLen() {
			continue
		}
		p, err := a.Prefix(bits)
		if err == nil && ix.set[p] && p.Addr().Is4() == a.Is4() {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// Reason says why a may not be an IP VIP on this agent: it is one of the
// agent's addresses or inside a network it is directly connected to. ""
// when it may.
func (l *LocalNets) Reason(a netip.Addr) string {
	if l == nil {
		return ""
	}
	l.once.Do(func() { l.own, l.conn = newPrefixIndex(l.Own), newPrefixIndex(l.Connected) })
	a = a.Unmap()
	if p, ok := l.own.lookup(a); ok {
		if p.IsSingleIP() {
			return "an address of this agent"
		}
		return fmt.Sprintf("an address of this agent (local route %s)", p)
	}
	if p, ok := l.conn.lookup(a); ok {
		return fmt.Sprintf("inside %s, a network this agent is directly connected to", p)
	}
	return ""
}

// PoolReason says why p may not be a named VIP pool on this agent: it
// overlaps the agent's addresses or a network it is directly connected to.
func (l *LocalNets) PoolReason(p netip.Prefix) string {
	if l == nil {
		return ""
	}
	p = p.Masked()
	for _, o := range l.Own {
		if o.Overlaps(p) {
			return fmt.Sprintf("overlaps %s, addresses of this agent", o)
		}
	}
	for _, c := range l.Connected {
		if c.Overlaps(p) {
			return fmt.Sprintf("overlaps %s, a network this agent is directly connected to", c)
		}
	}
	return ""
}

// String lists the networks, for logs.
func (l *LocalNets) String() string {
	if l == nil {
		return "unknown"
	}
	join := func(ps []netip.Prefix) string {
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = p.String()
		}
		return strings.Join(s, ",")
	}
	return "own=" + join(l.Own) + " connected=" + join(l.Connected)
}

// Guard decides which addresses an IP VIP may take. The zero Guard applies
// the static rules only (and Desired adds the hosts of the desired state).
type Guard struct {
	// Ranges bounds IP VIPs (--ip-vip-ranges): when not empty, an IP VIP
	// outside every range is refused, whatever its family.
	Ranges []netip.Prefix
	// Local is the agent's addresses and connected networks, re-read every
	// sync; nil where the agent is not known (render, a controller).
	Local *LocalNets
}

// Host is the address of a task's host (Marathon's task "host", resolved
// when it is a name), which no IP VIP may take. See AppHosts.
type Host struct {
	Addr netip.Addr
	Name string // the host as the task gives it when a name; "" when it is Addr itself
	Task string // the task id (or its position)
	App  string
}

// use is how the host names its address in a refusal.
func (h Host) use() hostUse {
	name := h.Name
	if name == "" {
		name = h.Addr.String()
	}
	return hostUse{app: h.App, what: fmt.Sprintf("task host %s of task %s of app %s", name, h.Task, h.App)}
}

// hostUse is one use of an address by a task: as its host, or as a
// backend. When several tasks use an address, the refusal names the least
// use (task hosts first, then by app, then by text), so that the answer
// does not depend on the order the uses were seen in.
type hostUse struct {
	backend bool
	app     string
	what    string
}

func (u hostUse) compare(v hostUse) int {
	if u.backend != v.backend {
		if u.backend {
			return 1
		}
		return -1
	}
	return cmp.Or(strings.Compare(u.app, v.app), strings.Compare(u.what, v.what))
}

func backendUse(b Backend) hostUse {
	return hostUse{backend: true, app: b.App, what: fmt.Sprintf("backend %s of task %s of app %s", b.AddrPort(), b.Task, b.App)}
}

// Hosts maps the addresses of task hosts and backends to a description
// ("task host of task t of app /a"), for Guard.Reason.
type Hosts map[netip.Addr]string

// Add records a host address with its description; the first one stays.
func (h Hosts) Add(a netip.Addr, what string) {
	a = a.Unmap()
	if _, ok := h[a]; !ok && a.IsValid() {
		h[a] = what
	}
}

// Reason says why a may not be an IP VIP address, or "" when it may. hosts
// are the addresses of the task hosts and backends of the desired state (nil
// for none).
func (g Guard) Reason(a netip.Addr, hosts Hosts) string {
	return g.reason(a, func(a netip.Addr) (string, bool) {
		what, ok := hosts[a]
		return what, ok
	})
}

// reason is Reason with the hosts as a lookup: taken says which task host
// or backend holds an address (nil for none). It is asked only when the
// static and local checks pass.
func (g Guard) reason(a netip.Addr, taken func(netip.Addr) (string, bool)) string {
	if r := StaticReason(a); r != "" {
		return r
	}
	a = a.Unmap()
	if r := g.Local.Reason(a); r != "" {
		return r
	}
	if taken != nil {
		if what, ok := taken(a); ok {
			return "the address of " + what
		}
	}
	if r := g.RangeReason(a); r != "" {
		return r
	}
	return ""
}

// RangeReason says why a is outside --ip-vip-ranges, or "" when it is
// inside or no range is set.
func (g Guard) RangeReason(a netip.Addr) string {
	if len(g.Ranges) == 0 {
		return ""
	}
	a = a.Unmap()
	for _, p := range g.Ranges {
		if p.Contains(a) {
			return ""
		}
	}
	s := make([]string, len(g.Ranges))
	for i, p := range g.Ranges {
		s[i] = p.String()
	}
	return "outside --ip-vip-ranges " + strings.Join(s, ",")
}

// Filter applies the guard to a desired state that was computed elsewhere
// (in cluster mode, by the controller): an agent drops the IP VIPs that it
// refuses, whatever the state says. The hosts are the state's backends.
// Each refusal is a problem per app that declares the VIP, with the VIP's
// label (ip:port/proto) in place of the app's label key, which the state
// does not keep.
func (g Guard) Filter(s State) (State, []Problem) {
	hosts := Hosts{}
	for _, v := range s.VIPs {
		for _, b := range v.Backends {
			hosts.Add(b.Addr, fmt.Sprintf("backend %s of task %s of app %s", b.AddrPort(), b.Task, b.App))
		}
	}
	var problems []Problem
	kept := make([]VIP, 0, len(s.VIPs))
	for _, v := range s.VIPs {
		if v.Name == "" {
			if reason := g.Reason(v.Addr, hosts); reason != "" {
				for _, app := range v.Apps {
					problems = append(problems, Problem{App: app, Label: v.String(), Refused: v.Addr.String(),
						Reason: fmt.Sprintf("IP VIP address %s refused: %s", v.Addr, reason)})
				}
				continue
			}
		}
		kept = append(kept, v)
	}
	s.VIPs = kept
	return s, problems
}
