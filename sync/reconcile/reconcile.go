// Package reconcile is l4lb's sync loop: it reads the sources, computes the
// desired state, and makes the kernel hold it. Inputs are triggers, never
// the data; one goroutine rebuilds the whole desired state and applies the
// difference. Nothing is written before the first good read of the sources,
// and a source that fails keeps the last good state.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/dns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/nat/forward"
	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// Config is what the reconciler needs.
type Config struct {
	Sources []source.Watcher
	NAT     nat.Interface
	Forward forward.Interface // nil: iptables is left alone
	// DNS answers for the names of the VIPs; nil: no DNS. A name is
	// published only once its rules are in the kernel, and withdrawn before
	// they are removed.
	DNS     Publisher
	DNSZone string // the zone of the names, vip.DefaultDomain when empty
	// Conntrack deletes the flows of backends that stopped serving; nil
	// leaves conntrack alone.
	Conntrack *conntrack.Cleaner
	// ConntrackFullEvery bounds how often a full sync also runs a full
	// conntrack pass (which lists every flow); the passes after each change
	// look only at the backends that lost their place. 5 minutes when zero.
	ConntrackFullEvery time.Duration
	Metrics            *Metrics   // nil: not measured
	Model              vip.Config // pools, domain, resolver; Previous is managed here
	Table              string
	StateDir           string // where allocations persist; empty keeps them in memory
	Logger             *slog.Logger
	Now                func() time.Time // time.Now when nil
}

// Publisher is what the DNS server offers the loop.
type Publisher interface {
	Publish(z *dns.Zone)
}

// Status is the outcome of the last sync, for the API and health checks.
type Status struct {
	Synced       bool      // a sync has reached the kernel
	LastSuccess  time.Time // when the last successful sync finished
	LastAttempt  time.Time
	LastError    string // of the last sync, empty when it succeeded
	Stale        bool   // the sources failed; the last good state is kept
	SourceErrors int    // consecutive source failures
	State        vip.State
	Problems     []vip.Problem
	Result       nat.Result
}

// Reconciler syncs the desired state into the kernel.
type Reconciler struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex // serialises syncs
	good      *goodState // desired state from the last good read of the sources
	alloc     vip.Allocations
	allocErr  error
	applied   uint64    // fingerprint of the last ruleset in the kernel; 0 when unknown
	unchecked string    // last report of iptables backends that cannot be inspected
	ctFullAt  time.Time // when the last full conntrack pass ran
	published *dns.Zone // what DNS answers from; nil before the first publish
	status    atomic.Pointer[Status]
}

// goodState is the desired state the last good read of the sources gave.
// The apps themselves are not kept: a source that fails keeps this.
type goodState struct {
	state    vip.State
	problems []vip.Problem
}

// New returns a reconciler. It loads the persisted allocations; a corrupt
// file is reported and addresses are computed afresh (the hash gives the
// same addresses unless names collided).
func New(cfg Config) *Reconciler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	r := &Reconciler{cfg: cfg, log: cfg.Logger}
	if cfg.StateDir != "" {
		r.alloc, r.allocErr = vip.LoadAllocations(cfg.StateDir)
		if r.allocErr != nil {
			r.log.Warn("cannot read allocations; computing addresses afresh", "err", r.allocErr)
			r.alloc = vip.Allocations{}
		}
	}
	r.status.Store(&Status{})
	return r
}

// Status returns the outcome of the last sync.
func (r *Reconciler) Status() *Status { return r.status.Load() }

// ErrNoGoodState is returned while no read of the sources has succeeded:
// nothing is written to the kernel before that.
var ErrNoGoodState = errors.New("no good read of the sources yet")

// Sync reads the sources and applies the desired state. full reads the
// kernel back and repairs drift. When the sources fail, the last good state
// is applied again (so drift is still repaired) and the error is returned.
func (r *Reconciler) Sync(ctx context.Context, full bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.cfg.Metrics
	start := time.Now()
	kind := "incremental"
	if full {
		kind = "full"
	}
	defer func() { m.syncDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds()) }()
	st := *r.Status()
	st.LastAttempt = r.cfg.Now()

	snap, srcErr := source.LoadAll(ctx, r.cfg.Sources)
	if srcErr == nil {
		r.good = r.desired(snap)
		st.Stale, st.SourceErrors = false, 0
		m.sourceStale.Set(0)
	} else {
		st.Stale = true
		st.SourceErrors++
		m.sourceErrors.Inc()
		m.sourceStale.Set(1)
		m.syncFailures.WithLabelValues("source").Inc()
		if r.good == nil {
			st.LastError = srcErr.Error()
			r.status.Store(&st)
			return fmt.Errorf("%w: %w", ErrNoGoodState, srcErr)
		}
		r.log.Warn("sources failed; keeping the last good state", "err", srcErr, "failures", st.SourceErrors)
	}

	state, problems := r.good.state, r.good.problems

	rs := nat.Compile(state, r.cfg.Table)
	fp := rs.Fingerprint()
	var zone *dns.Zone
	if r.cfg.DNS != nil {
		// Withdraw the names that are going before their rules go.
		zone = dns.Records(state, r.cfg.DNSZone)
		if r.published != nil {
			r.publish(r.published.Intersect(zone))
		}
	}
	res, err := r.cfg.NAT.Apply(ctx, rs, full)
	if err != nil {
		r.applied = 0
		m.syncFailures.WithLabelValues("nat").Inc()
		st.LastError = err.Error()
		r.status.Store(&st)
		return fmt.Errorf("apply: %w", err)
	}
	m.observeNAT(res, r.applied != fp)
	if res.ReadBack && res.Changed() && r.applied == fp {
		r.log.Warn("repaired drift: the kernel differed from what l4lb programmed", "elements", res.Elements,
			"chains", res.Chains, "rebuilt", res.Rebuilt, "routes", res.Routes)
	}
	r.applied = fp
	r.syncForward(ctx, rs)
	m.observeState(state, len(problems))
	m.lastSuccess.Set(float64(r.cfg.Now().Unix()))
	first := !st.Synced
	st.Synced = true
	st.LastSuccess = r.cfg.Now()
	st.State, st.Problems, st.Result = state, problems, res
	st.LastError = ""
	if srcErr != nil {
		st.LastError = srcErr.Error()
	}
	r.status.Store(&st)
	if res.Changed() || first {
		r.log.Info("synced", "first", first, "vips", len(state.VIPs), "problems", len(problems), "full", full,
			"readBack", res.ReadBack, "rebuilt", res.Rebuilt, "batches", res.Batches, "elements", res.Elements,
			"chains", res.Chains, "routes", res.Routes)
	}
	ctErr := r.cleanConntrack(ctx, state, full)
	if zone != nil {
		// The rules are in: the new names may be answered.
		r.publish(zone)
	}
	if ctErr != nil {
		// The rules are right; the retry (a full sync) runs a full pass.
		m.syncFailures.WithLabelValues("conntrack").Inc()
		st.LastError = ctErr.Error()
		r.status.Store(&st)
		return ctErr
	}
	return srcErr
}

