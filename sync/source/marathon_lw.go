package source

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// firstListWait is how long Run waits for the event stream to attach
// before its first list.
const firstListWait = 2 * time.Second

// DefaultMarathonMaxAppReads is how many apps one round may read one by
// one; more named at once are read with one full list.
const DefaultMarathonMaxAppReads = 64

// lwState is what the list-and-watch loop of a Marathon shares with the
// event stream and Relist.
type lwState struct {
	mu      sync.Mutex
	relist  bool            // a full list is due
	pending map[string]bool // app ids to read one by one
	wake    chan struct{}   // capacity 1
}

func newLWState() *lwState {
	return &lwState{relist: true, pending: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (s *lwState) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Relist implements Source: the next round reads the whole list.
func (m *Marathon) Relist() {
	m.lw.mu.Lock()
	m.lw.relist = true
	m.lw.mu.Unlock()
	m.lw.poke()
}

// BytesRead is how many bytes of app data (lists and single apps) were
// read from Marathon so far, for benchmarks and metrics.
func (m *Marathon) BytesRead() int64 { return m.bytesRead.Load() }

// Run implements Source (DESIGN section 8). It lists every app with
// GET /v2/apps?embed=apps.tasks at start, after the event stream
// (re)attaches, when Relist asks, and for an event that names nothing
// usable or more than MaxAppReads apps; otherwise it reads only the apps
// that events name, each with GET /v2/apps/{id}?embed=app.tasks (404: the
// app is gone), coalescing the ids that arrive within MinInterval. Ids
// named while a list is read are read after it, so no event is lost. An
// app whose read fails (a 500, a malformed answer) keeps its last good
// state; OnAppError says why.
func (m *Marathon) Run(ctx context.Context, cfg vip.Config, sink Sink) error {
	if sink == nil {
		return errors.New("marathon run: sink is nil")
	}
	groups := newAppGroups(cfg)
	lw := m.lw
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = m.follow(ctx, func(name string, ev sseEvent) { m.onEvent(name, ev) })
	}()

	// The first list follows the stream's attach (which asks for one), so
	// that nothing is missed between the two and 94 MB are not read twice;
	// without an attach within firstListWait the list goes ahead alone.
	first := time.AfterFunc(firstListWait, lw.poke)
	defer first.Stop()
	var (
		lastRound time.Time
		failures  int
		stale     bool
		retry     <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lw.wake:
		case <-retry:
			retry = nil
		}
		if wait := time.Until(lastRound.Add(m.opts.MinInterval)); wait > 0 && !lastRound.IsZero() {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		lw.mu.Lock()
		relist := lw.relist || len(lw.pending) > m.opts.MaxAppReads
		if !relist {
			// The interval bounds the rate of event-driven reads; a list
			// (start, resync) does not make the next event wait.
			lastRound = time.Now()
		}
		ids := make([]string, 0, len(lw.pending))
		for id := range lw.pending {
			ids = append(ids, id)
		}
		clear(lw.pending)
		lw.relist = false
		lw.mu.Unlock()
		slices.Sort(ids)

		var err error
		if relist {
			err = m.listInto(ctx, groups, sink)
		} else if len(ids) > 0 {
			err = m.readApps(ctx, ids, groups, sink)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			// Whatever was asked is covered by the list of the retry.
			lw.mu.Lock()
			lw.relist = true
			lw.mu.Unlock()
			sink.Stale(err)
			stale = true
			delay := m.opts.ReconnectMin << min(failures, 16)
			delay = min(delay, m.opts.ReconnectMax)
			failures++
			retry = time.After(jitter(delay))
			continue
		}
		failures = 0
		if stale {
			stale = false
			sink.Stale(nil)
		}
	}
}

// onEvent records what an event names: app ids to read, or a full list.
func (m *Marathon) onEvent(name string, ev sseEvent) {
	lw := m.lw
	ids, ok := eventApps(name, ev)
	lw.mu.Lock()
	switch {
	case ok && len(ids) == 0:
		// Names no app that changes VIPs (group changes: the deployment
		// events that follow name the apps).
		lw.mu.Unlock()
		return
	case !ok:
		lw.relist = true
	default:
		for _, id := range ids {
			lw.pending[id] = true
		}
	}
	lw.mu.Unlock()
	lw.poke()
}

// marathonEvent is the part of a Marathon event that names apps.
type marathonEvent struct {
	AppID         string `json:"appId"`
	RunSpecID     string `json:"runSpecId"`
	AppDefinition *struct {
		ID string `json:"id"`
	} `json:"appDefinition"`
	Plan *struct {
		Steps []planStep `json:"steps"`
	} `json:"plan"`
	CurrentStep *planStep `json:"currentStep"`
}

type planStep struct {
	Actions []struct {
		App string `json:"app"`
	} `json:"actions"`
}

// eventApps returns the app ids an event names. ok is false when the event
// cannot be used (not JSON, no app where one is expected, a new stream):
// then only a full list is safe. Group change events name no app and are
// ignored (ok, no ids).
func eventApps(name string, ev sseEvent) (ids []string, ok bool) {
	switch name {
	case eventStreamAttached, "":
		return nil, false
	case "group_change_success", "group_change_failed":
		return nil, true
	}
	if ev.Truncated {
		return nil, false
	}
	var e marathonEvent
	if err := json.Unmarshal([]byte(ev.Data), &e); err != nil {
		return nil, false
	}
	add := func(id string) {
		id = strings.TrimSpace(id)
		if id == "" {
			return
		}
		if !strings.HasPrefix(id, "/") {
			id = "/" + id
		}
		ids = append(ids, id)
	}
	add(e.AppID)
	add(e.RunSpecID)
	if e.AppDefinition != nil {
		add(e.AppDefinition.ID)
	}
	if e.Plan != nil {
		for _, s := range e.Plan.Steps {
			for _, a := range s.Actions {
				add(a.App)
			}
		}
	}
	if e.CurrentStep != nil {
		for _, a := range e.CurrentStep.Actions {
			add(a.App)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	return ids, len(ids) > 0
}

// listInto reads the whole list and delivers it.
func (m *Marathon) listInto(ctx context.Context, groups *appGroups, sink Sink) error {
	snap, err := m.Load(ctx)
	if err != nil {
		return err
	}
	sink.Replace(groups.list(snap.Apps, snap.Problems))
	return nil
}

// readApps reads the named apps one by one and delivers them as one
// update. An app that answers 404 is gone; one whose read fails keeps its
// last good group (OnAppError says why). A failure to reach Marathon at
// all is returned: the caller lists again later.
func (m *Marathon) readApps(ctx context.Context, ids []string, groups *appGroups, sink Sink) error {
	var changed []Group
	var gone []Key
	for _, id := range ids {
		app, problems, found, err := m.loadApp(ctx, id)
		var he *httpError
		switch {
		case err != nil && !errors.As(err, &he) && !errors.Is(err, errMalformedApp):
			return err
		case err != nil:
			if m.opts.OnAppError != nil {
				m.opts.OnAppError(id, err)
			}
			if g, ok := groups.kept(id, vip.Problem{App: id, Reason: err.Error()}); ok {
				changed = append(changed, g)
			}
		case !found:
			groups.gone(id)
			gone = append(gone, Key(id))
		default:
			changed = append(changed, groups.app(app, problems))
		}
	}
	if len(changed)+len(gone) > 0 {
		sink.Update(changed, gone)
	}
	return nil
}

// httpError is an answer of Marathon that is not a success.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

var errMalformedApp = errors.New("malformed app")

// loadApp reads one app with GET /v2/apps/{id}?embed=app.tasks. found is
// false for a 404. Problems are the tasks or labels that did not decode:
// they stay with the app.
func (m *Marathon) loadApp(ctx context.Context, id string) (vip.App, []vip.Problem, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
	defer cancel()
	resp, at, err := m.get(ctx, "/v2/apps"+id, url.Values{"embed": {"app.tasks"}}, "application/json")
	if err != nil {
		return vip.App{}, nil, false, err
	}
	defer drainClose(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return vip.App{}, nil, false, nil
	}
	if err := checkResponse(resp, "application/json"); err != nil {
		return vip.App{}, nil, false, &httpError{status: resp.StatusCode, msg: fmt.Sprintf("GET %s: %v", at, err)}
	}
	var body bytes.Buffer
	n, err := body.ReadFrom(io.LimitReader(resp.Body, m.opts.MaxBody+1))
	m.bytesRead.Add(n)
	if err != nil {
		return vip.App{}, nil, false, fmt.Errorf("GET %s: read body: %w", at, unwrapURLError(err))
	}
	var top struct {
		App json.RawMessage `json:"app"`
	}
	if err := json.Unmarshal(body.Bytes(), &top); err != nil || len(top.App) == 0 || string(top.App) == "null" {
		return vip.App{}, nil, false, fmt.Errorf("GET %s: %w: want {\"app\": {...}}", at, errMalformedApp)
	}
	apps, problems, err := vip.ParseApps(top.App)
	if err != nil || len(apps) != 1 {
		reason := "does not decode"
		if err != nil {
			reason = err.Error()
		} else if len(problems) > 0 {
			reason = problems[0].Reason
		}
		return vip.App{}, nil, false, fmt.Errorf("GET %s: %w: %s", at, errMalformedApp, reason)
	}
	app := apps[0]
	if app.ID != id {
		return vip.App{}, nil, false, fmt.Errorf("GET %s: %w: answer is app %q", at, errMalformedApp, app.ID)
	}
	return app, problems, true, nil
}
