package source

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// fakeMarathon serves /v2/apps, /v2/apps/{id} and /v2/events from apps
// the test changes, and counts what was asked.
type fakeMarathon struct {
	t *testing.T

	mu        sync.Mutex
	apps      map[string]string // id -> app JSON
	broken    map[string]string // id -> "500" or a malformed body
	lists     int
	appReads  map[string]int
	listGate  chan struct{} // when set, a list waits for it after reading the apps
	listing   chan struct{} // when set, told when a list has read the apps
	streams   []chan string // one per connected stream: events to send; closed to break it
	connected chan struct{}
}

func newFakeMarathon(t *testing.T) (*fakeMarathon, *httptest.Server) {
	f := &fakeMarathon{t: t, apps: map[string]string{}, broken: map[string]string{}, appReads: map[string]int{},
		connected: make(chan struct{}, 100)}
	srv := httptest.NewServer(f)
	t.Cleanup(func() {
		f.breakStreams()
		srv.CloseClientConnections()
		srv.Close()
	})
	return f, srv
}

func lwApp(id, host string, health ...bool) string {
	hc, res := "", ""
	if len(health) > 0 {
		hc = `"healthChecks": [{"protocol": "TCP"}],`
		if health[0] {
			res = `, "healthCheckResults": [{"alive": true}]`
		}
	}
	return fmt.Sprintf(`{"id": %q, %s "portDefinitions": [{"port": 0, "labels": {"VIP_0": "%s:80"}}],
	  "tasks": [{"id": "%s.t1", "host": %q, "ports": [31000], "state": "TASK_RUNNING"%s}]}`,
		id, hc, strings.TrimPrefix(id, "/"), strings.TrimPrefix(id, "/"), host, res)
}

func (f *fakeMarathon) set(id, app string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if app == "" {
		delete(f.apps, id)
	} else {
		f.apps[id] = app
	}
}

func (f *fakeMarathon) send(ev string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.streams {
		s <- ev
	}
}

func (f *fakeMarathon) breakStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.streams {
		close(s)
	}
	f.streams = nil
}

func (f *fakeMarathon) counts() (lists int, reads map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists, maps(f.appReads)
}

