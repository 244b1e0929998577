package source

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// watcher runs Watch in the background and records what it reports.
type watcher struct {
	m        *Marathon
	changed  chan struct{}
	attached chan struct{}
	errs     chan streamError
	cancel   context.CancelFunc
	done     chan error
}

type streamError struct {
	err     error
	retryIn time.Duration
}

// startWatch starts m.Watch; the test's cleanup stops it and checks that it
// returned and left no goroutine behind.
func startWatch(t *testing.T, rawURL string, opts MarathonOptions, mods ...func(*Marathon)) *watcher {
	t.Helper()
	w := &watcher{
		changed:  make(chan struct{}, 1000),
		attached: make(chan struct{}, 1000),
		errs:     make(chan streamError, 1000),
		done:     make(chan error, 1),
	}
	opts.OnStreamError = func(err error, retryIn time.Duration) {
		if err == nil {
			t.Errorf("OnStreamError with a nil error")
		}
		w.errs <- streamError{err, retryIn}
	}
	opts.OnStreamAttached = func() { w.attached <- struct{}{} }
	w.m = newTestMarathon(t, rawURL, opts)
	for _, mod := range mods {
		mod(w.m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() { w.done <- w.m.Watch(ctx, func() { w.changed <- struct{}{} }) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

// stop cancels Watch and checks that it returns nil promptly and that none
// of the source's goroutines outlive it.
func (w *watcher) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	select {
	case err := <-w.done:
		if err != nil {
			t.Errorf("Watch returned %v", err)
		}
		w.done <- err // for a second stop
	case <-time.After(5 * time.Second):
		t.Fatalf("Watch did not return 5s after cancel")
	}
	w.m.client.CloseIdleConnections()
	checkNoSourceGoroutines(t)
}

// checkNoSourceGoroutines fails if a goroutine of this package's Marathon
// code still runs (time for the idle timer's function to finish is given).
func checkNoSourceGoroutines(t *testing.T) {
	t.Helper()
	var stacks string
	for range 100 {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "source.(*Marathon)") && !strings.Contains(stacks, "source.(*sseReader)") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("goroutines of the Marathon source still run:\n%s", stacks)
}

// wait waits for n signals on ch.
func wait[T any](t *testing.T, ch <-chan T, n int, what string) []T {
	t.Helper()
	var out []T
	deadline := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case v := <-ch:
			out = append(out, v)
		case <-deadline:
			t.Fatalf("%s: got %d of %d in 10s", what, len(out), n)
		}
	}
	return out
}

// none checks that ch gets nothing for d.
func none[T any](t *testing.T, ch <-chan T, d time.Duration, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s: unexpected %v", what, v)
	case <-time.After(d):
	}
}

// sse starts an event stream response and returns a function that writes
// and flushes.
func sse(w http.ResponseWriter) func(string) {
	w.Header().Set("Content-Type", "text/event-stream;charset=UTF-8")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	return func(s string) {
		_, _ = io.WriteString(w, s)
		_ = rc.Flush()
	}
}

const (
	evAttached = "event: event_stream_attached\ndata: {\"remoteAddress\":\"127.0.0.1\",\"eventType\":\"event_stream_attached\",\"timestamp\":\"2017-02-18T19:12:00.102Z\"}\n\n"
	evStatus   = "event: status_update_event\ndata: {\"taskId\":\"web.a1\",\"taskStatus\":\"TASK_RUNNING\",\"appId\":\"/web\",\"host\":\"198.19.0.11\",\"ports\":[31001],\"eventType\":\"status_update_event\"}\n\n"
)

// The real capture: the attach and both status updates trigger, and the
// request asks for the events that matter.
func TestMarathonWatchCapture(t *testing.T) {
	capture := string(readFixture(t, "events.txt"))
	var reqs atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		q := r.URL.Query()
		if r.URL.Path != "/v2/events" || r.Header.Get("Accept") != "text/event-stream" || q.Get("plan-format") != "light" {
			t.Errorf("request %s Accept %q", r.URL, r.Header.Get("Accept"))
		}
		types := q["event_type"]
		for _, want := range append([]string{"event_stream_attached"}, marathonEvents...) {
			if !slices.Contains(types, want) {
				t.Errorf("event_type %q not requested (%q)", want, types)
			}
		}
		if slices.Contains(types, "event_stream_detached") || slices.Contains(types, "framework_message_event") {
			t.Errorf("irrelevant event types requested: %q", types)
		}
		send := sse(w)
		send(capture)
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	w := startWatch(t, srv.URL, MarathonOptions{})
	wait(t, w.changed, 3, "changed")
	wait(t, w.attached, 1, "attached")
	none(t, w.changed, 100*time.Millisecond, "changed")
	none(t, w.errs, 0, "stream errors")
	w.stop(t)
	if n := reqs.Load(); n != 1 {
		t.Errorf("%d requests", n)
	}
}

