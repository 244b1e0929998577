// Package explain answers "where does traffic to X go, and why" (DESIGN
// section 11): it puts the daemon's view of a VIP (GET /v1/vips) next to
// what the kernel holds (l4lb's table, the conntrack table) and decides
// whether the target is served, refused or unknown to l4lb.
//
// Decide and the formatting are pure and tested without root; the only
// kernel-facing part is the trace (tracenl.go): a probe connection whose
// packets carry nftrace, and the trace events the kernel reports for it.
package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/api"
	"github.com/l4lb/l4lb/vip"
)

// Verdict is what happens to new connections to the target.
type Verdict string

// Verdicts, and the exit status of `l4lb explain` for each.
const (
	Served  Verdict = "served"  // DNATed to an active backend
	Refused Verdict = "refused" // rejected at once (TCP reset, ICMP port unreachable)
	Unknown Verdict = "unknown" // not l4lb's: no such name, or an address l4lb leaves alone
)

// ExitCode is the exit status of `l4lb explain` for the verdict.
func (v Verdict) ExitCode() int {
	switch v {
	case Served:
		return 0
	case Refused:
		return 1
	}
	return 2
}

// Target is what the operator asks about.
type Target struct {
	Text  string     // as given
	Name  string     // lower case, no trailing dot; empty for an address
	Addr  netip.Addr // valid for an address
	Port  uint16
	Proto vip.Proto // 0: every protocol
}

// ParseTarget reads NAME:PORT, IP:PORT, [IPv6]:PORT or IPv6:PORT (split at
// the last colon, as VIP labels are), and a protocol: "", "tcp" or "udp".
func ParseTarget(text, proto string) (Target, error) {
	t := Target{Text: text}
	switch strings.ToLower(proto) {
	case "":
	case "tcp":
		t.Proto = vip.TCP
	case "udp":
		t.Proto = vip.UDP
	default:
		return t, fmt.Errorf("protocol %q: want tcp or udp", proto)
	}
	i := strings.LastIndexByte(text, ':')
	if i <= 0 {
		return t, fmt.Errorf("target %q: want NAME:PORT or IP:PORT", text)
	}
	host, portText := text[:i], text[i+1:]
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return t, fmt.Errorf("target %q: port %q is not a number in 1..65535", text, portText)
	}
	t.Port = uint16(port)
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")); err == nil {
		if a.Zone() != "" {
			return t, fmt.Errorf("target %q: zones are not VIP addresses", text)
		}
		t.Addr = a.Unmap()
		return t, nil
	}
	if strings.ContainsAny(host, ":[]% \t/") {
		return t, fmt.Errorf("target %q: %q is neither an address nor a name", text, host)
	}
	t.Name = strings.TrimSuffix(strings.ToLower(host), ".")
	return t, nil
}

// Report is the answer: one entry per VIP key (address, protocol, port)
// the target stands for, and the overall verdict.
type Report struct {
	Target  string  `json:"target"`
	Table   string  `json:"table"`
	Verdict Verdict `json:"verdict"`
	Reason  string  `json:"reason,omitempty"`
	Entries []Entry `json:"vips"`
}

// Entry is one VIP key, as the daemon and the kernel see it.
type Entry struct {
	VIP      string   `json:"vip"` // name:port or ip:port; for an unknown port, the address and port asked for
	Name     string   `json:"name,omitempty"`
	Protocol string   `json:"protocol"`
	IP       string   `json:"ip"`
	Port     uint16   `json:"port"`
	Apps     []string `json:"apps"`
	Verdict  Verdict  `json:"verdict"`
	Reason   string   `json:"reason,omitempty"`
	// Element is the VIP's element in the VIP set; nil when the kernel
	// has none (the port is not a VIP port).
	Element *Element `json:"element,omitempty"`
	// Count is the number of backends the kernel's slots for the VIP are
	// laid out for (the slots SlotBase(Count) .. SlotBase(Count)+Count-1
	// of the backend map); 0 when it has none.
	Count int `json:"count"`
	// Refusal is the rule of the hooked chains that refuses the target
	// when no element matches it.
	Refusal string `json:"refusal,omitempty"`
	// Chain is where a new connection ends: lb (DNAT) or refuse; Rules
	// are the rules that decide, as the kernel holds them: chain lb's rule
	// for the VIP's count (all of lb's rules when it lacks one), or
	// refuse's.
	Chain    string    `json:"chain,omitempty"`
	Rules    []string  `json:"rules,omitempty"`
	Backends []Backend `json:"backends"`
	// Warnings say where the daemon and the kernel disagree.
	Warnings []string `json:"warnings,omitempty"`
	Trace    *Trace   `json:"trace,omitempty"`
}