func maps(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (f *fakeMarathon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/v2/events":
		ch := make(chan string, 100)
		f.mu.Lock()
		f.streams = append(f.streams, ch)
		f.mu.Unlock()
		send := sse(w)
		send(evAttached)
		f.connected <- struct{}{}
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					return
				}
				send(ev)
			case <-r.Context().Done():
				return
			}
		}
	case r.URL.Path == "/v2/apps":
		if r.URL.Query().Get("embed") != "apps.tasks" {
			f.t.Errorf("list without embed=apps.tasks: %s", r.URL)
		}
		f.mu.Lock()
		f.lists++
		var list []string
		for _, id := range slices.Sorted(func(yield func(string) bool) {
			for id := range f.apps {
				if !yield(id) {
					return
				}
			}
		}) {
			list = append(list, f.apps[id])
		}
		gate, listing := f.listGate, f.listing
		f.mu.Unlock()
		body := `{"apps": [` + strings.Join(list, ",") + `]}`
		if listing != nil {
			listing <- struct{}{}
		}
		if gate != nil {
			<-gate
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
	case strings.HasPrefix(r.URL.Path, "/v2/apps/"):
		id := strings.TrimPrefix(r.URL.Path, "/v2/apps")
		if r.URL.Query().Get("embed") != "app.tasks" {
			f.t.Errorf("app read without embed=app.tasks: %s", r.URL)
		}
		f.mu.Lock()
		f.appReads[id]++
		app, ok := f.apps[id]
		bad, broken := f.broken[id]
		f.mu.Unlock()
		switch {
		case broken && bad == "500":
			http.Error(w, "boom", http.StatusInternalServerError)
		case broken:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(bad))
		case !ok:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = fmt.Fprintf(w, `{"message": "App '%s' does not exist"}`, id)
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"app": ` + app + `}`))
		}
	default:
		http.NotFound(w, r)
	}
}

// recSink keeps the groups a source delivered, as the pipeline would.
type recSink struct {
	mu       sync.Mutex
	groups   map[Key]Group
	replaces int
	updates  int
	staleErr error
	changed  chan struct{}
}

func newRecSink() *recSink {
	return &recSink{groups: map[Key]Group{}, changed: make(chan struct{}, 1000)}
}

func (s *recSink) Replace(groups []Group) {
	s.mu.Lock()
	s.groups = map[Key]Group{}
	for _, g := range groups {
		s.groups[g.Key] = g
	}
	s.replaces++
	s.mu.Unlock()
	s.changed <- struct{}{}
}

func (s *recSink) Update(changed []Group, gone []Key) {
	s.mu.Lock()
	for _, g := range changed {
		s.groups[g.Key] = g
	}
	for _, k := range gone {
		delete(s.groups, k)
	}
	s.updates++
	s.mu.Unlock()
	s.changed <- struct{}{}
}

func (s *recSink) Stale(err error) {
	s.mu.Lock()
	s.staleErr = err
	s.mu.Unlock()
	s.changed <- struct{}{}
}

// backends summarizes what the sink holds: app -> "host:state" of its
// first VIP's backends.
func (s *recSink) backends() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for k, g := range s.groups {
		if k == ProblemsKey {
			continue
		}
		var bs []string
		if len(g.Decls) > 0 {
			for _, b := range g.Decls[0].Backends {
				bs = append(bs, b.Addr.String()+":"+b.State.String())
			}
		}
		out[string(k)] = strings.Join(bs, ",")
	}
	return out
}

// eventually waits until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statusEvent(appID string) string {
	return fmt.Sprintf("event: status_update_event\ndata: {\"taskId\":\"x.1\",\"taskStatus\":\"TASK_RUNNING\",\"appId\":%q,\"eventType\":\"status_update_event\"}\n\n", appID)
}

func startRun(t *testing.T, srv *httptest.Server, opts MarathonOptions) (*Marathon, *recSink) {
	t.Helper()
	if opts.ReconnectMin == 0 {
		opts.ReconnectMin, opts.ReconnectMax = 5*time.Millisecond, 20*time.Millisecond
	}
	m := newTestMarathon(t, srv.URL, opts)
	sink := newRecSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, vip.Config{}, sink) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return 5s after cancel")
		}
		m.client.CloseIdleConnections()
	})
	return m, sink
}

// Events name apps: only those are read, one request each; a 404 removes
// the app; an event for an app nobody knew adds it; the others are never
// read again.
func TestMarathonRunReadsNamedApps(t *testing.T) {
	f, srv := newFakeMarathon(t)
	for i := range 5 {
		f.set(fmt.Sprintf("/app%d", i), lwApp(fmt.Sprintf("/app%d", i), fmt.Sprintf("198.19.0.%d", i+1)))
	}
	m, sink := startRun(t, srv, MarathonOptions{})
	eventually(t, "first list", func() bool { return len(sink.backends()) == 5 })
	<-f.connected
	eventually(t, "list after attach", func() bool { l, _ := f.counts(); return l >= 1 })
	time.Sleep(50 * time.Millisecond) // let the list the attach asked for finish
	lists, _ := f.counts()
	before := m.BytesRead()

	f.set("/app1", lwApp("/app1", "198.19.0.99"))
	f.send(statusEvent("/app1"))
	eventually(t, "app1 updated", func() bool { return sink.backends()["/app1"] == "198.19.0.99:active" })

	f.set("/app2", "")
	f.send(statusEvent("/app2"))
	eventually(t, "app2 gone", func() bool { _, ok := sink.backends()["/app2"]; return !ok })

	f.set("/new", lwApp("/new", "198.19.0.50"))
	f.send(`event: api_post_event` + "\n" + `data: {"eventType":"api_post_event","appDefinition":{"id":"/new"}}` + "\n\n")
	eventually(t, "new app", func() bool { return sink.backends()["/new"] == "198.19.0.50:active" })

	f.send(statusEvent("/unknown"))
	eventually(t, "unknown read", func() bool { _, r := f.counts(); return r["/unknown"] == 1 })

	l, reads := f.counts()
	if l != lists {
		t.Errorf("events caused %d full lists", l-lists)
	}
	for id, n := range reads {
		if n != 1 || !slices.Contains([]string{"/app1", "/app2", "/new", "/unknown"}, id) {
			t.Errorf("app %s read %d times", id, n)
		}
	}
	if got := len(sink.backends()); got != 5 {
		t.Errorf("sink holds %d apps, want 5: %v", got, sink.backends())
	}
	if n := m.BytesRead() - before; n > 4096 {
		t.Errorf("four single-app reads took %d bytes", n)
	}
}

// Ids named within the minimum interval are read once each.
func TestMarathonRunCoalesces(t *testing.T) {
	f, srv := newFakeMarathon(t)
	f.set("/a", lwApp("/a", "198.19.0.1"))
	_, sink := startRun(t, srv, MarathonOptions{MinInterval: 300 * time.Millisecond})
	<-f.connected
	eventually(t, "list", func() bool { return len(sink.backends()) == 1 })
	time.Sleep(400 * time.Millisecond)
	for range 20 {
		f.send(statusEvent("/a"))
	}
	eventually(t, "read", func() bool { _, r := f.counts(); return r["/a"] >= 1 })
	time.Sleep(700 * time.Millisecond)
	if _, r := f.counts(); r["/a"] > 2 {
		t.Errorf("20 events within the interval gave %d reads", r["/a"])
	}
}

// A stream that breaks in the middle of a burst: what changed while it was
// down is found by the full list after it reconnects.
func TestMarathonRunStreamBreakMidBurst(t *testing.T) {
	f, srv := newFakeMarathon(t)
	for i := range 3 {
		f.set(fmt.Sprintf("/b%d", i), lwApp(fmt.Sprintf("/b%d", i), "198.19.0.1"))
	}
	_, sink := startRun(t, srv, MarathonOptions{})
	<-f.connected
	eventually(t, "list", func() bool { return len(sink.backends()) == 3 })
	time.Sleep(50 * time.Millisecond)
	lists, _ := f.counts()
	// The burst: b0 changes and its event arrives; b1 and b2 change but the
	// stream breaks before their events.
	f.set("/b0", lwApp("/b0", "198.19.0.10"))
	f.set("/b1", lwApp("/b1", "198.19.0.11"))
	f.set("/b2", "")
	f.send(statusEvent("/b0"))
	f.breakStreams()
	<-f.connected
	eventually(t, "relisted", func() bool {
		b := sink.backends()
		_, b2 := b["/b2"]
		return b["/b0"] == "198.19.0.10:active" && b["/b1"] == "198.19.0.11:active" && !b2
	})
	if l, _ := f.counts(); l <= lists {
		t.Errorf("no full list after the stream reconnected")
	}
}

// An event that arrives while a full list is being read is not lost: the
// app it names is read after the list.
func TestMarathonRunEventDuringListNotLost(t *testing.T) {
	f, srv := newFakeMarathon(t)
	f.set("/x", lwApp("/x", "198.19.0.1"))
	f.set("/y", lwApp("/y", "198.19.0.2"))
	m, sink := startRun(t, srv, MarathonOptions{})
	<-f.connected
	eventually(t, "list", func() bool { return len(sink.backends()) == 2 })
	time.Sleep(50 * time.Millisecond)

	gate, listing := make(chan struct{}), make(chan struct{}, 1)
	f.mu.Lock()
	f.listGate, f.listing = gate, listing
	f.mu.Unlock()
	m.Relist()
	<-listing // the list has read the apps: what changes now is not in it
	f.set("/x", lwApp("/x", "198.19.0.77"))
	f.send(statusEvent("/x"))
	time.Sleep(50 * time.Millisecond) // the event is in before the list ends
	f.mu.Lock()
	f.listGate, f.listing = nil, nil
	f.mu.Unlock()
	close(gate)
	eventually(t, "x after the list", func() bool { return sink.backends()["/x"] == "198.19.0.77:active" })
}

// A 500 or a malformed answer for one app: logged with the app id, that
// app keeps its last good state, the others are untouched.
func TestMarathonRunBadAppKeepsLastGood(t *testing.T) {
	f, srv := newFakeMarathon(t)
	f.set("/good", lwApp("/good", "198.19.0.1"))
	f.set("/bad", lwApp("/bad", "198.19.0.2"))
	var mu sync.Mutex
	var logged []string
	_, sink := startRun(t, srv, MarathonOptions{OnAppError: func(id string, err error) {
		mu.Lock()
		logged = append(logged, id+": "+err.Error())
		mu.Unlock()
	}})
	<-f.connected
	eventually(t, "list", func() bool { return len(sink.backends()) == 2 })
	time.Sleep(50 * time.Millisecond)

	for i, bad := range []string{"500", `{"app": {"id": "/bad", "portDefinitions": 7}}`, `{"apps": []}`} {
		f.mu.Lock()
		f.broken["/bad"] = bad
		f.mu.Unlock()
		f.send(statusEvent("/bad"))
		eventually(t, "error logged", func() bool { mu.Lock(); defer mu.Unlock(); return len(logged) == i+1 })
		mu.Lock()
		msg := logged[i]
		mu.Unlock()
		if !strings.HasPrefix(msg, "/bad: ") || !strings.Contains(msg, "/v2/apps/bad") {
			t.Errorf("logged %q: want the app id and the URL", msg)
		}
		b := sink.backends()
		if b["/bad"] != "198.19.0.2:active" || b["/good"] != "198.19.0.1:active" {
			t.Errorf("after %q: %v", bad, b)
		}
		sink.mu.Lock()
		ps := sink.groups["/bad"].Problems
		sink.mu.Unlock()
		if len(ps) == 0 || ps[len(ps)-1].App != "/bad" {
			t.Errorf("after %q: no problem naming /bad: %v", bad, ps)
		}
	}
	// Fixed: read again at the next event.
	f.mu.Lock()
	delete(f.broken, "/bad")
	f.mu.Unlock()
	f.set("/bad", lwApp("/bad", "198.19.0.3"))
	f.send(statusEvent("/bad"))
	eventually(t, "fixed", func() bool { return sink.backends()["/bad"] == "198.19.0.3:active" })
}

// Health: a new task with checks and no result is starting; after a leader
// failover (a new stream, a full list with no health results) a task seen
// healthy stays active.
func TestMarathonRunHealthMemory(t *testing.T) {
	f, srv := newFakeMarathon(t)
	f.set("/h", lwApp("/h", "198.19.0.1", false))
	_, sink := startRun(t, srv, MarathonOptions{})
	<-f.connected
	eventually(t, "starting", func() bool { return sink.backends()["/h"] == "198.19.0.1:starting" })
	f.set("/h", lwApp("/h", "198.19.0.1", true))
	f.send(statusEvent("/h"))
	eventually(t, "active", func() bool { return sink.backends()["/h"] == "198.19.0.1:active" })
	lists, _ := f.counts()
	// Failover: results vanish, the stream breaks and comes back.
	f.set("/h", lwApp("/h", "198.19.0.1", false))
	f.breakStreams()
	<-f.connected
	eventually(t, "relist", func() bool { l, _ := f.counts(); return l > lists })
	time.Sleep(50 * time.Millisecond)
	if got := sink.backends()["/h"]; got != "198.19.0.1:active" {
		t.Errorf("after a failover without results: %q, want active kept", got)
	}
}

func TestEventApps(t *testing.T) {
	for _, c := range []struct {
		name, data string
		ids        []string
		ok         bool
	}{
		{"status_update_event", `{"appId": "/a"}`, []string{"/a"}, true},
		{"instance_changed_event", `{"runSpecId": "/g/b"}`, []string{"/g/b"}, true},
		{"api_post_event", `{"appDefinition": {"id": "c"}}`, []string{"/c"}, true},
		{"deployment_info", `{"plan": {"steps": [{"actions": [{"action": "StartApplication", "app": "/d"}, {"app": "/e"}]}]}, "currentStep": {"actions": [{"app": "/d"}]}}`, []string{"/d", "/e"}, true},
		{"group_change_success", `{"groupId": "/g"}`, nil, true},
		{"status_update_event", `{}`, nil, false},
		{"status_update_event", `not json`, nil, false},
		{"", `{"appId": "/a"}`, nil, false},
		{eventStreamAttached, `{}`, nil, false},
	} {
		ids, ok := eventApps(c.name, sseEvent{Type: c.name, Data: c.data})
		if ok != c.ok || !slices.Equal(ids, c.ids) {
			t.Errorf("%s %s: %v %v, want %v %v", c.name, c.data, ids, ok, c.ids, c.ok)
		}
	}
}
