package main

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/nat/forward"
)

// TestCleanupIPTables: `l4lb cleanup` removes the iptables chain and jump
// that l4lb added where FORWARD drops, and nothing else.
func TestCleanupIPTables(t *testing.T) {
	ns := netns.ForTest(t, "l4cu", "iptables", "ip6tables")
	for _, cmd := range []string{"iptables", "ip6tables"} {
		if _, err := ns.Run(cmd, "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"); err != nil {
			t.Fatal(err)
		}
		if _, err := ns.Run(cmd, "-P", "FORWARD", "DROP"); err != nil {
			t.Fatal(err)
		}
	}
	before, err := ns.Run("iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := forward.New(forward.WithNetNS(int(f.Fd()))).Sync(context.Background(), forward.Want{
		Pool4: netip.MustParsePrefix("198.18.0.0/16"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")})
	if err != nil || len(res.Active) != 2 {
		t.Fatalf("Sync: %+v, %v", res, err)
	}
	if out, _ := ns.Run("ip6tables", "-S"); !strings.Contains(out, forward.Chain) {
		t.Fatalf("no chain to clean up:\n%s", out)
	}

	if out, err := ns.Run(l4lbBinary(t), "cleanup"); err != nil || !strings.Contains(out, "iptables rules") {
		t.Fatalf("cleanup: %q, %v", out, err)
	}
	after, err := ns.Run("iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	if strip(after) != strip(before) {
		t.Errorf("after cleanup:\n%s\nwant\n%s", after, before)
	}
	if out, _ := ns.Run("ip6tables", "-S"); strings.Contains(out, forward.Chain) || !strings.Contains(out, "-P FORWARD DROP") {
		t.Errorf("ip6tables after cleanup:\n%s", out)
	}
}

// strip drops the comment lines of iptables-save (they carry the time).
func strip(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