// What triggers and what does not: other clients' attaches, detaches,
// irrelevant types, comments and keep-alives do not; unnamed events are
// judged by their eventType, or trigger when it cannot be read.
func TestMarathonWatchFilter(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		send := sse(w)
		send(evAttached) // 1
		send(": a comment\r\n\r\n\r\n")
		send("event: framework_message_event\r\ndata: {\"eventType\":\"framework_message_event\"}\r\n\r\n")
		send("event: event_stream_detached\ndata: {}\n\n")
		send(evAttached) // another client
		send("event: scheduler_reregistered_event\ndata: {}\n\n")
		send("data: {\"eventType\":\"framework_message_event\"}\n\n")
		send("data: {\"eventType\":\"api_post_event\",\n")
		send("data: \"uri\":\"/v2/apps/web\"}\n\n") // 2: unnamed, multi-line
		send("data: not json\n\n")                  // 3: cannot tell
		send("event: health_status_changed_event\ndata: {\"appId\":\"/web\",\n")
		send("data: \"alive\":false}\n\n")                         // 4
		send("event: instance_health_changed_event\rdata: {}\r\r") // 5
		send("event: status_update_event\ndata: {}\n")             // not ended
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	w := startWatch(t, srv.URL, MarathonOptions{})
	wait(t, w.changed, 5, "changed")
	none(t, w.changed, 200*time.Millisecond, "changed")
	if n := len(w.attached); n != 1 {
		t.Errorf("OnStreamAttached called %d times", n)
	}
}

// A stream cut mid-event, then a 500, then a good stream: the partial event
// does not trigger, every failure is reported, every attach triggers.
func TestMarathonWatchReconnect(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch conns.Add(1) {
		case 1:
			send := sse(w)
			send(evAttached)
			send("event: status_update_event\ndata: {\"taskId\":") // cut here
		case 2:
			http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		case 3:
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, "<html>login</html>")
		default:
			send := sse(w)
			send(evAttached)
			send(evStatus)
			<-r.Context().Done()
		}
	}))
	t.Cleanup(srv.Close)
	w := startWatch(t, srv.URL, MarathonOptions{ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond})
	errs := wait(t, w.errs, 3, "stream errors")
	for i, want := range []string{"server closed the stream", "status 500 Internal Server Error", `content type "text/html"`} {
		if msg := errs[i].err.Error(); !strings.Contains(msg, want) || !strings.Contains(msg, srv.URL+"/v2/events?event_type=") {
			t.Errorf("error %d = %q, want %q and the URL", i, msg, want)
		}
	}
	wait(t, w.changed, 3, "changed")
	wait(t, w.attached, 2, "attached")
	none(t, w.changed, 100*time.Millisecond, "changed")
	none(t, w.errs, 0, "stream errors")
	if n := conns.Load(); n != 4 {
		t.Errorf("%d connections, want 4", n)
	}
}

// The reconnect delay doubles from min to max, jittered into [d/2, d], and
// starts over after a stream that was healthy long enough.
func TestMarathonWatchBackoff(t *testing.T) {
	var healthy atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if healthy.Load() {
			send := sse(w)
			send(evAttached)
			time.Sleep(150 * time.Millisecond)
			return // then the server ends the stream
		}
		http.Error(w, "no leader", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	const lo, hi = 4 * time.Millisecond, 32 * time.Millisecond
	w := startWatch(t, srv.URL, MarathonOptions{ReconnectMin: lo, ReconnectMax: hi},
		func(m *Marathon) { m.healthyAfter = 100 * time.Millisecond })
	errs := wait(t, w.errs, 7, "stream errors")
	healthy.Store(true)
	d := lo
	for i, e := range errs {
		if e.retryIn < d/2 || e.retryIn > d {
			t.Errorf("retry %d in %s, want within [%s, %s]", i, e.retryIn, d/2, d)
		}
		d = min(2*d, hi)
	}
	// Drain failures that raced with the switch, then one healthy stream
	// ends: its retry starts over at the minimum.
	for {
		e := wait(t, w.errs, 1, "stream errors")[0]
		if strings.Contains(e.err.Error(), "server closed the stream") {
			if e.retryIn > lo {
				t.Errorf("after a healthy stream: retry in %s, want at most %s", e.retryIn, lo)
			}
			break
		}
	}
}

// A silent stream is cut by the idle timeout and reconnected; keep-alives
// keep it up.
func TestMarathonWatchIdleTimeout(t *testing.T) {
	var conns atomic.Int32
	stopKeepAlive := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := conns.Add(1)
		if n == 1 {
			// Never answers: the connection phase is bounded as well.
			<-r.Context().Done()
			return
		}
		send := sse(w)
		send(evAttached)
		if n == 2 {
			<-r.Context().Done() // silent after the attach
			return
		}
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-stopKeepAlive:
				send(evStatus)
				<-r.Context().Done()
				return
			case <-tick.C:
				send("\r\n") // Jetty's keep-alive
			}
		}
	}))
	t.Cleanup(srv.Close)
	w := startWatch(t, srv.URL, MarathonOptions{IdleTimeout: 400 * time.Millisecond, ReconnectMin: time.Millisecond, ReconnectMax: time.Millisecond})
	errs := wait(t, w.errs, 2, "stream errors")
	for i, e := range errs {
		if msg := e.err.Error(); !strings.Contains(msg, "idle timeout") || !strings.Contains(msg, srv.URL+"/v2/events") {
			t.Errorf("error %d = %q, want an idle timeout naming the URL", i, msg)
		}
	}
	wait(t, w.changed, 2, "changed") // the attaches of connections 2 and 3
	none(t, w.errs, time.Second, "stream errors with keep-alives")
	close(stopKeepAlive)
	wait(t, w.changed, 1, "changed after keep-alives")
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

