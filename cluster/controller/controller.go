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
	Sources []source.Source
	// Model: pools, domain, resolver; Previous comes from etcd. Hook for
	// the IP VIP guard (issue 15): the controller applies the parts every
	// agent shares (static ranges, --ip-vip-ranges, task hosts); the
	// agent-local part (an agent's own addresses and connected networks)
	// cannot be known here, so each agent applies it in its own pipeline,
	// where the IP VIPs read from etcd arrive as declarations like any
	// other (cluster.Decls).
	Model vip.Config
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

// lead runs the sources into a fresh index (seeded with the allocations
// kept in etcd) and writes etcd until ctx is done or a write finds that
// this controller no longer leads. The first write, every resync and every
// retry compare the whole desired state with what etcd holds; the writes
// in between send only the keys of the VIPs a change reached.
func (c *Controller) lead(ctx context.Context, key string, rev int64) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	m := c.cfg.Metrics
	w := NewWriter(c.cfg.Client, c.cfg.Layout, key, rev, m)
	known, err := c.load(ctx, w)
	if err != nil {
		return err
	}
	model := c.cfg.Model
	model.Previous = c.allocations(known)
	conf := cluster.Config{Pool4: model.Pool4, Pool6: model.Pool6, Domain: model.Domain}
	if conf.Domain == "" {
		conf.Domain = vip.DefaultDomain
	}
	if !conf.Pool4.IsValid() {
		conf.Pool4 = vip.DefaultPool4
	}
	if !conf.Pool6.IsValid() {
		conf.Pool6 = vip.DefaultPool6
	}
	p := newPipeline(model, len(c.cfg.Sources))
	written := false

	write := func(ctx context.Context, why runner.Reason) error {
		if why.Has(runner.Resync) {
			for _, s := range c.cfg.Sources {
				s.Relist()
			}
		}
		ready, srcErr := p.take(c.cfg.Sources)
		if srcErr != nil {
			m.sourceStale.Set(1)
			c.update(func(st *Status) { st.Stale, st.LastError = true, srcErr.Error() })
		} else {
			m.sourceStale.Set(0)
			c.update(func(st *Status) { st.Stale = false })
		}
		if !ready {
			return nil // the first list of every source triggers the next run
		}
		ch := p.index.Commit()
		state := p.index.State()
		problems := p.index.Problems()
		full := !written || why&(runner.Initial|runner.Resync|runner.Retry) != 0
		if !full && ch.Empty() {
			return nil
		}
		var stats Stats
		var err error
		if full {
			if why&(runner.Resync|runner.Retry) != 0 {
				// Read etcd again: keys written behind the leader's back
				// (by hand, by a deposed leader's last transaction) are
				// put right.
				if _, err := w.Load(ctx); err != nil {
					return fmt.Errorf("read etcd: %w", err)
				}
			}
			stats, err = w.Write(ctx, c.cfg.Layout.Desired(conf, state))
		} else {
			stats, err = w.Apply(ctx, w.changeOps(conf, state, ch))
		}
		if err != nil {
			m.syncs.WithLabelValues("write_error").Inc()
			c.update(func(st *Status) { st.LastError = err.Error() })
			if errors.Is(err, ErrNotLeader) {
				cancel(err)
			}
			return err
		}
		written = true
		m.syncs.WithLabelValues("ok").Inc()
		m.vips.Set(float64(len(state.VIPs)))
		m.problems.Set(float64(len(problems)))
		c.update(func(st *Status) {
			st.Written, st.LastWrite, st.State, st.Problems = true, time.Now(), state, problems
			if srcErr == nil {
				st.LastError = ""
			}
		})
		if stats.Txns > 0 {
			c.log.Info("wrote", "puts", stats.Puts, "deletes", stats.Deletes, "txns", stats.Txns, "vips", len(state.VIPs),
				"problems", len(problems), "full", full, "why", why.String())
		}
		return nil
	}
	run := runner.New(func(ctx context.Context, why runner.Reason) error {
		err := write(ctx, why)
		if err != nil && ctx.Err() == nil {
			c.log.Error("write to etcd failed", "err", err, "why", why.String())
		}
		return err
	}, c.cfg.Runner)
	p.poke = run.Trigger
	var wg sync.WaitGroup
	for i, s := range c.cfg.Sources {
		s.Relist() // a new term starts from a full list
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Run(ctx, model, p.sinks[i]); err != nil && ctx.Err() == nil {
				c.log.Error("source stopped", "source", s.String(), "err", err)
			}
		}()
	}
	err = run.Run(ctx)
	cancel(nil)
	wg.Wait()
	if cause := context.Cause(ctx); errors.Is(cause, ErrNotLeader) {
		return cause
	}
	return err
}

// load reads what etcd holds, retrying until it can or ctx is done.
func (c *Controller) load(ctx context.Context, w *Writer) (map[string]string, error) {
	backoff := 250 * time.Millisecond
	for {
		known, err := w.Load(ctx)
		if err == nil {
			return known, nil
		}
		c.log.Warn("cannot read etcd", "err", err, "retryIn", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
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
