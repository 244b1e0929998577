// Package reconcile is l4lb's sync loop: sources deliver lists and deltas
// of groups (sync/source), a tracker per source records what changed, and
// one goroutine recomputes only the VIPs those changes reach (vip.Index),
// patches the ruleset (nat.Compiler), applies the delta, deletes the
// conntrack entries of the backends that lost their place, and patches the
// DNS zone. A full sync (at start, every resync, after a failure) compiles
// everything and reads the kernel back. Nothing is written before every
// source delivered its first list, and a source that fails keeps its last
// groups.
package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/dns"
	"github.com/l4lb/l4lb/localnet"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/nat/forward"
	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// Config is what the reconciler needs.
type Config struct {
	Sources []source.Source
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
	Model              vip.Config // pools, domain, resolver, guard; Previous and Guard.Local are managed here
	// Local reads the agent's addresses and connected networks, which no IP
	// VIP may take; re-read every time the desired state is computed, so a
	// new interface counts at once. nil keeps Model.Guard.Local as given.
	// A failed read keeps the last good one (Model.Guard.Local at first).
	Local    localnet.Interface
	Table    string
	StateDir string // where allocations persist; empty keeps them in memory
	Logger   *slog.Logger
	Now      func() time.Time // time.Now when nil
	// AfterList, when set, runs after a sync that took a full list from a
	// source (the first sync, a resync, a stream that attached again). A
	// full list leaves the most garbage the daemon makes (the decoded
	// answer of every app), which the hook may return to the OS.
	AfterList func()
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

	trackers []*source.Tracker

	mu        sync.Mutex // serialises syncs
	index     *vip.Index
	held      []map[source.Key]bool // per source, the keys the index holds
	compiler  *nat.Compiler
	counts    backendCounts
	alloc     vip.Allocations
	allocErr  error
	synced    bool           // a sync reached the kernel, and the compiler's ruleset is in it
	unchecked string         // last report of iptables backends that cannot be inspected
	ctFullAt  time.Time      // when the last full conntrack pass ran
	published *dns.Zone      // what DNS answers from; nil before the first publish
	local     *vip.LocalNets // the agent's networks at the last good read
	refused   []vip.Problem  // the problems l4lb_ip_vips_refused shows
	status    atomic.Pointer[Status]

	// The index's state is a view that Commit changes in place: Commit and
	// the apply of what it changed run under viewMu, and Status copies the
	// view under its read lock, at most once per version, so the view never
	// shows a change before the kernel has it.
	viewMu    sync.RWMutex
	cacheMu   sync.Mutex
	cacheVer  uint64
	cacheView []vip.VIP
	trigger   atomic.Pointer[func()] // asks the runner for a sync; set by Run
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
	r := &Reconciler{cfg: cfg, log: cfg.Logger, compiler: nat.NewCompiler(cfg.Table), counts: backendCounts{}, local: cfg.Model.Guard.Local}
	if cfg.StateDir != "" {
		r.alloc, r.allocErr = vip.LoadAllocations(cfg.StateDir)
		if r.allocErr != nil {
			r.log.Warn("cannot read allocations; computing addresses afresh", "err", r.allocErr)
			r.alloc = vip.Allocations{}
		}
	}
	model := cfg.Model
	model.Previous = r.alloc
	r.index = vip.NewIndex(model)
	for range cfg.Sources {
		r.trackers = append(r.trackers, source.NewTracker(r.poke, r.observeStale))
		r.held = append(r.held, map[source.Key]bool{})
	}
	r.status.Store(&Status{})
	return r
}

// Sink returns the sink of source i (for tests, and for sources run by
// the caller rather than by Run).
func (r *Reconciler) Sink(i int) source.Sink { return r.trackers[i] }

// Status returns the outcome of the last sync. Its State is a copy that
// later syncs do not change.
func (r *Reconciler) Status() *Status {
	st := *r.status.Load()
	if !st.Synced && len(st.State.VIPs) == 0 {
		return &st
	}
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	r.viewMu.RLock()
	if ver := r.index.Version(); r.cacheView == nil || ver != r.cacheVer {
		r.cacheView, r.cacheVer = slices.Clone(r.index.State().VIPs), ver
		if r.cacheView == nil {
			r.cacheView = []vip.VIP{}
		}
	}
	r.viewMu.RUnlock()
	st.State.VIPs = r.cacheView
	return &st
}

// status is the last stored status, without its State's VIPs.
func (r *Reconciler) lastStatus() Status { return *r.status.Load() }

