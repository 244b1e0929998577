package explain

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/l4lb/l4lb/nat"
)

// Trace is the path the kernel reported for one probe packet.
type Trace struct {
	Probe  string       `json:"probe"`  // the probe's rule, in l4lb's table
	Src    string       `json:"src"`    // the probe socket's address
	Result string       `json:"result"` // what the probe saw: connected, refused, ...
	Events []TraceEvent `json:"events"`
	// DNAT is where the kernel sent the packet, when it was translated:
	// the destination the packet had at the first event after the DNAT.
	DNAT string `json:"dnat,omitempty"`

	probeChain, probeRule string
}

// TraceEvent is one nftables trace event (what `nft monitor trace` prints
// as one line).
type TraceEvent struct {
	ID      uint32 `json:"id"`
	Type    string `json:"type"` // rule, return, policy
	Family  string `json:"family"`
	Hook    string `json:"hook,omitempty"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Handle  uint64 `json:"handle,omitempty"`
	Rule    string `json:"rule,omitempty"`    // the rule's text, for l4lb's table
	Verdict string `json:"verdict,omitempty"` // accept, drop, continue, goto lb2, ...
	Packet  string `json:"packet,omitempty"`  // proto src -> dst, as the event's headers show it

	dst netip.AddrPort
}

// Annotate fills in what the event alone does not say: the hook of each
// chain (a regular chain runs in the hook of the base chain that reached
// it), the text of l4lb's rules, and the DNAT target: the destination of
// the first event after the original one whose destination differs.
func (t *Trace) Annotate(k *nat.Snapshot, table string, orig netip.AddrPort) {
	hook := ""
	for i := range t.Events {
		ev := &t.Events[i]
		if ev.Table == table && ev.Chain == t.probeChain {
			hook = "output"
			ev.Hook = hook
			if ev.Type == "rule" {
				ev.Rule = t.probeRule
			}
		} else if ev.Table == table && k != nil {
			if h, ok := k.Hooks[ev.Chain]; ok {
				hook = h
			}
			if ev.Hook == "" {
				ev.Hook = hook
			}
			if ev.Rule == "" && ev.Type == "rule" {
				if txt, ok := k.RuleText(ev.Chain, ev.Handle); ok {
					ev.Rule = txt
				}
			}
		}
		if t.DNAT == "" && ev.dst.IsValid() && orig.IsValid() && ev.dst != orig {
			t.DNAT = ev.dst.String()
		}
	}
}

// String prints one event the way `nft monitor trace` would, shortened.
func (ev TraceEvent) String() string {
	var b strings.Builder
	where := ev.Table + " " + ev.Chain
	if ev.Hook != "" {
		where = ev.Hook + ": " + where
	}
	b.WriteString(where)
	switch ev.Type {
	case "rule":
		rule := ev.Rule
		if rule == "" {
			rule = fmt.Sprintf("handle %d", ev.Handle)
		}
		fmt.Fprintf(&b, ": rule %s (verdict %s)", rule, ev.Verdict)
	case "policy":
		fmt.Fprintf(&b, ": policy %s", ev.Verdict)
	case "return":
		fmt.Fprintf(&b, ": return (%s)", ev.Verdict)
	default:
		fmt.Fprintf(&b, ": %s %s", ev.Type, ev.Verdict)
	}
	if ev.Packet != "" {
		fmt.Fprintf(&b, "  [%s]", ev.Packet)
	}
	return b.String()
}
