package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// SourceOptions tune an etcd source.
type SourceOptions struct {
	PageSize int // keys per list request; DefaultPageSize when zero
	// Probe is how often the source checks that etcd answers and how far
	// its watch is behind, and how long it waits for the answer; 5 s when
	// zero (a thousand agents probe 200 times a second).
	Probe time.Duration
	// MinRelist bounds how often Relist (the pipeline's --resync) lists
	// again: the watch is reliable, and a thousand agents listing every
	// resync would load etcd with nothing to gain. Lists after a broken
	// watch or a compaction are not bounded. 10 minutes when zero.
	MinRelist time.Duration
	// CheckConfig is called with the config key's value at every list and
	// whenever it changes; an error (flags that disagree) is reported as
	// the source being stale, and the VIPs still flow. nil accepts any.
	CheckConfig func(Config) error
	Metrics     *SourceMetrics // nil: not measured
	Logger      *slog.Logger
}

// Source is the agents' source etcd:URL[,URL] (DESIGN section 10): a
// paginated list of the VIP keys at one revision, delivered with Replace,
// then a watch from the next revision, each event an Update of its key. A
// compacted revision, a broken watch, etcd answering again after an outage,
// or Relist list again. While etcd does not answer, the source says so
// (Stale) and the pipeline keeps its last groups.
type Source struct {
	cli    *clientv3.Client
	layout Layout
	opts   SourceOptions
	name   string
	relist chan struct{}
	config atomic.Pointer[Config]
}

