// Package localnet reads what an agent owns of the network: its own
// addresses and the networks it is directly connected to, from its routing
// table. An IP VIP must not take any of them (DESIGN section 1), and a named
// VIP pool must not overlap them. The decision is pure (Classify, and
// vip.LocalNets); only kernel.go talks netlink.
package localnet

import (
	"context"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/vip"
)

// Interface reads the agent's addresses and connected networks. The daemon
// reads them again on every sync, so that a new interface counts at once.
type Interface interface {
	Read(ctx context.Context) (*vip.LocalNets, error)
}

// Route is what Classify needs of one route of any table.
type Route struct {
	Dst      netip.Prefix // the destination; 0.0.0.0/0 or ::/0 for a default route
	Type     int          // unix.RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, ...
	Scope    int          // unix.RT_SCOPE_LINK, ...; IPv6 routes always say universe
	Protocol int          // who installed it: unix.RTPROT_KERNEL, nat.RouteProtocol, ...
	Gateway  bool         // it has a gateway (or a multipath next hop with one)
}

// Classify sorts routes into the agent's own addresses and its directly
// connected networks:
//   - own: local routes (addresses of the agent, and AnyIP ranges), broadcast
//     and anycast routes (the broadcast of a connected network, IPv6
//     subnet-router anycast);
//   - connected: unicast routes without a gateway. For IPv4 they are the
//     scope link routes; IPv6 routes carry no scope, and without a gateway
//     a network is on the link the same way.
//
// l4lb's own routes (protocol nat.RouteProtocol, via lo for the pools and
// IP VIPs) are not the agent's networks: counting them would make every IP
// VIP refuse itself after the first sync. A default route without a gateway
// (a point-to-point tunnel) is not a connected network either: it holds
// every address.
func Classify(routes []Route) *vip.LocalNets {
	l := &vip.LocalNets{}
	for _, r := range routes {
		dst := r.Dst.Masked()
		if r.Protocol == nat.RouteProtocol || !dst.IsValid() {
			continue
		}
		switch r.Type {
		case unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_ANYCAST:
			l.Own = append(l.Own, dst)
		case unix.RTN_UNICAST:
			if r.Gateway || dst.Bits() == 0 {
				continue
			}
			if dst.Addr().Is4() && r.Scope != unix.RT_SCOPE_LINK && r.Scope != unix.RT_SCOPE_HOST {
				continue
			}
			l.Connected = append(l.Connected, dst)
		}
	}
	cmp := func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	}
	slices.SortFunc(l.Own, cmp)
	slices.SortFunc(l.Connected, cmp)
	l.Own, l.Connected = slices.Compact(l.Own), slices.Compact(l.Connected)
	return l
}

// Fake returns fixed networks, or an error, for tests of the consumers.
type Fake struct {
	Nets  *vip.LocalNets
	Err   error
	Reads int
}

// Read implements Interface.
func (f *Fake) Read(context.Context) (*vip.LocalNets, error) {
	f.Reads++
	if f.Err != nil {
		return nil, f.Err
	}
	return f.Nets, nil
}