func (r *Reconciler) publish(z *dns.Zone) {
	r.cfg.DNS.Publish(z)
	r.published = z
}

// cleanConntrack deletes the conntrack entries of backends that the change
// just applied took out of service (unhealthy with --flush-unhealthy, gone,
// terminal), so that their clients get a reset or move on at their next
// packet. Draining backends keep theirs.
func (r *Reconciler) cleanConntrack(ctx context.Context, state vip.State, full bool) error {
	c := r.cfg.Conntrack
	if c == nil {
		return nil
	}
	every := r.cfg.ConntrackFullEvery
	if every <= 0 {
		every = 5 * time.Minute
	}
	clean := c.Applied
	if full && time.Since(r.ctFullAt) >= every {
		clean = c.Reconcile
	}
	res, err := clean(ctx, state)
	if res.Full && err == nil {
		r.ctFullAt = time.Now()
	}
	if err != nil {
		return fmt.Errorf("conntrack cleanup: %w", err)
	}
	if res.Deleted > 0 || res.Failed > 0 {
		r.log.Info("deleted conntrack entries of backends out of service", "deleted", res.Deleted, "failed", res.Failed,
			"full", res.Full, "listed", res.Flows, "took", (res.Dump + res.Select + res.Delete).String())
	}
	return nil
}

// desired computes the desired state of a good read and persists new
// address allocations.
func (r *Reconciler) desired(snap source.Snapshot) *goodState {
	model := r.cfg.Model
	model.Previous = r.alloc
	state, problems := vip.DesiredWith(snap.Apps, snap.Decls, model)
	problems = append(append([]vip.Problem{}, snap.Problems...), problems...)
	if !state.Allocations.Equal(r.alloc) {
		if r.cfg.StateDir != "" {
			if err := vip.SaveAllocations(r.cfg.StateDir, state.Allocations); err != nil {
				// Keep going: the kernel must follow the sources; the next
				// sync tries to save again.
				r.log.Error("cannot save allocations", "err", err)
			} else {
				r.alloc = state.Allocations
			}
		} else {
			r.alloc = state.Allocations
		}
	}
	return &goodState{state: state, problems: problems}
}

// syncForward keeps l4lb's iptables FORWARD rules where a FORWARD chain
// blocks (Docker sets its policy to DROP). A failure there does not fail the
// sync: the table is right, and the next sync tries again.
func (r *Reconciler) syncForward(ctx context.Context, rs *nat.Ruleset) {
	if r.cfg.Forward == nil {
		return
	}
	res, err := r.cfg.Forward.Sync(ctx, forward.WantFor(rs))
	m := r.cfg.Metrics
	m.observeForward(res, err)
	if err != nil {
		r.log.Error("cannot keep the iptables FORWARD rules", "err", err)
	}
	if res.Changed() {
		r.log.Info("iptables FORWARD rules changed", "active", strings.Join(res.Active, ","), "changes", res.Changes)
	}
	if u := strings.Join(res.Unchecked, ","); u != r.unchecked {
		r.unchecked = u
		if u != "" {
			r.log.Warn("iptables filter tables in use without a binary to inspect them", "backends", u)
		}
	}
}

// Run syncs at once and then whenever a source reports a change (at most
// once per opts.MinInterval), at least every opts.Resync (a full sync that
// reads the kernel back and repairs drift), and after failures with
// exponential backoff (again full, since what the kernel holds is in
// doubt). It returns when ctx is done; the rules stay in place.
func (r *Reconciler) Run(ctx context.Context, opts runner.Options) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	run := runner.New(func(ctx context.Context, why runner.Reason) error {
		full := why&(runner.Initial|runner.Resync|runner.Retry) != 0
		err := r.Sync(ctx, full)
		if err != nil && ctx.Err() == nil {
			r.log.Error("sync failed", "err", err, "why", why.String())
		}
		return err
	}, opts)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, s := range r.cfg.Sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Watch(ctx, run.Trigger); err != nil && ctx.Err() == nil {
				r.log.Error("watch source stopped", "source", s.String(), "err", err)
			}
		}()
	}
	err := run.Run(ctx)
	cancel()
	return err
}
