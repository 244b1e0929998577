// Package controller is `l4lb controller` (DESIGN section 10): of any
// number of instances, one is elected through etcd; the leader reads the
// sources, computes the desired state once for the cluster (allocating
// named VIP addresses, which it keeps in etcd), and writes the keys that
// changed, each transaction guarded by its leadership.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// Config is what a controller needs.
type Config struct {
	Client  *clientv3.Client
	Layout  cluster.Layout
	TTL     time.Duration // session (lease) TTL; 5 s when zero; rounded up to seconds
	Sources []source.Watcher
	Model   vip.Config // pools, domain, resolver; Previous comes from etcd
	// Name is this controller in the election value (host name, address).
	Name    string
	Metrics *Metrics // nil: not measured
	Logger  *slog.Logger
	// Runner paces the reads of the sources while leading.
	Runner runner.Options
}

// Status is what the controller did last, for the API.
type Status struct {
	Session   bool      // it holds an etcd session (campaigning or leading)
	Leader    bool      // it leads
	Written   bool      // a state was written in the current term
	LastWrite time.Time // end of the last successful write
	LastError string
	Stale     bool // the sources failed: etcd keeps the last state written
	State     vip.State
	Problems  []vip.Problem
}

// Controller is one controller instance.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	status atomic.Pointer[Status]
}

// New returns a controller.
func New(cfg Config) *Controller {
	if cfg.TTL <= 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Controller{cfg: cfg, log: cfg.Logger}
	c.status.Store(&Status{})
	return c
}

// Status returns what the controller did last.
func (c *Controller) Status() *Status { return c.status.Load() }

func (c *Controller) update(fn func(*Status)) {
	st := *c.status.Load()
	fn(&st)
	c.status.Store(&st)
}

// Run campaigns, leads while elected, and campaigns again when it loses its
// session, until ctx is done. It returns nil then.
func (c *Controller) Run(ctx context.Context) error {
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		err := c.term(ctx)
		c.cfg.Metrics.leader.Set(0)
		c.update(func(s *Status) { s.Session, s.Leader, s.Written = false, false, false })
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			c.log.Warn("etcd session ended; campaigning again", "err", err, "retryIn", backoff)
			c.update(func(s *Status) { s.LastError = err.Error() })
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

// term is one session: campaign, then lead until the session or the
// leadership is lost.
func (c *Controller) term(ctx context.Context) error {
	ttl := int((c.cfg.TTL + time.Second - 1) / time.Second)
	s, err := concurrency.NewSession(c.cfg.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer s.Close()
	c.update(func(st *Status) { st.Session = true })

	// Everything of this term stops when the session ends: its lease
	// expired (the process was stopped, etcd was cut off) or it was closed.
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.Done():
			cancel()
		case <-tctx.Done():
		}
	}()

	e := concurrency.NewElection(s, c.cfg.Layout.Leader())
	c.log.Info("campaigning", "election", c.cfg.Layout.Leader(), "ttl", ttl)
	if err := e.Campaign(tctx, c.cfg.Name); err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			return errors.New("etcd session lost while campaigning")
		}
		return fmt.Errorf("campaign: %w", err)
	}
	c.cfg.Metrics.leader.Set(1)
	c.cfg.Metrics.elections.Inc()
	c.update(func(st *Status) { st.Leader = true })
	c.log.Info("leading", "key", e.Key(), "rev", e.Rev())
	err = c.lead(tctx, e.Key(), e.Rev())
	c.cfg.Metrics.leader.Set(0)
	c.update(func(st *Status) { st.Leader = false })
	if ctx.Err() == nil && tctx.Err() != nil {
		err = errors.New("etcd session lost while leading")
	}
	if ctx.Err() != nil {
		// Shutting down: step down at once so that another leads without
		// waiting for the lease to expire.
		rctx, done := context.WithTimeout(context.Background(), 2*time.Second)
		_ = e.Resign(rctx)
		done()
	}
	c.log.Info("not leading any more", "err", err)
	return err
}