// Key is the entry's kernel key.
func (e Entry) Key() vip.Key {
	a, _ := netip.ParseAddr(e.IP)
	p := vip.TCP
	if e.Protocol == "udp" {
		p = vip.UDP
	}
	return vip.Key{Addr: a, Proto: p, Port: e.Port}
}

// Element is a VIP's element of vips4 or vips6.
type Element struct {
	Set     string `json:"set"`
	Text    string `json:"text"` // the key, as nft lists it
	Comment string `json:"comment"`
}

// Backend is one backend of the VIP.
type Backend struct {
	IP    string `json:"ip"`
	Port  uint16 `json:"port"`
	State string `json:"state"` // active, starting, draining, unhealthy; "kernel only" for a slot the daemon does not know
	Task  string `json:"task,omitempty"`
	App   string `json:"app,omitempty"`
	// Map and Slot place it in the backend map; Slot is nil when it is not
	// there (it gets no new connections).
	Map  string `json:"map,omitempty"`
	Slot *int   `json:"slot"`
	// Conntrack counts the tracked flows from the VIP to this backend.
	Conntrack int `json:"conntrack"`
}

// Addr is the backend's address and port.
func (b Backend) Addr() netip.AddrPort {
	a, _ := netip.ParseAddr(b.IP)
	return netip.AddrPortFrom(a, b.Port)
}

// Inputs are what Decide looks at.
type Inputs struct {
	Target Target
	VIPs   []api.VIP        // the daemon's VIPs (any superset of those the target names)
	Kernel *nat.Snapshot    // l4lb's table
	Flows  []conntrack.Flow // DNATed flows; those of other VIPs are ignored
	// Problems are the daemon's (GET /v1/problems): an address that is no
	// VIP because its IP VIP label was refused says so.
	Problems []vip.Problem
}

