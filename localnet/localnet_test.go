package localnet

import (
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/nat"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func strs(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// The routes of the test agent (`ip route show table all`), with l4lb's own.
func TestClassify(t *testing.T) {
	routes := []Route{
		// table local: the agent's addresses and broadcasts
		{Dst: pfx("127.0.0.0/8"), Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("127.0.0.1/32"), Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("127.255.255.255/32"), Type: unix.RTN_BROADCAST, Scope: unix.RT_SCOPE_LINK, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("198.19.0.1/32"), Type: unix.RTN_LOCAL, Scope: unix.RT_SCOPE_HOST, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("198.19.0.255/32"), Type: unix.RTN_BROADCAST, Scope: unix.RT_SCOPE_LINK, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("::1/128"), Type: unix.RTN_LOCAL, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("fd00:198:19::1/128"), Type: unix.RTN_LOCAL, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("fd00:198:19::/128"), Type: unix.RTN_ANYCAST, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("ff00::/8"), Type: unix.RTN_MULTICAST, Protocol: unix.RTPROT_KERNEL},
		// table main: connected networks, a routed network, defaults
		{Dst: pfx("198.19.0.0/24"), Type: unix.RTN_UNICAST, Scope: unix.RT_SCOPE_LINK, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("198.19.7.7/32"), Type: unix.RTN_UNICAST, Scope: unix.RT_SCOPE_LINK, Protocol: unix.RTPROT_BOOT}, // a pod (Calico)
		{Dst: pfx("198.19.8.0/24"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT, Gateway: true},
		{Dst: pfx("0.0.0.0/0"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT, Gateway: true},
		{Dst: pfx("0.0.0.0/0"), Type: unix.RTN_UNICAST, Scope: unix.RT_SCOPE_LINK, Protocol: unix.RTPROT_BOOT}, // default dev tun0
		{Dst: pfx("198.19.9.0/24"), Type: unix.RTN_BLACKHOLE, Protocol: unix.RTPROT_BOOT},
		{Dst: pfx("198.19.10.0/24"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT}, // scope global without gateway: not IPv4 on-link
		{Dst: pfx("fd00:198:19::/112"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("fe80::/64"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_KERNEL},
		{Dst: pfx("fd00:198:20::/64"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT, Gateway: true},
		{Dst: pfx("::/0"), Type: unix.RTN_UNICAST, Protocol: unix.RTPROT_BOOT},
		// l4lb's own routes via lo: the pools and an IP VIP
		{Dst: pfx("198.18.0.0/16"), Type: unix.RTN_UNICAST, Scope: unix.RT_SCOPE_LINK, Protocol: nat.RouteProtocol},
		{Dst: pfx("198.18.255.1/32"), Type: unix.RTN_UNICAST, Scope: unix.RT_SCOPE_LINK, Protocol: nat.RouteProtocol},
		{Dst: pfx("fd00:198:18::/64"), Type: unix.RTN_UNICAST, Protocol: nat.RouteProtocol},
		// a repeat from another table
		{Dst: pfx("198.19.0.0/24"), Type: unix.RTN_UNICAST, Scope: unix.RT_SCOPE_LINK, Protocol: unix.RTPROT_KERNEL},
		{},
	}
	l := Classify(routes)
	wantOwn := []string{"127.0.0.0/8", "127.0.0.1/32", "127.255.255.255/32", "198.19.0.1/32", "198.19.0.255/32",
		"::1/128", "fd00:198:19::/128", "fd00:198:19::1/128"}
	wantConn := []string{"198.19.0.0/24", "198.19.7.7/32", "fd00:198:19::/112", "fe80::/64"}
	if got := strs(l.Own); !slices.Equal(got, wantOwn) {
		t.Errorf("own = %v, want %v", got, wantOwn)
	}
	if got := strs(l.Connected); !slices.Equal(got, wantConn) {
		t.Errorf("connected = %v, want %v", got, wantConn)
	}
	// l4lb's own routes never refuse an IP VIP.
	if r := l.Reason(netip.MustParseAddr("198.18.255.1")); r != "" {
		t.Errorf("an IP VIP refuses itself: %s", r)
	}
}