// lead reads the sources and writes etcd until ctx is done or a write finds
// that this controller no longer leads.
func (c *Controller) lead(ctx context.Context, key string, rev int64) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w := NewWriter(c.cfg.Client, c.cfg.Layout, key, rev, c.cfg.Metrics)
	var prev vip.Allocations
	loaded := false
	conf := cluster.Config{Pool4: c.cfg.Model.Pool4, Pool6: c.cfg.Model.Pool6, Domain: c.cfg.Model.Domain}
	if conf.Domain == "" {
		conf.Domain = vip.DefaultDomain
	}
	if !conf.Pool4.IsValid() {
		conf.Pool4 = vip.DefaultPool4
	}
	if !conf.Pool6.IsValid() {
		conf.Pool6 = vip.DefaultPool6
	}
	m := c.cfg.Metrics

	write := func(ctx context.Context, why runner.Reason) error {
		if !loaded {
			known, err := w.Load(ctx)
			if err != nil {
				return fmt.Errorf("read etcd: %w", err)
			}
			prev = c.allocations(known)
			loaded = true
		}
		snap, err := source.LoadAll(ctx, c.cfg.Sources)
		if err != nil {
			m.sourceStale.Set(1)
			m.syncs.WithLabelValues("source_error").Inc()
			c.update(func(st *Status) { st.Stale, st.LastError = true, err.Error() })
			return err
		}
		m.sourceStale.Set(0)
		model := c.cfg.Model
		model.Previous = prev
		state, problems := vip.Desired(snap.Apps, model)
		problems = append(problems, snap.Problems...)
		stats, err := w.Write(ctx, c.cfg.Layout.Desired(conf, state))
		if err != nil {
			m.syncs.WithLabelValues("write_error").Inc()
			c.update(func(st *Status) { st.LastError = err.Error() })
			if errors.Is(err, ErrNotLeader) {
				cancel(err)
			}
			return err
		}
		prev = state.Allocations
		m.syncs.WithLabelValues("ok").Inc()
		m.vips.Set(float64(len(state.VIPs)))
		m.problems.Set(float64(len(problems)))
		c.update(func(st *Status) {
			st.Written, st.LastWrite, st.LastError, st.Stale = true, time.Now(), "", false
			st.State, st.Problems = state, problems
		})
		if stats.Txns > 0 {
			c.log.Info("wrote", "puts", stats.Puts, "deletes", stats.Deletes, "txns", stats.Txns, "vips", len(state.VIPs),
				"problems", len(problems), "why", why.String())
		}
		return nil
	}
	run := runner.New(func(ctx context.Context, why runner.Reason) error {
		err := write(ctx, why)
		if err != nil && ctx.Err() == nil {
			c.log.Error("sync to etcd failed", "err", err, "why", why.String())
		}
		return err
	}, c.cfg.Runner)
	var wg sync.WaitGroup
	for _, s := range c.cfg.Sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Watch(ctx, run.Trigger); err != nil && ctx.Err() == nil {
				c.log.Error("watch source stopped", "source", s.String(), "err", err)
			}
		}()
	}
	err := run.Run(ctx)
	cancel(nil)
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, ErrNotLeader) {
		return cause
	}
	return err
}

// allocations reads the named VIP addresses kept in etcd, so that a new
// leader gives every living name the address it had. A bad value is
// logged and skipped: the name gets an address afresh.
func (c *Controller) allocations(known map[string]string) vip.Allocations {
	out := vip.Allocations{V4: map[string]netip.Addr{}, V6: map[string]netip.Addr{}}
	for k, v := range known {
		name, err := c.cfg.Layout.ParseAllocKey(k)
		if err != nil {
			continue
		}
		a, err := cluster.DecodeAlloc([]byte(v))
		if err != nil {
			c.log.Warn("skipping a bad allocation in etcd", "key", k, "err", err)
			continue
		}
		if a.IP4.IsValid() {
			out.V4[name] = a.IP4
		}
		if a.IP6.IsValid() {
			out.V6[name] = a.IP6
		}
	}
	return out
}
