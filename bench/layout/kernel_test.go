package layout

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/bench/scenario"
	"github.com/l4lb/l4lb/internal/netns"
)

// TestLayoutsCarryTraffic loads each layout into a real agent namespace and
// checks, with real connections from a container, that the VIP reaches
// every backend; nft and iptables-save are the witnesses that the rules
// have the expected shape in the kernel.
func TestLayoutsCarryTraffic(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4bt", 2, 1, "nft", "iptables-restore")
	probe := scenario.Service{Name: "probe", Port: 80}
	for i, be := range topo.Backends {
		addr := netip.AddrPortFrom(be.Addr4, 9080)
		srv, err := be.Serve(fmt.Sprintf("be%d", i+1), addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		probe.Backends = append(probe.Backends, scenario.Backend{Addr: addr})
	}
	st, err := scenario.Spec{Total: 20, FillerBackends: 3, Services: []scenario.Service{probe}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	k := Kube{Namespace: "bench", PodCIDR: netip.MustParsePrefix("198.19.1.0/24"), ServiceCIDR: scenario.Pool4, NodeIP: topo.Agent.Addr4}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []struct {
		l       Layout
		witness []string // command whose output must contain want
		want    string
	}{
		{NFT{}, []string{"nft", "list", "set", "inet", "l4lb", "vips4"}, "probe.marathon.l4lb.thisdcos.directory:80/tcp"},
		{KubeNFT{Kube: k}, []string{"nft", "list", "table", "ip", "kube-proxy"}, "/probe/tcp/p80"},
		{KubeIPTables{Kube: k, Middle: "probe"}, []string{"iptables-save", "-t", "nat"}, `"bench/probe:p80 cluster IP"`},
	} {
		t.Run(c.l.Name(), func(t *testing.T) {
			agent := topo.Agent.NS
			ld, err := c.l.Load(ctx, agent, st)
			if err != nil {
				t.Fatal(err)
			}
			if ld.Duration <= 0 || ld.ScriptBytes == 0 {
				t.Errorf("load reports %+v", ld)
			}
			out, err := agent.Run(c.witness[0], c.witness[1:]...)
			if err != nil || !strings.Contains(out, c.want) {
				t.Errorf("%s: want %q in:\n%s (%v)", strings.Join(c.witness, " "), c.want, out, err)
			}
			vip, err := c.l.VIPAddr(ctx, agent, st, "probe")
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]int{}
			for range 40 {
				name, err := topo.Containers[0].AskTCP(vip, 2*time.Second)
				if err != nil {
					t.Fatalf("connect to VIP %s: %v", vip, err)
				}
				seen[name]++
			}
			if seen["be1"] == 0 || seen["be2"] == 0 || len(seen) != 2 {
				t.Errorf("VIP reached %v, want both be1 and be2", seen)
			}
			if err := c.l.Clear(ctx, agent); err != nil {
				t.Fatal(err)
			}
			if _, err := topo.Containers[0].AskTCP(vip, 500*time.Millisecond); err == nil {
				t.Errorf("VIP %s still answers after Clear", vip)
			}
			if out, _ := agent.Run("nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
				t.Errorf("ruleset left after Clear:\n%s", out)
			}
		})
	}
}

// TestKubeNFTUpdateLoads applies the endpoint-change transaction to a loaded
// kube-proxy table: the removed backend gets no more connections.
func TestKubeNFTUpdateLoads(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4bt", 2, 1, "nft")
	probe := scenario.Service{Name: "probe", Port: 80}
	for i, be := range topo.Backends {
		addr := netip.AddrPortFrom(be.Addr4, 9081)
		srv, err := be.Serve(fmt.Sprintf("be%d", i+1), addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		probe.Backends = append(probe.Backends, scenario.Backend{Addr: addr})
	}
	old, err := scenario.Spec{Total: 5, FillerBackends: 2, Services: []scenario.Service{probe}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	probe.Backends = probe.Backends[1:]
	updated, err := scenario.Spec{Total: 5, FillerBackends: 2, Services: []scenario.Service{probe}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	k := KubeNFT{Kube: Kube{Namespace: "bench", PodCIDR: netip.MustParsePrefix("198.19.1.0/24"), ServiceCIDR: scenario.Pool4, NodeIP: topo.Agent.Addr4}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := k.Load(ctx, topo.Agent.NS, old); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Clear(context.Background(), topo.Agent.NS) })
	if _, err := k.Update(ctx, topo.Agent.NS, old, updated, "probe"); err != nil {
		t.Fatal(err)
	}
	vip, _ := k.VIPAddr(ctx, topo.Agent.NS, updated, "probe")
	for range 20 {
		name, err := topo.Containers[0].AskTCP(vip, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if name != "be2" {
			t.Fatalf("after the update the VIP reached %s, want only be2", name)
		}
	}
	out, err := topo.Agent.Run("nft", "list", "table", "ip", "kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "__"+topo.Backends[0].Addr4.String()+"/9081") {
		t.Errorf("the removed endpoint's chain is still there:\n%s", out)
	}
}
