package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// Interface is the conntrack table as l4lb uses it: list, then delete
// exactly what Stale chose. Kernel implements it over netlink, Fake in
// memory.
type Interface interface {
	// Flows returns the DNATed flows of the table, IPv4 and IPv6. Flows that
	// were not DNATed are never stale and may be left out.
	Flows(ctx context.Context) ([]Flow, error)
	// FlowsFrom returns the DNATed flows whose reply source address is one
	// of addrs: the flows of those backends.
	FlowsFrom(ctx context.Context, addrs []netip.Addr) ([]Flow, error)
	// Delete deletes each flow's entry, as listed: the entry in the flow's
	// zone whose reply tuple is the flow's, which names its backend, so that
	// a new flow that took the original tuple since the listing (to another
	// backend) is left alone. An entry that is already gone is neither
	// counted nor an error. Entries that could not be deleted for another
	// reason are reported with a *DeleteError after the others were tried.
	Delete(ctx context.Context, flows []Flow) (deleted int, err error)
}

// DeleteError reports the entries that Delete could not delete; every other
// entry was deleted or already gone.
type DeleteError struct {
	Failed int   // entries not deleted
	Err    error // the first failure
}

func (e *DeleteError) Error() string {
	return fmt.Sprintf("%d conntrack entries not deleted, first: %v", e.Failed, e.Err)
}

func (e *DeleteError) Unwrap() error { return e.Err }

// Result is what a cleanup pass did.
type Result struct {
	Full    bool // every flow was looked at, not only the suspects'
	Flows   int  // flows listed
	Stale   int  // flows chosen for deletion
	Deleted int  // entries deleted (the others were already gone or Failed)
	Failed  int  // entries that could not be deleted

	Dump, Select, Delete time.Duration // time spent listing, choosing, deleting
}

// PortLister is an Interface that can narrow a listing to backends'
// ports, not only their addresses (Kernel).
type PortLister interface {
	// FlowsOf returns the DNATed flows whose reply comes from one of the
	// backends, in its protocol.
	FlowsOf(ctx context.Context, backends []Suspect) ([]Flow, error)
}

// Cleanup lists the flows (only the suspects' when opts.Suspects is set),
// chooses the stale ones with Stale and deletes them. Call it right after
// the ruleset that stopped sending new flows to those backends is in the
// kernel.
func Cleanup(ctx context.Context, k Interface, s vip.State, opts Options) (Result, error) {
	r := Result{Full: len(opts.Suspects) == 0}
	t := time.Now()
	var flows []Flow
	var err error
	if r.Full {
		flows, err = k.Flows(ctx)
	} else if pl, ok := k.(PortLister); ok && len(opts.Backends) > 0 {
		flows, err = pl.FlowsOf(ctx, opts.Backends)
	} else {
		flows, err = k.FlowsFrom(ctx, opts.Suspects)
	}
	r.Dump = time.Since(t)
	if err != nil {
		return r, fmt.Errorf("list conntrack flows: %w", err)
	}
	r.Flows = len(flows)

	t = time.Now()
	stale := Stale(flows, s, opts)
	r.Select = time.Since(t)
	r.Stale = len(stale)
	if len(stale) == 0 {
		return r, nil
	}

	t = time.Now()
	r.Deleted, err = k.Delete(ctx, stale)
	r.Delete = time.Since(t)
	if de, ok := errors.AsType[*DeleteError](err); ok {
		r.Failed = de.Failed
	}
	if err != nil {
		return r, fmt.Errorf("delete stale conntrack flows: %w", err)
	}
	return r, nil
}

// Cleaner runs the cleanup passes of a sync loop: a full pass the first
// time and whenever a pass failed, and otherwise a pass narrowed to the
// backends that lost their place since the last successful pass. It is
// owned by the sync loop's goroutine and not safe for concurrent use.
type Cleaner struct {
	k       Interface
	flush   bool
	metrics *Metrics

	prev     vip.State
	started  bool
	full     bool
	suspects map[netip.Addr]bool
	backends map[Suspect]bool // the suspects' backends, when every pass since the last good one knew them
	precise  bool             // backends holds every suspect
	former   map[netip.Addr]bool
}

// NewCleaner returns a Cleaner over k; metrics may be nil.
func NewCleaner(k Interface, flushUnhealthy bool, metrics *Metrics) *Cleaner {
	return &Cleaner{k: k, flush: flushUnhealthy, metrics: metrics, precise: true,
		suspects: map[netip.Addr]bool{}, backends: map[Suspect]bool{}, former: map[netip.Addr]bool{}}
}

// Applied is called after every successful apply of s to the kernel (the
// ruleset no longer sends new flows where s says not to). It deletes what
// the change since the previous call made stale, or everything stale after
// a start or a failed pass. A pass with nothing to look at returns at once.
func (c *Cleaner) Applied(ctx context.Context, s vip.State) (Result, error) {
	if c.started {
		sus, former := Lost(c.prev, s, c.flush)
		for _, a := range sus {
			c.suspects[a] = true
		}
		if len(sus) > 0 {
			c.precise = false // addresses only
		}
		for _, a := range former {
			c.former[a] = true
		}
	} else {
		c.full = true
	}
	c.prev, c.started = s, true
	if !c.full && len(c.suspects) == 0 {
		return Result{}, nil
	}
	return c.pass(ctx, s)
}

// Changed is Applied when the caller knows what changed: before lists the
// VIPs that changed or went, as they were; s is the state now. Its cost is
// that of the change, not of the state. The first call is a full pass.
func (c *Cleaner) Changed(ctx context.Context, s vip.State, before []vip.VIP) (Result, error) {
	if !c.started {
		c.started, c.full = true, true
	}
	backends := LostBackends(before, s, c.flush)
	for _, b := range backends {
		c.backends[b] = true
	}
	for _, a := range suspectAddrs(backends) {
		c.suspects[a] = true
	}
	former := formerVIPs(before, s)
	for _, a := range former {
		c.former[a] = true
	}
	c.prev = s
	if !c.full && len(c.suspects) == 0 {
		return Result{}, nil
	}
	return c.pass(ctx, s)
}

// Reconcile runs a full pass against s now, whatever changed: for the
// periodic resync, which also catches a flow that was DNATed to a removed
// backend while its ruleset change was being applied. changed, when given,
// lists the VIPs that changed since the last call, as they were (for a
// caller whose states are views of one changing list); otherwise the
// previous state is compared with s.
func (c *Cleaner) Reconcile(ctx context.Context, s vip.State, changed ...[]vip.VIP) (Result, error) {
	if c.started {
		var former []netip.Addr
		if len(changed) > 0 {
			_, former = LostIn(changed[0], s, c.flush)
		} else {
			_, former = Lost(c.prev, s, c.flush)
		}
		for _, a := range former {
			c.former[a] = true
		}
	}
	c.prev, c.started, c.full = s, true, true
	return c.pass(ctx, s)
}

func (c *Cleaner) pass(ctx context.Context, s vip.State) (Result, error) {
	opts := Options{FlushUnhealthy: c.flush, FormerVIPs: sortedAddrs(c.former)}
	if !c.full {
		opts.Suspects = sortedAddrs(c.suspects)
		if c.precise {
			opts.Backends = sortedSuspects(c.backends)
		}
	}
	t := time.Now()
	r, err := Cleanup(ctx, c.k, s, opts)
	c.metrics.observe(r, err, time.Since(t))
	if err != nil {
		c.full = true
		return r, err
	}
	c.full, c.precise = false, true
	clear(c.suspects)
	clear(c.backends)
	clear(c.former)
	return r, nil
}
