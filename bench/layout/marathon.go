package layout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
)

// Marathon is a Marathon-shaped server for the daemon's marathon: source,
// listening inside a namespace: GET /v2/apps?embed=apps.tasks (the whole
// list), GET /v2/apps/{id}?embed=app.tasks (one app, 404 when unknown) and
// GET /v2/events (server-sent events: the attach, then what Event sends,
// and a keep-alive every 10 s as Marathon's). It counts the bytes of app
// data it serves, so a benchmark can tell what one change costs Marathon.
type Marathon struct {
	mu      sync.Mutex
	ids     []string // in list order
	apps    map[string][]byte
	streams map[chan string]bool
	srv     *http.Server
	served  atomic.Int64
	lists   atomic.Int64
	Addr    string
}

// AppsByID cuts a {"apps": [...]} document into its apps, by id.
func AppsByID(appsJSON []byte) ([]string, map[string][]byte, error) {
	var list struct {
		Apps []json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(appsJSON, &list); err != nil {
		return nil, nil, fmt.Errorf("apps: %w", err)
	}
	ids := make([]string, 0, len(list.Apps))
	apps := make(map[string][]byte, len(list.Apps))
	for _, raw := range list.Apps {
		var probe struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil || probe.ID == "" {
			return nil, nil, fmt.Errorf("app without an id: %.80s", raw)
		}
		if !strings.HasPrefix(probe.ID, "/") {
			probe.ID = "/" + probe.ID
		}
		ids = append(ids, probe.ID)
		apps[probe.ID] = raw
	}
	return ids, apps, nil
}

// StartMarathon serves appsJSON at addr inside ns.
func StartMarathon(ns *netns.NS, addr string, appsJSON []byte) (*Marathon, error) {
	ids, apps, err := AppsByID(appsJSON)
	if err != nil {
		return nil, err
	}
	m := &Marathon{ids: ids, apps: apps, streams: map[chan string]bool{}, Addr: addr}
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		return nil, fmt.Errorf("marathon listen %s: %w", addr, err)
	}
	m.srv = &http.Server{Handler: m, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = m.srv.Serve(ln) }()
	return m, nil
}

// Close stops the server and its streams.
func (m *Marathon) Close() error { return m.srv.Close() }

// Served is the number of bytes of app data served so far.
func (m *Marathon) Served() int64 { return m.served.Load() }

// Lists is the number of full lists served so far.
func (m *Marathon) Lists() int64 { return m.lists.Load() }

// App returns the JSON of one app.
func (m *Marathon) App(id string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.apps[id]
}

// SetApp replaces one app's JSON (it must exist).
func (m *Marathon) SetApp(id string, raw []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.apps[id] = raw
}

// Event sends a status_update_event naming the app on every stream.
func (m *Marathon) Event(appID string) {
	ev := fmt.Sprintf("event: status_update_event\ndata: {\"eventType\":\"status_update_event\",\"appId\":%q,\"taskStatus\":\"TASK_RUNNING\"}\n\n", appID)
	m.mu.Lock()
	defer m.mu.Unlock()
	for ch := range m.streams {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (m *Marathon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/v2/events":
		m.events(w, r)
	case r.URL.Path == "/v2/apps":
		var b bytes.Buffer
		b.WriteString(`{"apps": [`)
		m.mu.Lock()
		for i, id := range m.ids {
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(m.apps[id])
		}
		m.mu.Unlock()
		b.WriteString("]}")
		m.lists.Add(1)
		m.served.Add(int64(b.Len()))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b.Bytes())
	case strings.HasPrefix(r.URL.Path, "/v2/apps/"):
		raw := m.App(strings.TrimPrefix(r.URL.Path, "/v2/apps"))
		w.Header().Set("Content-Type", "application/json")
		if raw == nil {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"message": "App does not exist"}`))
			return
		}
		body := append(append([]byte(`{"app": `), raw...), '}')
		m.served.Add(int64(len(body)))
		_, _ = w.Write(body)
	default:
		http.NotFound(w, r)
	}
}

func (m *Marathon) events(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	fl, _ := w.(http.Flusher)
	ch := make(chan string, 64)
	m.mu.Lock()
	m.streams[ch] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.streams, ch)
		m.mu.Unlock()
	}()
	fmt.Fprint(w, "event: event_stream_attached\ndata: {\"eventType\":\"event_stream_attached\"}\n\n")
	if fl != nil {
		fl.Flush()
	}
	keepAlive := time.NewTicker(10 * time.Second)
	defer keepAlive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-ch:
			fmt.Fprint(w, ev)
		case <-keepAlive.C:
			fmt.Fprint(w, "\n")
		}
		if fl != nil {
			fl.Flush()
		}
	}
}