// StaleError is what Sync returns when everything it had was applied but
// some sources cannot be read: their last groups were kept. It is no
// failure of the sync: the source retries by itself and delivers again
// when it reads, which triggers the next sync; a retry of the sync would
// only make that one wait for the runner's backoff.
type StaleError struct{ Err error }

func (e *StaleError) Error() string { return "sources stale, their last state kept: " + e.Err.Error() }
func (e *StaleError) Unwrap() error { return e.Err }

// ErrNoGoodState is returned while some source has not delivered its first
// list: nothing is written to the kernel before that.
var ErrNoGoodState = errors.New("no good read of the sources yet")

// observeStale counts a source's failed reads.
func (r *Reconciler) observeStale(err error) {
	if err != nil {
		r.cfg.Metrics.sourceErrors.Inc()
		r.cfg.Metrics.syncFailures.WithLabelValues("source").Inc()
	}
}

func (r *Reconciler) poke() {
	if f := r.trigger.Load(); f != nil {
		(*f)()
	}
}

// take moves what the trackers recorded into the index. It reports
// whether every source has listed, and the sources' errors.
func (r *Reconciler) take() (ready, listed bool, errs []error, failures int) {
	ready = true
	for i, t := range r.trackers {
		tk := t.Take()
		ready = ready && tk.Listed
		listed = listed || tk.HasList
		if tk.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.cfg.Sources[i], tk.Err))
			failures = max(failures, tk.Errs)
		}
		tk.ApplyTo(r.held[i],
			func(g *source.Group) { r.index.Set(indexKey(i, g.Key), g.Decls, g.Problems, g.Hosts...) },
			func(k source.Key) { r.index.Delete(indexKey(i, k)) })
	}
	return ready, listed, errs, failures
}

// indexKey qualifies a source's key with the source.
func indexKey(i int, k source.Key) string { return strconv.Itoa(i) + " " + string(k) }

