package nat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes l4lb installs (`ip route show proto 241`),
// so that it finds its own and never touches anyone else's.
const RouteProtocol = 241

// routes keeps the routes of the VIP pools and IP VIPs via lo: local
// clients need a route to reach an address that the output hook then
// DNATs. This kernel has no dummy links; lo works and is always there.
type routes struct {
	h  *vnl.Handle
	lo int
}

func newRoutes(netnsFd int) (*routes, error) {
	var h *vnl.Handle
	var err error
	if netnsFd > 0 {
		h, err = vnl.NewHandleAt(netns.NsHandle(netnsFd), unix.NETLINK_ROUTE)
	} else {
		h, err = vnl.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open route netlink socket: %w", err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("find lo: %w", err)
	}
	return &routes{h: h, lo: lo.Attrs().Index}, nil
}

func (r *routes) close() { r.h.Close() }

// sync makes l4lb's routes exactly want; it returns how many it changed.
func (r *routes) sync(want []netip.Prefix) (int, error) {
	have := map[netip.Prefix]vnl.Route{}
	for _, fam := range []int{vnl.FAMILY_V4, vnl.FAMILY_V6} {
		list, err := r.h.RouteListFiltered(fam, &vnl.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			vnl.RT_FILTER_PROTOCOL|vnl.RT_FILTER_TABLE)
		if err != nil {
			return 0, fmt.Errorf("list routes: %w", err)
		}
		for _, rt := range list {
			if rt.Dst == nil {
				continue
			}
			if p, ok := prefixOf(rt.Dst); ok {
				have[p] = rt
			}
		}
	}
	changed := 0
	var errs []error
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p] = true
		if rt, ok := have[p]; ok && rt.LinkIndex == r.lo {
			continue
		}
		rt := &vnl.Route{LinkIndex: r.lo, Dst: ipNet(p), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if p.Addr().Is4() {
			rt.Scope = vnl.SCOPE_LINK
		}
		if err := r.h.RouteReplace(rt); err != nil {
			errs = append(errs, fmt.Errorf("add route %s dev lo: %w", p, err))
			continue
		}
		changed++
	}
	for p, rt := range have {
		if wanted[p] {
			continue
		}
		if err := r.h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", p, err))
			continue
		}
		changed++
	}
	return changed, errors.Join(errs...)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
