package explain

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/l4lb/l4lb/nat"
)

// Write prints the report for an operator.
func (r Report) Write(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", r.Target, strings.ToUpper(string(r.Verdict)))
	if r.Reason != "" && r.Verdict != Served {
		fmt.Fprintf(&b, " (%s)", r.Reason)
	}
	b.WriteString("\n")
	for _, e := range r.Entries {
		b.WriteString("\n")
		e.write(&b)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (e Entry) write(b *strings.Builder) {
	addr := netip.AddrPortFrom(e.Key().Addr, e.Port).String()
	fmt.Fprintf(b, "%s/%s at %s: %s", e.VIP, e.Protocol, addr, e.Verdict)
	if e.Reason != "" {
		fmt.Fprintf(b, ": %s", e.Reason)
	}
	b.WriteString("\n")
	if len(e.Apps) > 0 {
		fmt.Fprintf(b, "  declared by: %s\n", strings.Join(e.Apps, ", "))
	}
	if e.Element != nil {
		fmt.Fprintf(b, "  element:     set %s { %s }\n", e.Element.Set, e.Element.Text)
		fmt.Fprintf(b, "  comment:     %q\n", e.Element.Comment)
	} else if e.Refusal != "" {
		fmt.Fprintf(b, "  element:     none; the hooked chains refuse it: %s\n", e.Refusal)
	}
	switch {
	case e.Chain == "":
	case e.Chain == "lb" && len(e.Rules) == 1:
		what := fmt.Sprintf("%d backends (slots %s", e.Count, slotRange(e.Count))
		if e.Count == 1 {
			what = "1 backend (slot 0"
		}
		fmt.Fprintf(b, "  chain lb, its rule for %s of %s):\n", what, nat.BackendMap(e.Key().Addr))
		fmt.Fprintf(b, "      %s\n", e.Rules[0])
	case e.Chain == "refuse" && e.Element != nil:
		fmt.Fprintf(b, "  chain lb finds no slot for it and ends in goto refuse; chain refuse:\n")
		for _, r := range e.Rules {
			fmt.Fprintf(b, "      %s\n", r)
		}
	default:
		fmt.Fprintf(b, "  chain %s:\n", e.Chain)
		for _, r := range e.Rules {
			fmt.Fprintf(b, "      %s\n", r)
		}
	}
	if len(e.Backends) > 0 {
		tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  backends:\tSLOT\tBACKEND\tSTATE\tCONNTRACK\tTASK")
		for _, be := range e.Backends {
			slot := "-"
			if be.Slot != nil {
				slot = be.Map + "[" + strconv.Itoa(*be.Slot) + "]"
			}
			task := be.Task
			if task == "" {
				task = "-"
			}
			fmt.Fprintf(tw, "\t%s\t%s\t%s\t%d\t%s\n", slot, be.Addr(), be.State, be.Conntrack, task)
		}
		tw.Flush()
	} else if e.Element != nil {
		b.WriteString("  backends:    none\n")
	}
	for _, w := range e.Warnings {
		fmt.Fprintf(b, "  warning: %s\n", w)
	}
	if t := e.Trace; t != nil {
		fmt.Fprintf(b, "  trace of one probe from %s: %s\n", orDash(t.Src), t.Result)
		for _, ev := range t.Events {
			fmt.Fprintf(b, "    %s\n", ev)
		}
		if t.DNAT != "" {
			fmt.Fprintf(b, "    DNAT target: %s\n", t.DNAT)
		}
		fmt.Fprintf(b, "    (probe rule, removed: %s)\n", t.Probe)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
