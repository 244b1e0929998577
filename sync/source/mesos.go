package source

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/mesos"
	"github.com/l4lb/l4lb/vip"
)

// Defaults of MesosOptions.
const (
	DefaultMesosRequestTimeout = 30 * time.Second
	DefaultMesosBackoffMin     = time.Second
	DefaultMesosBackoffMax     = 30 * time.Second
	// DefaultMesosHeartbeat is the master's heartbeat interval until its
	// SUBSCRIBED says otherwise (heartbeat_interval_seconds).
	DefaultMesosHeartbeat = 15 * time.Second
	// DefaultMesosRelistEvery: see MesosOptions.RelistEvery.
	DefaultMesosRelistEvery = 15 * time.Minute
	// mesosRelistEvery bounds how often an agent that re-registers after a
	// failover makes the stream resubscribe.
	mesosRelistEvery = 5 * time.Second
)

// MesosOptions configure a Mesos source. The zero value is usable.
type MesosOptions struct {
	// Username and Password for HTTP basic authentication (also from the
	// URL's user information), or TokenFile and TokenScheme as for Marathon
	// (Authorization: token=..., DC/OS), and CAFile for HTTPS.
	Username, Password     string
	TokenFile, TokenScheme string
	CAFile                 string
	// RequestTimeout bounds connecting and the response headers of the
	// subscription, and one whole GET_STATE.
	RequestTimeout time.Duration
	// BackoffMin and BackoffMax bound the jittered delay before
	// resubscribing after a failure (a 503 while the masters elect a leader,
	// a stream that broke or went silent).
	BackoffMin, BackoffMax time.Duration
	// MaxRecord bounds one record of the stream (mesos.DefaultMaxRecord).
	MaxRecord int
	// RelistEvery is the least time between a subscription and one that
	// Relist (the pipeline's --resync) asks for: 15 minutes when zero. The
	// operator API's stream is ordered and loses nothing while it is up
	// (heartbeats tell when it is not), and a SUBSCRIBED is the whole
	// cluster, so resubscribing on every resync would only load the masters.
	RelistEvery time.Duration
	// Model gives the domain and resolver that Load and Watch (the snapshot
	// interface) build declarations with; Run takes them from its caller.
	Model vip.Config

	// OnStreamError, when set, is called after the stream failed or ended,
	// with the reason and the delay before the next attempt.
	OnStreamError func(err error, retryIn time.Duration)
	// OnSubscribed, when set, is called after each SUBSCRIBED with the
	// number of tasks that declare VIPs.
	OnSubscribed func(tasks int)
	// Now is time.Now when nil (the recovered agents' hold).
	Now func() time.Time
}

// Mesos reads the tasks of every framework from the Mesos master's
// operator API (DESIGN section 9): it subscribes, takes SUBSCRIBED as the
// full list and the task, framework and agent events as deltas keyed by
// framework id and task id.
type Mesos struct {
	*apiClient
	base   *url.URL // the master, without user information; /api/v1 is added
	opts   MesosOptions
	relist chan struct{}

	mu         sync.Mutex // guards the model between the stream and Load
	model      *mesos.Model
	subscribed bool          // the model holds a SUBSCRIBED's state
	heartbeat  time.Duration // the master's interval

	healthyAfter time.Duration // a stream up this long resets the backoff
	relistEvery  time.Duration // least time before a relist that an agent re-registering asks for
}