// NewSource returns the source of the VIPs under layout in etcd. name is
// how it shows in logs ("etcd:URL,URL").
func NewSource(cli *clientv3.Client, layout Layout, name string, opts SourceOptions) *Source {
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.Probe <= 0 {
		opts.Probe = 5 * time.Second
	}
	if opts.MinRelist <= 0 {
		opts.MinRelist = 10 * time.Minute
	}
	if opts.Metrics == nil {
		opts.Metrics = NewSourceMetrics(nil)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{cli: cli, layout: layout, opts: opts, name: name, relist: make(chan struct{}, 1)}
}

func (s *Source) String() string { return s.name }

// Relist asks for a full list; it never blocks. Requests within
// SourceOptions.MinRelist of the last list are ignored.
func (s *Source) Relist() {
	select {
	case s.relist <- struct{}{}:
	default:
	}
}

// Config returns the config key's value seen last, if any.
func (s *Source) Config() (Config, bool) {
	c := s.config.Load()
	if c == nil {
		return Config{}, false
	}
	return *c, true
}

// ReadConfig reads the config key once (an agent's flags are checked
// against it at start).
func ReadConfig(ctx context.Context, kv clientv3.KV, l Layout) (Config, error) {
	resp, err := kv.Get(ctx, l.Config())
	if err != nil {
		return Config{}, fmt.Errorf("read %s: %w", l.Config(), err)
	}
	if len(resp.Kvs) == 0 {
		return Config{}, fmt.Errorf("%s is not in etcd: no controller has written yet", l.Config())
	}
	return DecodeConfig(resp.Kvs[0].Value)
}

// errRelist ends a watch: a full list is due.
var errRelist = errors.New("relist requested")

// Run lists and watches until ctx is done.
func (s *Source) Run(ctx context.Context, _ vip.Config, sink source.Sink) error {
	if sink == nil {
		return errors.New("etcd source: sink is nil")
	}
	st := &runState{s: s, sink: sink}
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		rev, err := st.list(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			st.stale(err)
			s.opts.Logger.Warn("etcd list failed", "source", s.name, "err", err, "retryIn", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 250 * time.Millisecond
		reason, err := st.watch(ctx, rev)
		if ctx.Err() != nil {
			break
		}
		s.opts.Metrics.watchRestarts.WithLabelValues(reason).Inc()
		s.opts.Logger.Info("etcd watch ended; listing again", "source", s.name, "reason", reason, "err", err)
		if reason == "reconnected" {
			// Every agent sees etcd come back at once: spread their lists
			// over up to 2 s.
			select {
			case <-ctx.Done():
			case <-time.After(rand.N(min(2*time.Second, s.opts.Probe))):
			}
		}
	}
	return nil
}

// runState is one Run's memory.
type runState struct {
	s        *Source
	sink     source.Sink
	isStale  bool
	applied  atomic.Int64 // revision of everything delivered so far
	cfgErr   error
	listedAt time.Time // when the last list was delivered
}

func (st *runState) stale(err error) {
	if err == nil && st.cfgErr != nil {
		err = st.cfgErr
	}
	if (err != nil) == st.isStale && err == nil {
		return
	}
	st.isStale = err != nil
	st.s.opts.Metrics.stale.Set(b2f(st.isStale))
	st.sink.Stale(err)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// list reads the VIP keys and the config at one revision and delivers
// them with Replace. It returns that revision.
func (st *runState) list(ctx context.Context) (int64, error) {
	s := st.s
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// Pages are decoded on another goroutine while etcd reads the next.
	pages := make(chan []*mvccpb.KeyValue, 4)
	decoded := make(chan []source.Group, 1)
	go func() {
		var groups []source.Group
		for page := range pages {
			for _, kv := range page {
				groups = append(groups, s.layout.VIPGroup(string(kv.Key), kv.Value))
			}
		}
		decoded <- groups
	}()
	rev, err := ListPages(lctx, s.cli, s.layout.VIPs(), s.opts.PageSize, func(page []*mvccpb.KeyValue) { pages <- page })
	close(pages)
	groups := <-decoded
	if err != nil {
		return 0, err
	}
	resp, err := s.cli.Get(lctx, s.layout.Config(), clientv3.WithRev(rev))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", s.layout.Config(), err)
	}
	if len(resp.Kvs) > 0 {
		st.setConfig(resp.Kvs[0].Value)
	}
	if groups == nil {
		groups = []source.Group{}
	}
	st.sink.Replace(groups)
	st.applied.Store(rev)
	st.listedAt = time.Now()
	m := s.opts.Metrics
	m.lists.Inc()
	m.listDuration.Observe(time.Since(start).Seconds())
	m.revision.Set(float64(rev))
	m.lag.Set(0)
	st.stale(nil)
	return rev, nil
}

func (st *runState) setConfig(value []byte) {
	s := st.s
	c, err := DecodeConfig(value)
	if err != nil {
		st.cfgErr = fmt.Errorf("key %s: %w", s.layout.Config(), err)
	} else {
		s.config.Store(&c)
		st.cfgErr = nil
		if s.opts.CheckConfig != nil {
			if err := s.opts.CheckConfig(c); err != nil {
				st.cfgErr = fmt.Errorf("key %s: %w", s.layout.Config(), err)
			}
		}
	}
	if st.cfgErr != nil {
		s.opts.Logger.Error("cluster config rejected", "source", s.name, "err", st.cfgErr)
	}
}

// watch delivers the changes after rev until the watch must be listed
// again; it returns why.
func (st *runState) watch(ctx context.Context, rev int64) (string, error) {
	s := st.s
	m := s.opts.Metrics
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.cli.Watch(wctx, s.layout.Prefix()+"/v1/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))

	// The probe says whether etcd answers, and how far behind the watch is.
	var head atomic.Int64
	head.Store(rev)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	probeErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Every Probe while etcd answers; every second while it does not,
		// so that its return is seen soon.
		wait := s.opts.Probe
		for {
			select {
			case <-wctx.Done():
				return
			case <-time.After(wait):
			}
			pctx, done := context.WithTimeout(wctx, s.opts.Probe)
			resp, err := s.cli.Get(pctx, s.layout.Config(), clientv3.WithCountOnly())
			if err == nil {
				head.Store(resp.Header.Revision)
				// Ask for a progress notification: the watch then knows
				// it has seen everything up to the current revision.
				_ = s.cli.RequestProgress(pctx)
			}
			done()
			if wctx.Err() != nil {
				return
			}
			wait = s.opts.Probe
			if err != nil {
				wait = min(time.Second, s.opts.Probe)
			}
			select {
			case probeErr <- err:
			default:
				// the watch loop has not taken the last result yet
			}
		}
	}()

	down := false // the probe failed since this watch started
	for {
		select {
		case <-ctx.Done():
			return "shutdown", nil
		case <-s.relist:
			if time.Since(st.listedAt) >= s.opts.MinRelist {
				return "relist", errRelist
			}
		case err := <-probeErr:
			if err != nil {
				down = true
				st.stale(fmt.Errorf("etcd does not answer: %w", err))
			} else if down {
				// etcd answers again. The client resumes its watch on its
				// own, but events lost around a reconnect are not always
				// replayed (a compaction at exactly the resume revision
				// drops that revision's deletions): list again.
				return "reconnected", errors.New("etcd answers again after an outage")
			} else {
				st.stale(nil)
				if lag := head.Load() - st.applied.Load(); lag > 0 {
					m.lag.Set(float64(lag))
				} else {
					m.lag.Set(0)
				}
			}
		case wr, ok := <-wch:
			if !ok {
				return "closed", errors.New("watch channel closed")
			}
			s.opts.Logger.Debug("etcd watch response", "source", s.name, "revision", wr.Header.Revision, "events", len(wr.Events),
				"progress", wr.IsProgressNotify(), "compactRevision", wr.CompactRevision, "canceled", wr.Canceled, "err", wr.Err())
			if wr.CompactRevision != 0 {
				return "compacted", fmt.Errorf("revision %d compacted (at %d)", st.applied.Load()+1, wr.CompactRevision)
			}
			if err := wr.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return "compacted", err
				}
				return "error", err
			}
			st.apply(wr)
			if wr.Header.Revision > st.applied.Load() {
				st.applied.Store(wr.Header.Revision)
			}
			m.revision.Set(float64(st.applied.Load()))
			if h := head.Load(); h > st.applied.Load() {
				m.lag.Set(float64(h - st.applied.Load()))
			} else {
				head.Store(st.applied.Load())
				m.lag.Set(0)
			}
			st.stale(nil)
		}
	}
}