// A standby redirects /v2/events to the leader (Marathon: 302 with the
// same path and query); credentials and filters reach the leader.
func TestMarathonWatchRedirect(t *testing.T) {
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		if user != "l4lb" || pass != "pw" || len(r.URL.Query()["event_type"]) != len(marathonEvents)+1 {
			t.Errorf("leader got %s with user %q", r.URL, user)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		send := sse(w)
		send(evAttached)
		<-r.Context().Done()
	}))
	t.Cleanup(leader.Close)
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, leader.URL+r.URL.RequestURI(), http.StatusFound)
	}))
	t.Cleanup(standby.Close)
	w := startWatch(t, standby.URL, MarathonOptions{Username: "l4lb", Password: "pw"})
	wait(t, w.changed, 1, "changed")
	none(t, w.errs, 50*time.Millisecond, "stream errors")
}

// Deployment events of Marathon < 1.7 carry whole root groups on one data
// line: megabytes, read through with bounded memory.
func TestMarathonWatchHugeEvent(t *testing.T) {
	huge := `{"eventType":"deployment_info","plan":{"original":{"apps":[` + strings.Repeat(`{"id":"/a","cmd":"sleep 100"},`, 100000) + `{}]}}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		send := sse(w)
		send(evAttached)
		send("event: deployment_info\ndata: " + huge + "\n\n")
		send(evStatus)
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	w := startWatch(t, srv.URL, MarathonOptions{})
	wait(t, w.changed, 3, "changed")
	none(t, w.errs, 0, "stream errors")
}

// Cancelling returns at once, whether Watch is connected, connecting or
// waiting to reconnect, and the server sees the stream closed.
func TestMarathonWatchCancel(t *testing.T) {
	closed := make(chan struct{}, 10)
	var mu sync.Mutex
	mode := "stream"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		m := mode
		mu.Unlock()
		switch m {
		case "stream":
			send := sse(w)
			send(evAttached)
		case "hang":
		case "fail":
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		<-r.Context().Done()
		closed <- struct{}{}
	}))
	t.Cleanup(srv.Close)

	for _, m := range []string{"stream", "hang", "fail"} {
		t.Run(m, func(t *testing.T) {
			mu.Lock()
			mode = m
			mu.Unlock()
			w := startWatch(t, srv.URL, MarathonOptions{ReconnectMin: time.Hour, ReconnectMax: time.Hour})
			switch m {
			case "stream":
				wait(t, w.changed, 1, "changed")
			case "hang":
				time.Sleep(50 * time.Millisecond)
			case "fail":
				wait(t, w.errs, 1, "stream errors")
			}
			start := time.Now()
			w.stop(t)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Watch took %s to return: it does not stop when cancelled", d)
			}
			if m != "fail" {
				wait(t, closed, 1, "server saw the close")
			}
		})
	}
}

func TestJitter(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 2, 3, time.Millisecond, 30 * time.Second} {
		for range 1000 {
			if j := jitter(d); j < d/2 || j > d {
				t.Fatalf("jitter(%s) = %s", d, j)
			}
		}
	}
}

func (e streamError) String() string { return e.err.Error() + " (retry in " + e.retryIn.String() + ")" }

func TestMarathonWatchNilChanged(t *testing.T) {
	m := newTestMarathon(t, "http://198.19.0.1:8080", MarathonOptions{})
	if err := m.Watch(context.Background(), nil); err == nil {
		t.Fatal("Watch with a nil changed func returned nil")
	}
}