// NewMesos returns the source for the Mesos master at rawURL, such as
// http://leader.mesos:5050 (the leader or any master: standbys redirect).
func NewMesos(rawURL string, opts MesosOptions) (*Mesos, error) {
	u, err := parseAPIURL("mesos", rawURL, &opts.Username, &opts.Password)
	if err != nil {
		return nil, err
	}
	if opts.RequestTimeout < 0 || opts.BackoffMin < 0 || opts.BackoffMax < 0 || opts.MaxRecord < 0 || opts.RelistEvery < 0 {
		return nil, fmt.Errorf("mesos %s: negative timeout, size or delay", u)
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = DefaultMesosRequestTimeout
	}
	if opts.BackoffMin == 0 {
		opts.BackoffMin = DefaultMesosBackoffMin
	}
	if opts.BackoffMax == 0 {
		opts.BackoffMax = max(DefaultMesosBackoffMax, opts.BackoffMin)
	}
	if opts.BackoffMax < opts.BackoffMin {
		return nil, fmt.Errorf("mesos %s: backoff max %s below min %s", u, opts.BackoffMax, opts.BackoffMin)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RelistEvery == 0 {
		opts.RelistEvery = DefaultMesosRelistEvery
	}
	c, err := newAPIClient("mesos", u, apiAuth{
		Username: opts.Username, Password: opts.Password,
		TokenFile: opts.TokenFile, TokenScheme: opts.TokenScheme, CAFile: opts.CAFile,
	}, opts.RequestTimeout)
	if err != nil {
		return nil, err
	}
	return &Mesos{
		apiClient: c, base: u, opts: opts, relist: make(chan struct{}, 1),
		model: mesos.NewModel(), heartbeat: DefaultMesosHeartbeat, healthyAfter: streamHealthyFor, relistEvery: mesosRelistEvery,
	}, nil
}

func (m *Mesos) String() string { return "mesos:" + m.base.String() }

// Relist asks Run for a fresh SUBSCRIBED (the pipeline's resync), unless
// the current subscription is younger than RelistEvery. It never blocks;
// requests coalesce.
func (m *Mesos) Relist() {
	select {
	case m.relist <- struct{}{}:
	default:
	}
}

// errRelist ends a stream on purpose, to resubscribe at once.
var errRelist = errors.New("resubscribing for a fresh state")

// Run subscribes and delivers: SUBSCRIBED's state with sink.Replace, each
// later event's tasks with sink.Update. A stream that fails, breaks (a bad
// record) or goes silent for 3 heartbeat intervals is resubscribed after a
// jittered backoff, and the model is kept meanwhile (sink.Stale). Run
// returns nil when ctx is done.
func (m *Mesos) Run(ctx context.Context, cfg vip.Config, sink Sink) error {
	if sink == nil {
		return errors.New("mesos run: sink is nil")
	}
	b := reconnect{min: m.opts.BackoffMin, max: m.opts.BackoffMax, healthyAfter: m.healthyAfter}
	for {
		up, subscribed, err := m.stream(ctx, cfg, sink)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errRelist) {
			continue
		}
		if !subscribed {
			// Cannot read: the groups stay, and the pipeline says so. A
			// stream that broke after its SUBSCRIBED is not stale yet: the
			// next subscription usually follows at once.
			sink.Stale(err)
		}
		if !b.wait(ctx, up, err, m.opts.OnStreamError) {
			return nil
		}
	}
}

// record is one decoded record, or the error that ended the stream.
type record struct {
	ev       mesos.Event
	problems []vip.Problem
	err      error
}

// stream runs one subscription until it fails, ends or ctx is done. It
// returns how long the stream was up, whether its SUBSCRIBED was delivered,
// and why it ended, never nil.
func (m *Mesos) stream(ctx context.Context, cfg vip.Config, sink Sink) (up time.Duration, subscribed bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	m.mu.Lock()
	idleFor := 3 * m.heartbeat
	m.mu.Unlock()
	idle := time.AfterFunc(idleFor, func() { cancel(errIdle(idleFor)) })
	defer idle.Stop()

	// A fresh subscription answers every relist asked for until now.
	select {
	case <-m.relist:
	default:
	}
	resp, at, err := m.post(ctx, []byte(`{"type":"SUBSCRIBE"}`))
	if err != nil {
		return 0, false, streamErr(ctx, at, err)
	}
	defer resp.Body.Close()
	if err := checkMesosResponse(resp, true); err != nil {
		return 0, false, fmt.Errorf("POST %s: %w", at, err)
	}
	start := time.Now()
	idle.Reset(idleFor)

	var idleNs atomic.Int64 // the reader pushes the deadline back by this much
	idleNs.Store(int64(idleFor))
	records := make(chan record)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil) // stops the reader: the body closes with ctx
	wg.Add(1)
	go func() {
		defer wg.Done()
		rr := mesos.NewRecordReader(&deadlineReader{r: resp.Body, t: idle, d: &idleNs}, m.opts.MaxRecord)
		for {
			var r record
			data, err := rr.Next()
			if err == nil {
				r.ev, r.problems, err = mesos.DecodeEvent(data)
			}
			r.err = err
			select {
			case records <- r:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	first := true
	var expiry *time.Timer
	var expiryC <-chan time.Time
	defer func() {
		if expiry != nil {
			expiry.Stop()
		}
	}()
	var relistC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return time.Since(start), !first, streamErr(ctx, at, fmt.Errorf("POST %s: %w", at, context.Cause(ctx)))
		case <-m.relist:
			if time.Since(start) >= m.opts.RelistEvery {
				return time.Since(start), !first, errRelist
			}
		case <-relistC:
			return time.Since(start), !first, errRelist
		case <-expiryC:
			m.mu.Lock()
			gone := m.model.Expire(m.opts.Now())
			next, ok := m.model.NextExpiry()
			m.mu.Unlock()
			if len(gone) > 0 {
				sink.Update(nil, keysOf(gone))
			}
			expiryC = nil
			if ok {
				expiry.Reset(max(next.Sub(m.opts.Now()), time.Millisecond))
				expiryC = expiry.C
			}
		case r := <-records:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) {
					r.err = errors.New("master closed the stream")
				}
				return time.Since(start), !first, streamErr(ctx, at, fmt.Errorf("POST %s: %w", at, unwrapURLError(r.err)))
			}
			if first && r.ev.Type != mesos.EventSubscribed {
				return time.Since(start), !first, fmt.Errorf("POST %s: the stream starts with %s, not SUBSCRIBED", at, r.ev.Type)
			}
			first = false
			ch, idleNew := m.apply(r, cfg, sink)
			if idleNew > 0 && idleNew != idleFor {
				idleFor = idleNew
				idleNs.Store(int64(idleFor))
				idle.Reset(idleFor)
			}
			if ch.Relist && relistC == nil {
				relistC = time.After(m.relistEvery)
			}
			m.mu.Lock()
			next, ok := m.model.NextExpiry()
			m.mu.Unlock()
			if ok && expiryC == nil {
				d := max(next.Sub(m.opts.Now()), time.Millisecond)
				if expiry == nil {
					expiry = time.NewTimer(d)
				} else {
					expiry.Reset(d)
				}
				expiryC = expiry.C
			}
		}
	}
}

