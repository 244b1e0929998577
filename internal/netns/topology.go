package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// Addresses of the standard topology (DESIGN section 6: hosts in
// 198.19.0.0/16 and fd00:198:19::/64; VIP pools are the agent's business).
var (
	HostsNet4      = netip.MustParsePrefix("198.19.0.0/24")
	HostsNet6      = netip.MustParsePrefix("fd00:198:19::/112")
	ContainersNet4 = netip.MustParsePrefix("198.19.1.0/24")
	ContainersNet6 = netip.MustParsePrefix("fd00:198:19::1:0/112")
)

// Host is a namespace with its addresses.
type Host struct {
	*NS
	Addr4 netip.Addr
	Addr6 netip.Addr
}

// Topology is an agent with backends and containers, each in its own
// namespace:
//
//	backend i (eth0 198.19.0.1i) --- hosts0 bridge (198.19.0.1) [agent] ctr0 bridge (198.19.1.1) --- container j (eth0 198.19.1.1j)
//
// The agent forwards between its two bridges; backends and containers route
// through it. The agent is where l4lb runs: its own processes are the local
// clients (output hook), containers are the forwarded ones (prerouting).
type Topology struct {
	Agent      Host // addresses on hosts0
	AgentCtr   Host // the agent again, with its addresses on ctr0
	Backends   []Host
	Containers []Host
}

func nth(p netip.Prefix, i int) netip.Addr {
	a := p.Addr()
	for range i {
		a = a.Next()
	}
	return a
}

func cidr(a netip.Addr, p netip.Prefix) string { return netip.PrefixFrom(a, p.Bits()).String() }

// NewTopology builds the topology; prefix starts every namespace name. On
// error everything created so far is removed.
func NewTopology(prefix string, backends, containers int) (t *Topology, err error) {
	t = &Topology{}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Delete())
			t = nil
		}
	}()
	agent, err := New(UniqueName(prefix))
	if err != nil {
		return t, err
	}
	t.Agent = Host{NS: agent, Addr4: nth(HostsNet4, 1), Addr6: nth(HostsNet6, 1)}
	t.AgentCtr = Host{NS: agent, Addr4: nth(ContainersNet4, 1), Addr6: nth(ContainersNet6, 1)}
	for _, s := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
	} {
		if err := agent.Sysctl(s[0], s[1]); err != nil {
			return t, err
		}
	}
	for _, br := range []struct {
		name string
		h    Host
		n4   netip.Prefix
		n6   netip.Prefix
	}{{"hosts0", t.Agent, HostsNet4, HostsNet6}, {"ctr0", t.AgentCtr, ContainersNet4, ContainersNet6}} {
		if _, err := agent.Run("ip", "link", "add", br.name, "type", "bridge"); err != nil {
			return t, err
		}
		if _, err := agent.Run("ip", "link", "set", br.name, "up"); err != nil {
			return t, err
		}
		if err := agent.Addr(br.name, cidr(br.h.Addr4, br.n4), cidr(br.h.Addr6, br.n6)); err != nil {
			return t, err
		}
	}
	attach := func(i int, kind, bridge string, n4, n6 netip.Prefix, gw Host) (Host, error) {
		ns, err := New(UniqueName(prefix))
		if err != nil {
			return Host{}, err
		}
		h := Host{NS: ns, Addr4: nth(n4, 10+i), Addr6: nth(n6, 10+i)}
		peer := fmt.Sprintf("%s%d", kind, i)
		if err := Veth(ns, "eth0", agent, peer); err != nil {
			return h, err
		}
		if _, err := agent.Run("ip", "link", "set", peer, "master", bridge); err != nil {
			return h, err
		}
		// As Docker does without its userland proxy: when br_netfilter is
		// loaded, a container reaching itself through a VIP is bridged back
		// out of the port it came from.
		if _, err := agent.Run("ip", "link", "set", peer, "type", "bridge_slave", "hairpin", "on"); err != nil {
			return h, err
		}
		if err := ns.Addr("eth0", cidr(h.Addr4, n4), cidr(h.Addr6, n6)); err != nil {
			return h, err
		}
		if _, err := ns.Run("ip", "route", "add", "default", "via", gw.Addr4.String()); err != nil {
			return h, err
		}
		if _, err := ns.Run("ip", "-6", "route", "add", "default", "via", gw.Addr6.String()); err != nil {
			return h, err
		}
		return h, nil
	}
	for i := 1; i <= backends; i++ {
		h, err := attach(i, "be", "hosts0", HostsNet4, HostsNet6, t.Agent)
		if h.NS != nil {
			t.Backends = append(t.Backends, h)
		}
		if err != nil {
			return t, err
		}
	}
	for i := 1; i <= containers; i++ {
		h, err := attach(i, "ctr", "ctr0", ContainersNet4, ContainersNet6, t.AgentCtr)
		if h.NS != nil {
			t.Containers = append(t.Containers, h)
		}
		if err != nil {
			return t, err
		}
	}
	return t, nil
}

// Delete removes every namespace of the topology.
func (t *Topology) Delete() error {
	var errs []error
	for _, h := range append(append([]Host{t.Agent}, t.Backends...), t.Containers...) {
		if h.NS != nil {
			errs = append(errs, h.Delete())
		}
	}
	return errors.Join(errs...)
}

// TopologyForTest builds a topology for t and removes it when the test ends.
func TopologyForTest(t testing.TB, prefix string, backends, containers int, tools ...string) *Topology {
	t.Helper()
	Require(t, tools...)
	topo, err := NewTopology(prefix, backends, containers)
	if err != nil {
		if InCI() {
			t.Fatalf("build topology: %v", err)
		}
		t.Skipf("cannot build a namespace topology here: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return topo
}
