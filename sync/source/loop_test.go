package source_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
)

// fakeMarathon is a Marathon whose apps change under the test's control,
// announcing each change on its event streams as Marathon does.
type fakeMarathon struct {
	mu      sync.Mutex
	tasks   int           // tasks of /web
	streams chan struct{} // closed to drop every event stream
	notify  []chan string // one per open stream
}

func (f *fakeMarathon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v2/apps":
		f.mu.Lock()
		n := f.tasks
		f.mu.Unlock()
		var tasks []string
		for i := range n {
			tasks = append(tasks, fmt.Sprintf(`{"id": "web.%d", "host": "198.19.0.%d", "ports": [31000], "state": "TASK_RUNNING"}`, i, i+10))
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"apps": [{"id": "/web", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "web:80"}}], "tasks": [%s]}]}`, strings.Join(tasks, ","))
	case "/v2/events":
		ch := make(chan string, 16)
		f.mu.Lock()
		f.notify = append(f.notify, ch)
		drop := f.streams
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		send := func(s string) { _, _ = io.WriteString(w, s); _ = rc.Flush() }
		send("event: event_stream_attached\ndata: {\"eventType\":\"event_stream_attached\"}\n\n")
		for {
			select {
			case <-r.Context().Done():
				return
			case <-drop:
				return
			case ev := <-ch:
				send("event: " + ev + "\ndata: {\"eventType\":\"" + ev + "\"}\n\n")
			}
		}
	default:
		http.NotFound(w, r)
	}
}

// set changes the number of tasks and, if event is not empty, announces it.
func (f *fakeMarathon) set(tasks int, event string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks = tasks
	if event != "" {
		for _, ch := range f.notify {
			select {
			case ch <- event:
			default:
			}
		}
	}
}

// dropStreams ends every open event stream and keeps new ones up.
func (f *fakeMarathon) dropStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.streams)
	f.streams = make(chan struct{})
	f.notify = nil
}

// The sync loop as the daemon wires it: Watch triggers the runner, the
// runner loads. Changes announced by events apply at once, changes made
// while the stream was down apply when it is back, both without waiting
// for the resync.
func TestMarathonWithRunner(t *testing.T) {
	fake := &fakeMarathon{tasks: 1, streams: make(chan struct{})}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)

	src, err := source.NewMarathon(srv.URL, source.MarathonOptions{ReconnectMin: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	loaded := make(chan int, 100)
	r := runner.New(func(ctx context.Context, why runner.Reason) error {
		snap, err := src.Load(ctx)
		if err != nil {
			return err
		}
		loaded <- len(snap.Apps[0].Tasks)
		return nil
	}, runner.Options{MinInterval: 50 * time.Millisecond, Resync: time.Hour})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = src.Watch(ctx, r.Trigger) })
	wg.Go(func() { _ = r.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	// expect waits for a load that sees n tasks.
	expect := func(n int, what string) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case got := <-loaded:
				if got == n {
					return
				}
			case <-deadline:
				t.Fatalf("%s: no load with %d tasks within 5s", what, n)
			}
		}
	}
	expect(1, "first load")
	fake.set(3, "status_update_event")
	expect(3, "after a status update")
	fake.set(2, "framework_message_event") // not a trigger...
	fake.set(2, "health_status_changed_event")
	expect(2, "after a health change")
	fake.set(5, "") // a change the stream did not announce (lost while down)
	fake.dropStreams()
	expect(5, "after the stream came back")
}