// Sync applies what the sources delivered since the last sync. full
// compiles the whole state, reads the kernel back and repairs drift (at
// start, on resync, after a failure); otherwise only the VIPs the changes
// reached are planned, applied, cleaned in conntrack and republished.
func (r *Reconciler) Sync(ctx context.Context, full bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.cfg.Metrics
	start := time.Now()
	if !r.synced {
		full = true
	}
	kind := "incremental"
	if full {
		kind = "full"
	}
	st := r.lastStatus()
	st.LastAttempt = r.cfg.Now()

	ready, listed, srcErrs, failures := r.take()
	if listed && r.cfg.AfterList != nil {
		defer r.cfg.AfterList()
	}
	var srcErr error
	if len(srcErrs) > 0 {
		srcErr = &StaleError{Err: errors.Join(srcErrs...)}
	}
	st.Stale, st.SourceErrors = srcErr != nil, failures
	if srcErr != nil {
		m.sourceStale.Set(1)
	} else {
		m.sourceStale.Set(0)
	}
	if !ready {
		st.LastError = ErrNoGoodState.Error()
		if srcErr != nil {
			st.LastError = srcErr.Error()
		}
		r.status.Store(&st)
		return fmt.Errorf("%w: %w", ErrNoGoodState, cmp.Or(srcErr, errors.New("waiting for the first list")))
	}
	defer func() { m.syncDuration.WithLabelValues(kind).Observe(time.Since(start).Seconds()) }()

	// The agent's networks are re-read every sync, also while the sources
	// fail: an IP VIP inside a network that appeared meanwhile goes all the
	// same. The index checks its IP VIPs again only when they changed.
	r.index.SetLocal(r.readLocal(ctx))
	// The view (/v1/vips, l4lb vips) shows what the kernel has: a change
	// is committed to the index and applied under viewMu, so that no
	// reader sees it before it is in the kernel.
	r.viewMu.Lock()
	ch := r.index.Commit()
	viewHeld := true
	releaseView := func() {
		if viewHeld {
			viewHeld = false
			r.viewMu.Unlock()
		}
	}
	defer releaseView()
	if ch.Empty() {
		releaseView()
	}
	state := r.index.State()
	problems := r.index.Problems()
	if !sameProblems(problems, r.refused) {
		m.observeRefused(problems)
		r.refused = problems
	}
	if ch.Allocations {
		r.saveAllocations(state.Allocations)
	}
	r.counts.add(ch.Before, -1)
	r.counts.add(ch.After, +1)
	if !full && ch.Empty() {
		st.State, st.Problems = viewless(state), problems
		st.LastError = ""
		if srcErr != nil {
			st.LastError = srcErr.Error()
		}
		r.status.Store(&st)
		return srcErr
	}

	// The compiled ruleset and the zone are kept up to date per change
	// (and tested to equal a full compile): a resync reads the kernel back
	// against them without compiling everything again. Only a start or a
	// failure compiles from scratch.
	fresh := full && !r.synced
	var rs *nat.Ruleset
	if fresh {
		rs = r.compiler.Full(state)
	} else {
		rs = r.compiler.Update(state, ch)
	}
	// Withdraw the names that are going before their rules go.
	var zone, pre *dns.Zone
	if r.cfg.DNS != nil {
		if fresh || r.published == nil {
			zone = dns.Records(state, r.cfg.DNSZone)
			if r.published != nil {
				pre = r.published.Intersect(zone)
			}
		} else {
			pre, zone = r.dnsPatch(ch)
		}
		if pre != nil {
			r.publish(pre)
		}
	}
	res, err := r.cfg.NAT.Apply(ctx, rs, full)
	releaseView()
	if err != nil {
		r.synced = false // the next sync is full
		m.syncFailures.WithLabelValues("nat").Inc()
		st.LastError = err.Error()
		r.status.Store(&st)
		return fmt.Errorf("apply: %w", err)
	}
	m.observeNAT(res, true)
	if res.Drift() && r.synced && ch.Empty() {
		r.log.Warn("repaired drift: the kernel differed from what l4lb programmed", "elements", res.Elements,
			"chains", res.Chains, "rebuilt", res.Rebuilt, "routes", res.Routes)
		m.natDriftRepair.Inc()
	}
	first := !st.Synced
	r.synced = true
	if full || ipvipsMoved(ch) {
		r.syncForward(ctx, rs)
	}
	m.observeState(len(state.VIPs), r.counts, len(problems))
	m.lastSuccess.Set(float64(r.cfg.Now().Unix()))
	st.Synced = true
	st.LastSuccess = r.cfg.Now()
	st.State, st.Problems, st.Result = viewless(state), problems, res
	st.LastError = ""
	if srcErr != nil {
		st.LastError = srcErr.Error()
	}
	r.status.Store(&st)
	if res.Changed() || first {
		r.log.Info("synced", "first", first, "vips", len(state.VIPs), "changed", len(ch.After), "gone", len(ch.Before),
			"problems", len(problems), "full", full, "readBack", res.ReadBack, "rebuilt", res.Rebuilt,
			"batches", res.Batches, "elements", res.Elements, "chains", res.Chains, "routes", res.Routes,
			"took", time.Since(start).String())
	}
	ctErr := r.cleanConntrack(ctx, state, ch, full)
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

// viewless is a state without its VIPs, for the stored status: Status
// fills them with a copy.
func viewless(s vip.State) vip.State {
	s.VIPs = nil
	return s
}

// ipvipsMoved reports whether a change added or removed IP VIPs (which the
// iptables FORWARD rules and the routes follow).
func ipvipsMoved(ch vip.Change) bool {
	for _, list := range [][]vip.VIP{ch.Before, ch.After} {
		for _, v := range list {
			if v.Name == "" {
				return true
			}
		}
	}
	return false
}

// dnsPatch returns the zone to publish before the rules change (the names
// of the change keep only the addresses they keep) and after (their new
// addresses).
func (r *Reconciler) dnsPatch(ch vip.Change) (pre, post *dns.Zone) {
	names := map[string]bool{}
	for _, list := range [][]vip.VIP{ch.Before, ch.After} {
		for _, v := range list {
			if v.Name != "" {
				names[v.Name] = true
			}
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	keep := make(map[string][]netip.Addr, len(names))
	now := make(map[string][]netip.Addr, len(names))
	for name := range names {
		as := r.index.NameAddrs(name)
		v4, v6, _ := r.published.Lookup(name)
		old := append(v4, v6...)
		if slices.Equal(old, as) {
			continue // a change of backends: the name keeps its addresses
		}
		now[name] = as
		for _, a := range old {
			if slices.Contains(as, a) {
				keep[name] = append(keep[name], a)
			}
		}
		if _, ok := keep[name]; !ok {
			keep[name] = nil
		}
	}
	if len(now) == 0 {
		return nil, nil
	}
	pre = r.published.Patch(keep)
	return pre, pre.Patch(now)
}

// saveAllocations persists the named VIP addresses.
func (r *Reconciler) saveAllocations(a vip.Allocations) {
	if a.Equal(r.alloc) {
		return
	}
	if r.cfg.StateDir != "" {
		if err := vip.SaveAllocations(r.cfg.StateDir, a); err != nil {
			// Keep going: the kernel must follow the sources; the next
			// change tries to save again.
			r.log.Error("cannot save allocations", "err", err)
			return
		}
	}
	r.alloc = a
}

func (r *Reconciler) publish(z *dns.Zone) {
	r.cfg.DNS.Publish(z)
	r.published = z
}

// cleanConntrack deletes the conntrack entries of backends that the change
// just applied took out of service (unhealthy with --flush-unhealthy,
// gone, terminal), so that their clients get a reset or move on at their
// next packet. Draining and starting backends keep theirs. An incremental
// sync looks only at the backends of the VIPs the change reached.
func (r *Reconciler) cleanConntrack(ctx context.Context, state vip.State, ch vip.Change, full bool) error {
	c := r.cfg.Conntrack
	if c == nil {
		return nil
	}
	every := r.cfg.ConntrackFullEvery
	if every <= 0 {
		every = 5 * time.Minute
	}
	var res conntrack.Result
	var err error
	// The state is a view that changes in place: the cleaner must not
	// compare it with an earlier one, so it is told what changed.
	if full && time.Since(r.ctFullAt) >= every {
		res, err = c.Reconcile(ctx, state, ch.Before)
	} else {
		res, err = c.Changed(ctx, state, ch.Before)
	}
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

// readLocal re-reads the agent's networks for the IP VIP guard; a failed
// read keeps the last good one.
func (r *Reconciler) readLocal(ctx context.Context) *vip.LocalNets {
	if r.cfg.Local == nil {
		return r.local
	}
	l, err := r.cfg.Local.Read(ctx)
	if err != nil {
		r.log.Warn("cannot read the agent's networks; IP VIPs are checked against the last known ones", "err", err)
		return r.local
	}
	if r.local != nil && slices.Equal(l.Own, r.local.Own) && slices.Equal(l.Connected, r.local.Connected) {
		return r.local
	}
	r.log.Info("agent networks changed", "own", len(l.Own), "connected", len(l.Connected))
	r.log.Debug("agent networks", "networks", l.String())
	r.local = l
	return l
}

// sameProblems reports whether a and b are the same list (the index
// returns the same slice until its problems change).
func sameProblems(a, b []vip.Problem) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
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

// readBackSpacing bounds the share of time the kernel read-backs of the
// periodic resyncs take: one every --resync as long as a read-back takes
// under a twentieth of it (up to 1.5 s at the default 30 s), less often
// beyond (every 220 s when it takes 11 s, at 50,000 VIPs x 10 backends).
const readBackSpacing = 20

// Run starts the sources and syncs whenever they deliver (at most once per
// opts.MinInterval), at least every opts.Resync (a full sync that reads the
// kernel back and asks every source for a full list), and after failures
// with exponential backoff (again full, since what the kernel holds is in
// doubt). It returns when ctx is done; the rules stay in place.
func (r *Reconciler) Run(ctx context.Context, opts runner.Options) error {
	// opts.ResyncMax bounds how long constant churn postpones the full
	// resync (l4lb run: 10 periods); opts.ResyncEvery would make it strictly
	// periodic, but a resync reads the whole table back and changes wait
	// for it: 11 s of kernel time at 50,000 VIPs x 10 backends (the kernel
	// walks a hash set from its start for every message of a dump). So a
	// resync reads the kernel back only when readBackSpacing times the last
	// read-back's duration has passed since it; otherwise the sources still
	// list and what differs is applied as a change.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var readBackAt time.Time
	var readBackTook time.Duration
	run := runner.New(func(ctx context.Context, why runner.Reason) error {
		if why.Has(runner.Resync) {
			for _, s := range r.cfg.Sources {
				s.Relist()
			}
		}
		full := why&(runner.Initial|runner.Retry) != 0 ||
			why.Has(runner.Resync) && time.Since(readBackAt) >= readBackSpacing*readBackTook
		start := time.Now()
		err := r.Sync(ctx, full)
		if full && err == nil {
			readBackAt, readBackTook = time.Now(), time.Since(start)
		}
		var stale *StaleError
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, ErrNoGoodState):
			// The first list triggers the next run, at once.
			return runner.ErrNothingDone
		case errors.As(err, &stale):
			// Applied; the source's next delivery triggers the next run.
			r.log.Warn("sources stale; keeping their last state", "err", stale.Err, "why", why.String())
			return nil
		default:
			r.log.Error("sync failed", "err", err, "why", why.String())
		}
		return err
	}, opts)
	trigger := run.Trigger
	r.trigger.Store(&trigger)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i, s := range r.cfg.Sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Run(ctx, r.cfg.Model, r.trackers[i]); err != nil && ctx.Err() == nil {
				r.log.Error("source stopped", "source", s.String(), "err", err)
			}
		}()
	}
	err := run.Run(ctx)
	cancel()
	return err
}