// apply delivers the events of one watch response as one Update: the last
// event of a key wins.
func (st *runState) apply(wr clientv3.WatchResponse) {
	if len(wr.Events) == 0 {
		return
	}
	s := st.s
	l := s.layout
	changed := map[string]source.Group{}
	gone := map[string]bool{}
	var order []string
	for _, ev := range wr.Events {
		k := string(ev.Kv.Key)
		switch {
		case k == l.Config():
			if ev.Type == clientv3.EventTypePut {
				st.setConfig(ev.Kv.Value)
			}
			continue
		case !strings.HasPrefix(k, l.VIPs()):
			continue // allocations, the election: not the agents' business
		}
		if _, seen := changed[k]; !seen && !gone[k] {
			order = append(order, k)
		}
		if ev.Type == clientv3.EventTypeDelete {
			delete(changed, k)
			gone[k] = true
			continue
		}
		delete(gone, k)
		changed[k] = l.VIPGroup(k, ev.Kv.Value)
	}
	var groups []source.Group
	var keys []source.Key
	for _, k := range order {
		if g, ok := changed[k]; ok {
			groups = append(groups, g)
		} else if gone[k] {
			keys = append(keys, source.Key(k))
		}
	}
	s.opts.Metrics.events.Add(float64(len(wr.Events)))
	if len(groups)+len(keys) > 0 {
		st.sink.Update(groups, keys)
	}
}

// SourceMetrics are the etcd source's metrics.
type SourceMetrics struct {
	watchRestarts *prometheus.CounterVec
	lists         prometheus.Counter
	listDuration  prometheus.Histogram
	events        prometheus.Counter
	revision      prometheus.Gauge
	lag           prometheus.Gauge
	stale         prometheus.Gauge
}

// NewSourceMetrics creates the metrics and registers them on reg (nil:
// not registered).
func NewSourceMetrics(reg prometheus.Registerer) *SourceMetrics {
	m := &SourceMetrics{
		watchRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l4lb_etcd_watch_restarts_total",
			Help: "Times the etcd watch ended and the VIPs were listed again, by reason (compacted, reconnected, error, closed, relist)"}, []string{"reason"}),
		lists: prometheus.NewCounter(prometheus.CounterOpts{Name: "l4lb_etcd_lists_total",
			Help: "Full lists of the VIP keys in etcd"}),
		listDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "l4lb_etcd_list_duration_seconds",
			Help: "Duration of one paginated list of the VIP keys", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Name: "l4lb_etcd_watch_events_total",
			Help: "etcd watch events received"}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_etcd_revision",
			Help: "etcd revision up to which every change was delivered to the sync loop"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_etcd_revision_lag",
			Help: "Revisions between the last one etcd reported and the last one delivered"}),
		stale: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_etcd_stale",
			Help: "1 while etcd does not answer (or its config is refused) and the last VIPs are kept"}),
	}
	if reg != nil {
		reg.MustRegister(m.watchRestarts, m.lists, m.listDuration, m.events, m.revision, m.lag, m.stale)
	}
	return m
}

// Interface check.
var _ source.Source = (*Source)(nil)

// StaleForTest returns the stale gauge.
func (m *SourceMetrics) StaleForTest() prometheus.Gauge { return m.stale }

// RestartsForTest returns the watch restarts counter of a reason.
func (m *SourceMetrics) RestartsForTest(reason string) prometheus.Counter {
	return m.watchRestarts.WithLabelValues(reason)
}
