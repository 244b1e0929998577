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
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// Config is what the reconciler needs.
type Config struct {
	Sources  []source.Source
	NAT      nat.Interface
	Metrics  *Metrics // nil: not measured
	Model    vip.Config // pools, domain, resolver; Previous is managed here
	Table    string
	StateDir string // where allocations persist; empty keeps them in memory
	Logger   *slog.Logger
	Now      func() time.Time // time.Now when nil
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

	mu       sync.Mutex // serialises syncs
	good     *goodState // last good read of the sources
	alloc    vip.Allocations
	allocErr error
	applied  uint64 // fingerprint of the last ruleset in the kernel; 0 when unknown
	status   atomic.Pointer[Status]
}

// goodState is what the last good read of the sources gave.
type goodState struct {
	snap source.Snapshot
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
		r.good = &goodState{snap: snap}
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

	model := r.cfg.Model
	model.Previous = r.alloc
	state, problems := vip.Desired(r.good.snap.Apps, model)
	problems = append(append([]vip.Problem{}, r.good.snap.Problems...), problems...)
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

	rs := nat.Compile(state, r.cfg.Table)
	fp := rs.Fingerprint()
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
	return srcErr
}

// Run syncs at once and then whenever a source reports a change, at least
// every resync period (a full sync that repairs drift), and after failures
// with exponential backoff. It returns when ctx is done; the rules stay.
func (r *Reconciler) Run(ctx context.Context, resync time.Duration) error {
	trigger := make(chan struct{}, 1)
	notify := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, s := range r.cfg.Sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Watch(ctx, notify); err != nil && ctx.Err() == nil {
				r.log.Error("watch source stopped", "source", s.String(), "err", err)
			}
		}()
	}

	const minInterval = 100 * time.Millisecond
	backoff := time.Duration(0)
	full := true // the first sync adopts what the kernel holds
	timer := time.NewTimer(0)
	defer timer.Stop()
	resyncTick := time.NewTicker(resync)
	defer resyncTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-trigger:
		case <-resyncTick.C:
			full = true
		case <-timer.C:
		}
		start := time.Now()
		err := r.Sync(ctx, full)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			backoff = min(max(2*backoff, 250*time.Millisecond), 30*time.Second)
			r.log.Error("sync failed", "err", err, "retryIn", backoff)
			full = true // what the kernel holds is in doubt
			timer.Reset(backoff)
			continue
		}
		backoff, full = 0, false
		// Coalesce bursts of triggers: at most one sync per minInterval.
		if d := minInterval - time.Since(start); d > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
		}
	}
}