// apply applies one event to the model and delivers what it changed. It
// returns the change and, after a SUBSCRIBED, the new idle timeout.
func (m *Mesos) apply(r record, cfg vip.Config, sink Sink) (mesos.Change, time.Duration) {
	m.mu.Lock()
	ch := m.model.Apply(r.ev, m.opts.Now())
	var idle time.Duration
	if ch.HeartbeatInterval > 0 {
		m.heartbeat = ch.HeartbeatInterval
	}
	if r.ev.Type == mesos.EventSubscribed {
		idle = 3 * m.heartbeat
	}
	extra := problemGroups(r.problems, m.model)
	if ch.Full {
		m.subscribed = true
		groups := make([]Group, 0, m.model.Len()+len(extra))
		for _, k := range m.model.Keys() {
			groups = append(groups, m.group(k, cfg))
		}
		tasks := m.model.Len()
		m.mu.Unlock()
		sink.Replace(append(groups, extra...))
		sink.Stale(nil)
		if m.opts.OnSubscribed != nil {
			m.opts.OnSubscribed(tasks)
		}
		return ch, idle
	}
	var changed []Group
	var gone []Key
	for _, k := range ch.Tasks {
		g := m.group(k, cfg)
		if g.Decls == nil && g.Problems == nil {
			gone = append(gone, g.Key)
			continue
		}
		changed = append(changed, g)
	}
	m.mu.Unlock()
	changed = append(changed, extra...)
	if len(changed) > 0 || len(gone) > 0 {
		sink.Update(changed, gone)
	}
	return ch, idle
}

// group is task k's group; empty when the model does not hold the task.
// The caller holds m.mu.
func (m *Mesos) group(k mesos.TaskKey, cfg vip.Config) Group {
	decls, problems := m.model.Declarations(k, cfg, nil)
	return Group{Key: Key(k.String()), Decls: decls, Problems: problems}
}

// problemGroups turns the problems of tasks that did not decode into groups
// of their own (without declarations), named by the framework's name when
// it is known.
func problemGroups(problems []vip.Problem, model *mesos.Model) []Group {
	var out []Group
	for _, p := range problems {
		key := Key(p.Framework + "/" + p.Task)
		if name := model.FrameworkName(p.Framework); name != "" {
			p.Framework = name
		}
		out = append(out, Group{Key: key, Problems: []vip.Problem{p}})
	}
	return out
}

func keysOf(ks []mesos.TaskKey) []Key {
	out := make([]Key, len(ks))
	for i, k := range ks {
		out[i] = Key(k.String())
	}
	return out
}

