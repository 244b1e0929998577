package localnet

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/vip"
)

// TestKernelReadsTheAgentsNetworks reads a namespace's routing table after
// l4lb programmed its own routes there: the agent's addresses and connected
// networks are found, l4lb's routes via lo are not, and an interface added
// later counts at the next read.
func TestKernelReadsTheAgentsNetworks(t *testing.T) {
	agent := netns.ForTest(t, "l4ln")
	peer := netns.ForTest(t, "l4lp")
	if err := netns.Veth(agent, "eth0", peer, "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := agent.Addr("eth0", "198.19.40.1/24", "fd00:198:19::40:1/112"); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Run("ip", "route", "add", "198.19.50.0/24", "via", "198.19.40.2"); err != nil {
		t.Fatal(err)
	}
	f, err := agent.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// l4lb's own routes: the pools and an IP VIP outside them, via lo.
	k, err := nat.New(nat.DefaultTable, nat.WithNetNS(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ipvip := netip.MustParseAddr("198.18.255.1")
	state := vip.State{Pool4: netip.MustParsePrefix("198.18.0.0/17"), Pool6: netip.MustParsePrefix("fd00:198:18::/64"),
		VIPs: []vip.VIP{{Addr: ipvip, Port: 80, Proto: vip.TCP, Apps: []string{"/a"}}}}
	if _, err := k.Apply(context.Background(), nat.Compile(state, nat.DefaultTable), true); err != nil {
		t.Fatal(err)
	}
	if out, _ := agent.Run("ip", "route", "show", "proto", "241"); !strings.Contains(out, "198.18.255.1 dev lo") {
		t.Fatalf("l4lb's routes are not there: %q", out)
	}

	r, err := New(WithNetNS(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l, err := r.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("read: %s", l)
	for _, own := range []string{"127.0.0.1/32", "198.19.40.1/32", "198.19.40.255/32", "::1/128", "fd00:198:19::40:1/128"} {
		if !slices.Contains(l.Own, netip.MustParsePrefix(own)) {
			t.Errorf("own lacks %s: %s", own, l)
		}
	}
	for _, c := range []string{"198.19.40.0/24", "fd00:198:19::40:0/112"} {
		if !slices.Contains(l.Connected, netip.MustParsePrefix(c)) {
			t.Errorf("connected lacks %s: %s", c, l)
		}
	}
	for _, a := range []string{"198.18.255.1", "198.18.0.1", "fd00:198:18::1", "198.19.50.1"} {
		if reason := l.Reason(netip.MustParseAddr(a)); reason != "" {
			t.Errorf("%s refused: %s (%s)", a, reason, l)
		}
	}

	// A new interface counts at the next read.
	other := netns.ForTest(t, "l4lo")
	if err := netns.Veth(agent, "eth1", other, "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := agent.Addr("eth1", "198.19.41.1/24", "fd00:198:19::41:1/112"); err != nil {
		t.Fatal(err)
	}
	l, err = r.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.19.41.7", "fd00:198:19::41:7", "198.19.41.1"} {
		if l.Reason(netip.MustParseAddr(a)) == "" {
			t.Errorf("%s on the new interface passes: %s", a, l)
		}
	}
}