// Match returns the daemon's VIPs the target names: by name (exactly, or
// a unique name that starts with it, so that "web" finds
// web.marathon.l4lb.thisdcos.directory) or by address, on any port.
func Match(t Target, vips []api.VIP) (names []string, out []api.VIP) {
	if t.Addr.IsValid() {
		for _, v := range vips {
			if a, err := netip.ParseAddr(v.IP); err == nil && a == t.Addr {
				out = append(out, v)
			}
		}
		return nil, out
	}
	byName := map[string][]api.VIP{}
	for _, v := range vips {
		if v.Name != "" {
			n := strings.ToLower(v.Name)
			byName[n] = append(byName[n], v)
		}
	}
	if vs, ok := byName[t.Name]; ok {
		return []string{t.Name}, vs
	}
	for n := range byName {
		if strings.HasPrefix(n, t.Name+".") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if len(names) == 1 {
		return names, byName[names[0]]
	}
	return names, nil
}

// Decide answers for the target.
func Decide(in Inputs) Report {
	t := in.Target
	k := in.Kernel
	if k == nil {
		k = &nat.Snapshot{}
	}
	r := Report{Target: t.Text, Table: k.Table}
	names, matched := Match(t, in.VIPs)
	if t.Name != "" && len(matched) == 0 {
		r.Verdict = Unknown
		r.Reason = fmt.Sprintf("no VIP is named %s", t.Name)
		if len(names) > 1 {
			r.Reason = fmt.Sprintf("%s is ambiguous: %s", t.Name, strings.Join(names, ", "))
		}
		return r
	}
	var onPort []api.VIP
	for _, v := range matched {
		if v.Port == t.Port && (t.Proto == 0 || v.Protocol == t.Proto.String()) {
			onPort = append(onPort, v)
		}
	}
	slices.SortFunc(onPort, func(a, b api.VIP) int {
		return cmp.Or(cmp.Compare(addrOrder(a.IP), addrOrder(b.IP)), cmp.Compare(a.Protocol, b.Protocol))
	})
	for _, v := range onPort {
		r.Entries = append(r.Entries, vipEntry(v, k, in.Flows))
	}
	if len(onPort) == 0 {
		r.Entries = notAPort(t, matched, k)
	}
	r.Verdict, r.Reason = overall(r.Entries)
	if len(r.Entries) == 0 {
		r.Reason = fmt.Sprintf("%s is not a VIP address: l4lb leaves its traffic alone", t.Addr)
		var refused []string
		for _, p := range in.Problems {
			if p.Refused == t.Addr.String() {
				refused = append(refused, p.Error())
			}
		}
		if len(refused) > 0 {
			r.Reason += "; " + strings.Join(refused, "; ")
		}
	}
	return r
}

// addrOrder puts IPv4 before IPv6.
func addrOrder(ip string) int {
	if strings.Contains(ip, ":") {
		return 1
	}
	return 0
}

// overall is served when every entry is, unknown when nothing is l4lb's,
// refused otherwise (the first refused entry says why).
func overall(es []Entry) (Verdict, string) {
	v, reason := Unknown, ""
	for _, e := range es {
		switch e.Verdict {
		case Refused:
			if v != Refused {
				v, reason = Refused, e.Reason
			}
		case Served:
			if v == Unknown {
				v = Served
			}
		}
	}
	return v, reason
}

// vipEntry explains one of the daemon's VIPs with what the kernel holds.
func vipEntry(v api.VIP, k *nat.Snapshot, flows []conntrack.Flow) Entry {
	e := Entry{VIP: v.VIP, Name: v.Name, Protocol: v.Protocol, IP: v.IP, Port: v.Port, Apps: v.Apps, Backends: []Backend{}}
	if len(e.Apps) == 0 && v.App != "" {
		e.Apps = []string{v.App}
	}
	key := e.Key()
	bmap := nat.BackendMap(key.Addr)
	// The kernel's count for the VIP is the slot range its backends fill.
	n, slots, strays := k.Count(key)
	base := nat.SlotBase(n)
	slotOf := func(ap netip.AddrPort) (int, bool) {
		if i := slices.Index(slots, ap); i >= 0 {
			return base + i, true
		}
		for _, s := range strays {
			if k.Slots[key][s] == ap {
				return s, true
			}
		}
		return 0, false
	}
	states := map[string]int{}
	active := 0
	for _, b := range v.Backend {
		be := Backend{IP: b.IP, Port: b.Port, State: b.State, Task: b.Task, App: b.App}
		states[b.State]++
		if b.State == "active" {
			active++
		}
		if s, ok := slotOf(be.Addr()); ok {
			be.Map, be.Slot = bmap, &s
		} else if b.State == "active" && k.Exists {
			e.Warnings = append(e.Warnings, fmt.Sprintf("active backend %s is in no slot of %s", be.Addr(), bmap))
		}
		e.Backends = append(e.Backends, be)
	}
	known := func(ap netip.AddrPort) bool {
		return slices.ContainsFunc(e.Backends, func(b Backend) bool { return b.Addr() == ap })
	}
	for i, s := range slots {
		if !s.IsValid() || known(s) {
			continue
		}
		slot := base + i
		e.Backends = append(e.Backends, Backend{IP: s.Addr().String(), Port: s.Port(), State: "kernel only", Map: bmap, Slot: &slot})
		e.Warnings = append(e.Warnings, fmt.Sprintf("slot %d of %s holds %s, which the daemon does not list", slot, bmap, s))
	}
	for _, slot := range strays {
		s := k.Slots[key][slot]
		if !known(s) {
			e.Backends = append(e.Backends, Backend{IP: s.Addr().String(), Port: s.Port(), State: "kernel only", Map: bmap, Slot: &slot})
		}
		e.Warnings = append(e.Warnings, fmt.Sprintf("slot %d of %s holds %s, outside the slots of %d backends (%s): no rule picks it",
			slot, bmap, s, n, slotRange(n)))
	}
	for i := range e.Backends {
		e.Backends[i].Conntrack = countFlows(flows, key, e.Backends[i].Addr())
	}

	el, text, ok := k.Element(key)
	if !ok {
		e.Refusal = k.Refuses(key.Addr)
		e.Warnings = append(e.Warnings, fmt.Sprintf("the daemon lists this VIP but %s holds no element for %s", setName(key), key))
		if e.Refusal == "" {
			e.Verdict, e.Reason = Unknown, "the kernel does not know this VIP (is the daemon's table "+k.Table+" in this namespace?)"
			return e
		}
		e.Chain = nat.RefuseChain
		e.Rules = ruleTexts(k, e.Chain)
		e.Verdict, e.Reason = Refused, "not programmed in the kernel yet: refused like any unknown port of the pool"
		return e
	}
	e.Element = &Element{Set: el.Set, Text: text, Comment: el.Comment}
	e.Count = n
	if n == 0 {
		// Chain lb finds no slot for it and ends in goto refuse.
		e.Chain = nat.RefuseChain
		e.Rules = ruleTexts(k, e.Chain)
		e.Verdict = Refused
		e.Reason = "no active backend"
		if len(v.Backend) == 0 {
			e.Reason += ": the VIP has no backend"
		} else {
			e.Reason += ": " + stateCounts(states)
		}
		if active > 0 {
			e.Warnings = append(e.Warnings, fmt.Sprintf("the daemon lists %d active backends but %s has no slot for this VIP", active, bmap))
		}
		return e
	}
	e.Chain = nat.LBChain
	rule, ok := k.LBRule(key.Addr, n)
	if !ok {
		e.Rules = ruleTexts(k, e.Chain)
		e.Verdict = Refused
		e.Reason = fmt.Sprintf("chain lb has no rule for %d backends: new connections fall through to refuse", n)
		e.Warnings = append(e.Warnings, fmt.Sprintf("%s holds slots %s for %d backends, but chain lb lacks: %s", bmap, slotRange(n), n, nat.DNATRuleText(key.Addr, n)))
		return e
	}
	e.Rules = []string{rule.Text}
	e.Verdict = Served
	e.Reason = fmt.Sprintf("DNAT to one of %d active backends, picked at random", n)
	if n == 1 {
		e.Reason = "DNAT to its only active backend"
	}
	if n != active {
		e.Warnings = append(e.Warnings, fmt.Sprintf("%s holds the slots of %d backends but the daemon lists %d active backends", bmap, n, active))
	}
	if holes := n - len(slices.DeleteFunc(slices.Clone(slots), func(a netip.AddrPort) bool { return !a.IsValid() })); holes > 0 {
		e.Warnings = append(e.Warnings, fmt.Sprintf("the rule for %d picks among slots %s but %d of them are empty in %s: those picks are refused", n, slotRange(n), holes, bmap))
	}
	return e
}

// slotRange is "1..2": the slots of a VIP with n backends.
func slotRange(n int) string {
	if n == 0 {
		return "none"
	}
	return fmt.Sprintf("%d..%d", nat.SlotBase(n), nat.SlotBase(n)+n-1)
}

// notAPort explains a port that is not a VIP port: of the name's
// addresses, or of the address asked for.
func notAPort(t Target, matched []api.VIP, k *nat.Snapshot) []Entry {
	var addrs []netip.Addr
	ports := map[netip.Addr][]string{}
	apps := map[netip.Addr][]string{}
	for _, v := range matched {
		a, err := netip.ParseAddr(v.IP)
		if err != nil {
			continue
		}
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
		ports[a] = append(ports[a], fmt.Sprintf("%d/%s", v.Port, v.Protocol))
		for _, app := range v.Apps {
			if !slices.Contains(apps[a], app) {
				apps[a] = append(apps[a], app)
			}
		}
	}
	if t.Addr.IsValid() && len(addrs) == 0 {
		addrs = []netip.Addr{t.Addr}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	protos := []vip.Proto{t.Proto}
	if t.Proto == 0 {
		protos = []vip.Proto{vip.TCP, vip.UDP}
	}
	var out []Entry
	for _, a := range addrs {
		refusal := k.Refuses(a)
		if refusal == "" && len(ports[a]) == 0 {
			continue // not l4lb's address at all
		}
		for _, p := range protos {
			e := Entry{VIP: netip.AddrPortFrom(a, t.Port).String(), Name: t.Name, Protocol: p.String(), IP: a.String(), Port: t.Port,
				Apps: apps[a], Backends: []Backend{}, Refusal: refusal}
			slices.Sort(ports[a])
			switch {
			case refusal == "":
				e.Verdict = Unknown
				e.Reason = fmt.Sprintf("port %d/%s is not a VIP port of %s, and the kernel does not refuse it (is the daemon's table %s in this namespace?)", t.Port, p, a, k.Table)
			case len(ports[a]) > 0:
				e.Verdict = Refused
				e.Reason = fmt.Sprintf("port %d/%s is not a VIP port of %s (its VIP ports: %s)", t.Port, p, a, strings.Join(slices.Compact(ports[a]), ", "))
			default:
				e.Verdict = Refused
				e.Reason = fmt.Sprintf("no VIP has the address %s; l4lb refuses every port of its VIP addresses and pools", a)
			}
			if refusal != "" {
				e.Chain = nat.RefuseChain
				e.Rules = ruleTexts(k, e.Chain)
			}
			out = append(out, e)
		}
	}
	return out
}

func setName(k vip.Key) string {
	if k.Addr.Is6() {
		return "vips6"
	}
	return "vips4"
}

func ruleTexts(k *nat.Snapshot, chain string) []string {
	var out []string
	for _, r := range k.Chains[chain] {
		out = append(out, r.Text)
	}
	return out
}

// stateCounts says "1 draining, 2 unhealthy".
func stateCounts(states map[string]int) string {
	var keys []string
	for s := range states {
		keys = append(keys, s)
	}
	slices.Sort(keys)
	var parts []string
	for _, s := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", states[s], s))
	}
	return strings.Join(parts, ", ")
}

// countFlows counts the tracked flows from the VIP to the backend.
func countFlows(flows []conntrack.Flow, key vip.Key, be netip.AddrPort) int {
	n := 0
	dst := netip.AddrPortFrom(key.Addr, key.Port)
	for _, f := range flows {
		if f.Proto == key.Proto && f.OrigDst == dst && f.ReplySrc == be {
			n++
		}
	}
	return n
}

// BackendAddrs lists the backend addresses of the report, for the
// conntrack dump.
func BackendAddrs(vips []api.VIP) []netip.Addr {
	var out []netip.Addr
	for _, v := range vips {
		for _, b := range v.Backend {
			if a, err := netip.ParseAddr(b.IP); err == nil && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}
