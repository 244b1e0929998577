package localnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/vip"
)

// Kernel reads the routing table through netlink.
type Kernel struct {
	h *vnl.Handle
}

// Option configures a Kernel.
type Option func(*options)

type options struct{ netnsFd int }

// WithNetNS reads the routes of the network namespace open at fd instead of
// the caller's.
func WithNetNS(fd int) Option { return func(o *options) { o.netnsFd = fd } }

// New opens a netlink socket for reading routes. Reading routes needs no
// privileges.
func New(opts ...Option) (*Kernel, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var h *vnl.Handle
	var err error
	if o.netnsFd > 0 {
		h, err = vnl.NewHandleAt(netns.NsHandle(o.netnsFd), unix.NETLINK_ROUTE)
	} else {
		h, err = vnl.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open route netlink socket: %w", err)
	}
	return &Kernel{h: h}, nil
}

// Close releases the socket.
func (k *Kernel) Close() { k.h.Close() }

// Read lists the routes of every table and classifies them. A dump that the
// kernel interrupts (the table changed meanwhile) is read again.
func (k *Kernel) Read(ctx context.Context) (*vip.LocalNets, error) {
	var routes []Route
	for attempt := 0; ; attempt++ {
		var err error
		routes, err = k.routes()
		if err == nil {
			break
		}
		if !errors.Is(err, vnl.ErrDumpInterrupted) || attempt == 4 || ctx.Err() != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
	}
	return Classify(routes), nil
}

func (k *Kernel) routes() ([]Route, error) {
	var out []Route
	for _, fam := range []int{vnl.FAMILY_V4, vnl.FAMILY_V6} {
		list, err := k.h.RouteListFiltered(fam, &vnl.Route{Table: unix.RT_TABLE_UNSPEC}, vnl.RT_FILTER_TABLE)
		if err != nil {
			return nil, err
		}
		for _, r := range list {
			dst, ok := prefixOf(r.Dst, fam)
			if !ok {
				continue
			}
			gw := r.Gw != nil || r.Via != nil
			for _, nh := range r.MultiPath {
				if nh.Gw != nil || nh.Via != nil {
					gw = true
				}
			}
			out = append(out, Route{Dst: dst, Type: r.Type, Scope: int(r.Scope), Protocol: int(r.Protocol), Gateway: gw})
		}
	}
	return out, nil
}

// prefixOf converts a route's destination; nil is the default route.
func prefixOf(n *net.IPNet, fam int) (netip.Prefix, bool) {
	if n == nil {
		if fam == vnl.FAMILY_V4 {
			return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
		}
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0), true
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if a.Is4In6() && bits == 32 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones), true
}
