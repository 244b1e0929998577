package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultUpstreamTimeout is how long one upstream gets to answer before the
// next one is asked as well.
const DefaultUpstreamTimeout = 2 * time.Second

// DefaultPort is the port of listen and upstream addresses given without one.
const DefaultPort = 53

// Config configures a Server (and a Handler).
type Config struct {
	// Listen holds the addresses to serve on, over UDP and TCP: "IP:PORT",
	// "[IPv6]:PORT", or an address alone for port 53. Port 0 picks a free
	// port, the same for every socket of that address. A Server needs at
	// least one; empty means DNS is off and no Server is built.
	Listen []string
	// Upstreams are the servers that names outside the zone are forwarded
	// to, in order of preference, in the same forms as Listen. Without
	// upstreams such names are REFUSED.
	Upstreams []string
	// Zone is the zone of named VIPs, vip.DefaultDomain when empty.
	Zone string
	// UpstreamTimeout is how long one upstream gets before the next one is
	// asked too (earlier ones may still answer); the last one gets as long
	// before the client gets SERVFAIL. DefaultUpstreamTimeout when zero.
	UpstreamTimeout time.Duration
	// Registerer takes the l4lb_dns_* metrics; nil registers nothing.
	Registerer prometheus.Registerer
}

// parsedConfig is a Config checked and in typed form.
type parsedConfig struct {
	listen          []netip.AddrPort
	upstreams       []netip.AddrPort
	origin          string
	upstreamTimeout time.Duration
}

func (cfg Config) parse() (parsedConfig, error) {
	c := parsedConfig{origin: normOrigin(cfg.Zone), upstreamTimeout: cfg.UpstreamTimeout}
	if _, ok := mdns.IsDomainName(c.origin); !ok || strings.Contains(c.origin, "..") {
		return c, fmt.Errorf("dns zone %q is not a domain name", cfg.Zone)
	}
	if c.upstreamTimeout < 0 {
		return c, fmt.Errorf("dns upstream timeout %s is negative", c.upstreamTimeout)
	}
	if c.upstreamTimeout == 0 {
		c.upstreamTimeout = DefaultUpstreamTimeout
	}
	var errs []error
	for _, s := range cfg.Listen {
		ap, err := parseAddrPort(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("dns listen: %w", err))
			continue
		}
		c.listen = append(c.listen, ap)
	}
	for _, s := range cfg.Upstreams {
		ap, err := parseAddrPort(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("dns upstream: %w", err))
			continue
		}
		if ap.Port() == 0 || ap.Addr().IsUnspecified() {
			errs = append(errs, fmt.Errorf("dns upstream %s: needs an address and a port", s))
			continue
		}
		for _, l := range c.listen {
			if loops(l, ap) {
				errs = append(errs, fmt.Errorf("dns upstream %s is this server (listening on %s): queries would loop", s, l))
			}
		}
		c.upstreams = append(c.upstreams, ap)
	}
	return c, errors.Join(errs...)
}

// loops reports whether queries forwarded to upstream would reach a server
// listening on listen: the same address, or the same port on a wildcard
// listener and a local upstream. Other local addresses are not detected.
func loops(listen, upstream netip.AddrPort) bool {
	if listen.Port() != upstream.Port() {
		return false
	}
	l, u := listen.Addr(), upstream.Addr()
	if l == u {
		return true
	}
	return l.IsUnspecified() && (u.IsLoopback() || u.IsUnspecified())
}

// parseAddrPort reads "IP:PORT", "[IPv6]:PORT" or a bare IP (port 53).
func parseAddrPort(s string) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not IP, IP:PORT or [IPv6]:PORT", s)
	}
	return netip.AddrPortFrom(a.Unmap(), DefaultPort), nil
}