// post sends POST base/api/v1 with body, following the redirects of
// masters that are not the leader (307 with Location //host:port/api/v1:
// the scheme is the current one) with the same credentials, never from
// https to http.
func (m *Mesos) post(ctx context.Context, body []byte) (*http.Response, string, error) {
	u := *m.base
	u.Path += "/api/v1"
	return m.send(ctx, http.MethodPost, &u, body, func(h http.Header) {
		h.Set("Content-Type", "application/json")
		h.Set("Accept", "application/json")
		h.Set("Accept-Encoding", "identity") // no transparent gzip on a stream
	})
}

// checkMesosResponse accepts a 200 with JSON (or RecordIO of JSON, for a
// stream). A 503 means the masters have no leader yet.
func checkMesosResponse(resp *http.Response, stream bool) error {
	if resp.StatusCode == http.StatusServiceUnavailable {
		return fmt.Errorf("status %s: no leading master yet%s", resp.Status, snippet(resp.Body))
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s%s", resp.Status, snippet(resp.Body))
	}
	ct := resp.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	switch {
	case err == nil && mt == "application/json":
		return nil
	case err == nil && stream && mt == "application/recordio":
		if mct, _, _ := mime.ParseMediaType(resp.Header.Get("Message-Content-Type")); mct == "application/json" {
			return nil
		}
	}
	return fmt.Errorf("content type %q, want application/json", ct)
}

// Load returns the declarations of every task: from the model while Watch
// keeps it subscribed, otherwise from one GET_STATE (l4lb render).
func (m *Mesos) Load(ctx context.Context) (Snapshot, error) {
	m.mu.Lock()
	if m.subscribed {
		decls, problems := m.model.AllDeclarations(m.opts.Model)
		m.mu.Unlock()
		return Snapshot{Decls: decls, Problems: problems}, nil // render only: no groups
	}
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
	defer cancel()
	resp, at, err := m.post(ctx, []byte(`{"type":"GET_STATE"}`))
	if err != nil {
		return Snapshot{}, err
	}
	defer drainClose(resp.Body)
	if err := checkMesosResponse(resp, false); err != nil {
		return Snapshot{}, fmt.Errorf("POST %s: %w", at, err)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, mesos.DefaultMaxRecord+1))
	if err != nil {
		return Snapshot{}, fmt.Errorf("POST %s: read body: %w", at, unwrapURLError(err))
	}
	snap, ok, err := mesosSnapshot(data, m.opts.Model, m.opts.Now())
	if err != nil {
		return Snapshot{}, fmt.Errorf("POST %s: %w", at, err)
	}
	if !ok {
		return Snapshot{}, fmt.Errorf("POST %s: not a GET_STATE response", at)
	}
	return snap, nil
}

// mesosSnapshot reads a whole Mesos state (a GET_STATE response or a
// SUBSCRIBED event): the declarations of every task, flat (Decls, for
// l4lb render) and by task (Groups, for the pipeline); ok is false for
// other documents.
func mesosSnapshot(data []byte, cfg vip.Config, now time.Time) (Snapshot, bool, error) {
	gs, problems, ok, err := mesos.DecodeState(data)
	if !ok || err != nil {
		return Snapshot{}, ok, err
	}
	model := mesos.NewModel()
	model.Reset(gs, now)
	var snap Snapshot
	for _, k := range model.Keys() {
		decls, p := model.Declarations(k, cfg, nil)
		snap.Groups = append(snap.Groups, Group{Key: Key(k.String()), Decls: decls, Problems: p})
		snap.Decls = append(snap.Decls, decls...)
		snap.Problems = append(snap.Problems, p...)
	}
	for _, g := range problemGroups(problems, model) {
		snap.Groups = append(snap.Groups, g)
		snap.Problems = append(snap.Problems, g.Problems...)
	}
	return snap, true, nil
}

// deadlineReader pushes the stream's deadline back on every read that
// returns data (a large SUBSCRIBED takes long but is alive).
type deadlineReader struct {
	r io.Reader
	t *time.Timer
	d *atomic.Int64
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.t.Reset(time.Duration(r.d.Load()))
	}
	return n, err
}

// isMesosState tells a Mesos state from Marathon apps by its first key.
func isMesosState(data []byte) bool {
	var probe struct {
		Type     *string          `json:"type"`
		GetTasks *json.RawMessage `json:"get_tasks"`
	}
	return json.Unmarshal(data, &probe) == nil && (probe.Type != nil || probe.GetTasks != nil)
}
