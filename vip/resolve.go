package vip

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// CachingResolver resolves task host names through the system resolver and
// remembers the answers, so that a sync does not wait on DNS for hosts it
// already knows. Failures are remembered for a shorter time.
type CachingResolver struct {
	TTL         time.Duration                                                // how long an answer is kept; 5 minutes when zero
	NegativeTTL time.Duration                                                // how long a failure is kept; 10 seconds when zero
	Timeout     time.Duration                                                // per lookup; 2 seconds when zero
	Lookup      func(ctx context.Context, host string) ([]netip.Addr, error) // the system resolver when nil
	Now         func() time.Time                                             // time.Now when nil

	mu    sync.Mutex
	cache map[string]cacheEntry
}

type cacheEntry struct {
	addrs   []netip.Addr
	err     error
	expires time.Time
}

// LookupHost implements Resolver.
func (r *CachingResolver) LookupHost(host string) ([]netip.Addr, error) {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	r.mu.Lock()
	e, ok := r.cache[host]
	r.mu.Unlock()
	if ok && now().Before(e.expires) {
		return e.addrs, e.err
	}
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	lookup := r.Lookup
	if lookup == nil {
		lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	addrs, err := lookup(ctx, host)
	if err == nil && len(addrs) == 0 {
		err = fmt.Errorf("no address for %s", host)
	}
	ttl := r.TTL
	if ttl == 0 {
		ttl = 5 * time.Minute
	}
	if err != nil {
		ttl = r.NegativeTTL
		if ttl == 0 {
			ttl = 10 * time.Second
		}
		// A host that resolved before keeps its last answer through a
		// passing resolver failure.
		if ok && e.err == nil {
			addrs, err = e.addrs, nil
		}
	}
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[string]cacheEntry{}
	}
	r.cache[host] = cacheEntry{addrs: addrs, err: err, expires: now().Add(ttl)}
	r.mu.Unlock()
	return addrs, err
}
