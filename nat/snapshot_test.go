package nat

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// TestSnapshot programs the mixed golden ruleset and reads it back as an
// operator sees it: every VIP element with its comment and chain, every
// backend in its slot, the refused pools and IP VIPs, and a text for every
// rule of every chain.
func TestSnapshot(t *testing.T) {
	ns := netns.ForTest(t, "l4ks", "nft")
	r := Compile(stateFromFile(t, "testdata/mixed.json"), "")
	k := kernelFor(t, ns, WithoutRoutes())
	if _, err := k.Apply(context.Background(), r, false); err != nil {
		t.Fatal(err)
	}
	s, err := k.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !s.Exists || len(s.VIPs) != len(r.VIPs) {
		t.Fatalf("snapshot: exists %v, %d VIPs, want %d", s.Exists, len(s.VIPs), len(r.VIPs))
	}
	for _, v := range r.VIPs {
		e, text, ok := s.Element(v.Key)
		if !ok || e.Comment != v.Comment || e.Set != pick(v.Key.Addr, setVIPs4, setVIPs6) {
			t.Errorf("element %v = %+v %v, want comment %q", v.Key, e, ok, v.Comment)
		}
		if want := keyText(v.Key); text != want {
			t.Errorf("element text %q, want %q", text, want)
		}
		n, slots, strays := s.Count(v.Key)
		if n != len(v.Backends) || !slices.Equal(slots, v.Backends) || len(strays) > 0 || len(s.Slots[v.Key]) != n {
			t.Errorf("slots of %v = %d %v %v, want %v", v.Key, n, slots, strays, v.Backends)
		}
		if rl, ok := s.LBRule(v.Key.Addr, n); n > 0 && (!ok || rl.Text != DNATRuleText(v.Key.Addr, n)) {
			t.Errorf("lb rule for %d backends of %v: %+v %v", n, v.Key, rl, ok)
		}
	}
	if !slices.Equal(s.Pools, []netip.Prefix{testPool4, testPool6}) && !slices.Equal(s.Pools, []netip.Prefix{r.Pool4, r.Pool6}) {
		t.Errorf("pools = %v, want %v %v", s.Pools, r.Pool4, r.Pool6)
	}
	if !slices.Equal(s.IPVIPs, r.IPVIPs) && len(s.IPVIPs) != len(r.IPVIPs) {
		t.Errorf("IP VIPs = %v, want %v", s.IPVIPs, r.IPVIPs)
	}
	for _, c := range r.chains() {
		got := s.Chains[c.name]
		if len(got) != len(c.rules) {
			t.Errorf("chain %s: %d rules, want %d", c.name, len(got), len(c.rules))
			continue
		}
		for i, rl := range c.rules {
			if got[i].Text != rl.text {
				t.Errorf("chain %s rule %d = %q, want %q", c.name, i, got[i].Text, rl.text)
			}
			if txt, ok := s.RuleText(c.name, got[i].Handle); !ok || txt != rl.text {
				t.Errorf("RuleText(%s, %d) = %q", c.name, got[i].Handle, txt)
			}
		}
	}
	if s.Hooks[chainOutput] != "output" || s.Hooks[chainPrerouting] != "prerouting" {
		t.Errorf("hooks = %v", s.Hooks)
	}
	if got := s.Refuses(netip.MustParseAddr("198.18.9.9")); !strings.Contains(got, "198.18.0.0/16 goto refuse") {
		t.Errorf("Refuses(pool address) = %q", got)
	}
	if got := s.Refuses(netip.MustParseAddr("198.19.9.9")); got != "" {
		t.Errorf("Refuses(other address) = %q", got)
	}

	// An empty namespace has no table.
	empty := kernelFor(t, netns.ForTest(t, "l4ke", "nft"), WithoutRoutes())
	if s, err := empty.Snapshot(); err != nil || s.Exists {
		t.Errorf("snapshot without a table: %+v %v", s, err)
	}
}

// TestTraceChain adds a probe chain: nft lists the rule as TraceText says,
// remove deletes it, and a chain left behind (a killed explain) is dropped
// by the next full Apply without touching anything else.
func TestTraceChain(t *testing.T) {
	ns := netns.ForTest(t, "l4kt", "nft")
	r := Compile(stateFromFile(t, "testdata/mixed.json"), "")
	k := kernelFor(t, ns, WithoutRoutes())
	ctx := context.Background()
	if _, err := k.Apply(ctx, r, false); err != nil {
		t.Fatal(err)
	}
	before := listText(t, ns)
	for _, dst := range []string{"198.18.0.1:80", "[fd00:198:18::1]:53"} {
		p := TraceProbe{Chain: TraceChainPrefix + "1", Proto: vip.UDP, Dst: netip.MustParseAddrPort(dst), SrcPort: 40000}
		remove, err := k.AddTrace(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		out, err := ns.Run("nft", "list", "chain", "inet", DefaultTable, p.Chain)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, p.TraceText()) || !strings.Contains(out, "type filter hook output priority raw") {
			t.Errorf("probe chain:\n%s\nwant rule %q", out, p.TraceText())
		}
		if err := remove(ctx); err != nil {
			t.Fatal(err)
		}
		if got := listText(t, ns); got != before {
			t.Errorf("after remove:\n%s", diffLines(before, got))
		}
	}
	if _, err := k.AddTrace(ctx, TraceProbe{Chain: "nat-output", Proto: vip.TCP, Dst: netip.MustParseAddrPort("198.18.0.1:80")}); err == nil {
		t.Error("AddTrace accepted a chain name outside its prefix")
	}
	if _, err := k.AddTrace(ctx, TraceProbe{Chain: TraceChainPrefix + "2", Proto: vip.TCP, Dst: netip.MustParseAddrPort("198.18.0.1:80"), SrcPort: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Apply(ctx, r, true); err != nil {
		t.Fatal(err)
	}
	if got := listText(t, ns); got != before {
		t.Errorf("full Apply left the stray probe chain:\n%s", diffLines(before, got))
	}
}

// TestDecodeRefusePrefix reads the pools back from l4lb's own refusal
// rules, whatever the prefix length, and nothing from other rules.
func TestDecodeRefusePrefix(t *testing.T) {
	k := &Kernel{}
	for _, s := range []string{"198.18.0.0/16", "11.0.0.0/8", "198.18.0.0/15", "198.18.128.0/17", "10.1.2.3/32",
		"fd00:198:18::/64", "fd01:c::/62", "fd00::/7"} {
		p := netip.MustParsePrefix(s)
		got, ok := decodeRefusePrefix(k.ruleExprs(refusePrefixRule(p), nil))
		if !ok || got != p.Masked() {
			t.Errorf("decode %s = %s %v", p, got, ok)
		}
	}
	for _, r := range []rule{lookupRule(false, setVIPs4), refuseSetRule(true, setIPVIPs6), dnatRule(false, 2, mapBackends4), hairpinRule(false, setHairpin4)} {
		if p, ok := decodeRefusePrefix(k.ruleExprs(r, nil)); ok {
			t.Errorf("rule %q decoded as prefix %s", r.text, p)
		}
	}
}
