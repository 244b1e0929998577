package netns

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestTopology checks the test topology itself: backends reachable from the
// agent and from a container, over IPv4 and IPv6, TCP and UDP, and the
// namespaces gone afterwards.
func TestTopology(t *testing.T) {
	topo := TopologyForTest(t, "l4nt", 2, 1)
	for _, be := range topo.Backends {
		for _, a := range []netip.Addr{be.Addr4, be.Addr6} {
			srv, err := be.Serve(be.Name, netip.AddrPortFrom(a, 8080))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Close)
			for _, client := range []*NS{topo.Agent.NS, topo.Containers[0].NS} {
				got, err := client.AskTCP(srv.Addr, 2*time.Second)
				if err != nil || got != be.Name {
					t.Errorf("tcp %s from %s: %q, %v", srv.Addr, client.Name, got, err)
				}
				got, err = client.AskUDP(srv.Addr, netip.AddrPort{}, 2*time.Second)
				if err != nil || got != be.Name {
					t.Errorf("udp %s from %s: %q, %v", srv.Addr, client.Name, got, err)
				}
			}
		}
	}
	// A port nobody listens on is refused at once.
	_, err := topo.Agent.AskTCP(netip.AddrPortFrom(topo.Backends[0].Addr4, 1), time.Second)
	if !IsRefused(err) {
		t.Errorf("closed port: %v, want refused", err)
	}
}

func TestDeleteRemovesNamespace(t *testing.T) {
	Require(t)
	n, err := New(UniqueName("l4nd"))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Delete(); err != nil {
		t.Fatal(err)
	}
	if lines, err := runIP("netns", "list"); err == nil && strings.Contains(lines, n.Name) {
		t.Errorf("namespace %s still listed", n.Name)
	}
}
