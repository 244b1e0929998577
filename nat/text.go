package nat

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/l4lb/l4lb/vip"
)

// Text returns the ruleset as an nft script: the table with its maps, sets
// and chains, then the elements. Loaded with `nft -f` into a namespace
// without the table it gives exactly what the kernel adapter programs.
func (r *Ruleset) Text() string {
	var b strings.Builder
	r.WriteText(&b)
	return b.String()
}

// WriteText writes the nft script to w.
func (r *Ruleset) WriteText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }

	active := 0
	backends := r.Backends()
	for _, v := range r.VIPs {
		if len(v.Backends) > 0 {
			active++
		}
	}
	p("# l4lb ruleset: %d VIPs (%d with active backends), %d backend slots\n", len(r.VIPs), active, len(backends))
	p("table inet %s {\n", r.Table)
	sep := ""
	for _, s := range r.setDecls() {
		kw := "set"
		if s.isMap() {
			kw = "map"
		}
		p("%s\t%s %s {\n", sep, kw, s.name)
		p("\t\t%s\n", s.typ)
		p("\t}\n")
		sep = "\n"
	}
	for _, c := range r.chains() {
		p("\n\tchain %s {\n", c.name)
		if c.hook != "" {
			p("\t\ttype nat hook %s priority %s; policy accept;\n", c.hook, c.priority)
		}
		for _, rule := range c.rules {
			p("\t\t%s\n", rule.text)
		}
		p("\t}\n")
	}
	p("}\n")

	v4, v6 := splitVIPs(r.VIPs)
	writeElems(bw, r.Table, setVIPs4, len(v4), func(i int) string { return vipElemText(v4[i]) })
	writeElems(bw, r.Table, setVIPs6, len(v6), func(i int) string { return vipElemText(v6[i]) })
	b4, b6 := splitBackends(backends)
	writeElems(bw, r.Table, mapBackends4, len(b4), func(i int) string { return backendElemText(b4[i]) })
	writeElems(bw, r.Table, mapBackends6, len(b6), func(i int) string { return backendElemText(b6[i]) })
	i4, i6 := splitAddrs(r.IPVIPs)
	writeElems(bw, r.Table, setIPVIPs4, len(i4), func(i int) string { return i4[i].String() })
	writeElems(bw, r.Table, setIPVIPs6, len(i6), func(i int) string { return i6[i].String() })
	h4, h6 := splitAddrs(r.Hairpin)
	writeElems(bw, r.Table, setHairpin4, len(h4), func(i int) string { return h4[i].String() + " . " + h4[i].String() })
	writeElems(bw, r.Table, setHairpin6, len(h6), func(i int) string { return h6[i].String() + " . " + h6[i].String() })
	return bw.Flush()
}

func writeElems(w io.Writer, table, set string, n int, elem func(int) string) {
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "add element inet %s %s {\n", table, set)
	for i := range n {
		sep := ","
		if i == n-1 {
			sep = ""
		}
		fmt.Fprintf(w, "\t%s%s\n", elem(i), sep)
	}
	fmt.Fprintf(w, "}\n")
}

func keyText(k vip.Key) string {
	return k.Addr.String() + " . " + k.Proto.String() + " . " + strconv.Itoa(int(k.Port))
}

func vipElemText(e VIPElem) string {
	return fmt.Sprintf("%s comment %s", keyText(e.Key), strconv.Quote(e.Comment))
}

func backendElemText(e BackendElem) string {
	return fmt.Sprintf("%s . %d : %s . %d", keyText(e.VIP), e.Slot, e.Backend.Addr(), e.Backend.Port())
}

func splitVIPs(in []VIPElem) (v4, v6 []VIPElem) {
	for _, e := range in {
		if e.Key.Addr.Is4() {
			v4 = append(v4, e)
		} else {
			v6 = append(v6, e)
		}
	}
	return v4, v6
}

func splitBackends(in []BackendElem) (v4, v6 []BackendElem) {
	for _, e := range in {
		if e.VIP.Addr.Is4() {
			v4 = append(v4, e)
		} else {
			v6 = append(v6, e)
		}
	}
	return v4, v6
}

func splitAddrs(in []netip.Addr) (v4, v6 []netip.Addr) {
	for _, a := range in {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	return v4, v6
}
