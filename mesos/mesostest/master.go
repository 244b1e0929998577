// Package mesostest is a Mesos master for tests: it speaks the operator
// API's wire format (POST /api/v1, SUBSCRIBE answered with chunked RecordIO
// of JSON events named as in Mesos's master.proto, GET_STATE), redirects to
// a leader with 307 like a standby master, answers 503 while it has no
// leader, and lets a test cut records across chunks, send garbage and stop
// heartbeats.
package mesostest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/l4lb/l4lb/mesos"
)

// Master is a fake Mesos master. Its fields may be set before the first
// request, or later under Lock.
type Master struct {
	// URL is the master's base URL (without /api/v1).
	URL string

	srv *httptest.Server
	mu  sync.Mutex
	// state is what SUBSCRIBED and GET_STATE carry.
	state mesos.GetState
	// heartbeat is the interval announced in SUBSCRIBED, and at which
	// HEARTBEAT events are sent; zero sends none (15 s announced).
	heartbeat time.Duration
	// chunk cuts every record into writes of this many bytes, each flushed
	// as its own HTTP chunk; zero writes a record at once.
	chunk int
	// redirect, when set, is the host:port of the leader: SUBSCRIBE and
	// GET_STATE are answered with 307 and Location //host:port/api/v1.
	redirect string
	// unavailable is how many requests are still answered 503.
	unavailable int
	// token, when set, is the Authorization header every request must have.
	token string

	subs       map[*sub]struct{}
	subscribes int
	changed    chan struct{} // closed and replaced when subscribers change
}

type sub struct {
	out  chan []byte   // framed records to write
	stop chan struct{} // closed to end the stream
	done chan struct{} // closed when the stream has ended
	once sync.Once
}

// Start runs a master on a loopback port (or on ln when not nil: a test
// namespace's address). Close it when done.
func Start(ln net.Listener) *Master {
	m := &Master{subs: map[*sub]struct{}{}, changed: make(chan struct{})}
	m.srv = httptest.NewUnstartedServer(http.HandlerFunc(m.serve))
	if ln != nil {
		m.srv.Listener.Close()
		m.srv.Listener = ln
	}
	m.srv.Start()
	m.URL = m.srv.URL
	return m
}

// Addr is the master's host:port.
func (m *Master) Addr() string { return m.srv.Listener.Addr().String() }

// Close ends every stream and stops the server.
func (m *Master) Close() {
	m.CloseStreams()
	m.srv.Close()
}

// SetState sets what the next SUBSCRIBED and GET_STATE carry.
func (m *Master) SetState(gs mesos.GetState) {
	m.mu.Lock()
	m.state = gs
	m.mu.Unlock()
}

// SetHeartbeat sets the heartbeat interval (zero: no heartbeats).
func (m *Master) SetHeartbeat(d time.Duration) {
	m.mu.Lock()
	m.heartbeat = d
	m.mu.Unlock()
}

// SetChunk cuts records into HTTP chunks of n bytes.
func (m *Master) SetChunk(n int) {
	m.mu.Lock()
	m.chunk = n
	m.mu.Unlock()
}

// RedirectTo makes this master a standby that redirects to leader
// (host:port); "" makes it answer itself.
func (m *Master) RedirectTo(leader string) {
	m.mu.Lock()
	m.redirect = leader
	m.mu.Unlock()
}

// Unavailable answers the next n requests with 503.
func (m *Master) Unavailable(n int) {
	m.mu.Lock()
	m.unavailable = n
	m.mu.Unlock()
}

// RequireToken makes every request need Authorization: token=TOKEN.
func (m *Master) RequireToken(token string) {
	m.mu.Lock()
	m.token = token
	m.mu.Unlock()
}

// Subscribes returns how many subscriptions were accepted so far.
func (m *Master) Subscribes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.subscribes
}

// WaitSubscribes waits until at least n subscriptions were accepted.
func (m *Master) WaitSubscribes(n int, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		m.mu.Lock()
		got, ch := m.subscribes, m.changed
		m.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("%d subscriptions after %s, want %d", got, timeout, n)
		}
	}
}

// Send sends an event to every subscriber.
func (m *Master) Send(ev mesos.Event) {
	data, err := json.Marshal(ev)
	if err != nil {
		panic(fmt.Sprintf("mesostest: marshal event: %v", err)) // a bug in the test
	}
	m.SendRaw(mesos.AppendRecord(nil, data))
}

// SendRaw writes bytes as they are (framing included) to every subscriber.
func (m *Master) SendRaw(b []byte) {
	m.mu.Lock()
	subs := make([]*sub, 0, len(m.subs))
	for s := range m.subs {
		subs = append(subs, s)
	}
	m.mu.Unlock()
	for _, s := range subs {
		select {
		case s.out <- b:
		case <-s.stop:
		case <-s.done:
		}
	}
}

// CloseStreams ends every subscription (the master went away).
func (m *Master) CloseStreams() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for s := range m.subs {
		s.once.Do(func() { close(s.stop) })
	}
}

// StopHeartbeats keeps the streams open but silent.
func (m *Master) StopHeartbeats() { m.SetHeartbeat(0) }

func (m *Master) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *Master) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "Expecting 'POST'", http.StatusMethodNotAllowed)
		return
	}
	var call struct {
		Type string `json:"type"`
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err := json.Unmarshal(body, &call); err != nil || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "Failed to parse body into Call", http.StatusBadRequest)
		return
	}
	m.mu.Lock()
	if m.token != "" && r.Header.Get("Authorization") != "token="+m.token {
		m.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `acsjwt realm="DCOS"`)
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if m.unavailable > 0 {
		m.unavailable--
		m.mu.Unlock()
		http.Error(w, "No leader elected", http.StatusServiceUnavailable)
		return
	}
	if m.redirect != "" {
		loc := "//" + m.redirect + "/api/v1"
		m.mu.Unlock()
		w.Header().Set("Location", loc)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	state := m.state
	hb := m.heartbeat
	m.mu.Unlock()

	switch call.Type {
	case "GET_STATE":
		data, _ := json.Marshal(mesos.Response{Type: "GET_STATE", GetState: &state})
		w.Header().Set("Content-Type", "application/json")
		w.Write(data)
	case "SUBSCRIBE":
		m.subscribe(w, r, state, hb)
	default:
		http.Error(w, "unsupported call "+call.Type, http.StatusBadRequest)
	}
}

func (m *Master) subscribe(w http.ResponseWriter, r *http.Request, state mesos.GetState, hb time.Duration) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "no flusher", http.StatusInternalServerError)
		return
	}
	s := &sub{out: make(chan []byte), stop: make(chan struct{}), done: make(chan struct{})}
	defer close(s.done)
	m.mu.Lock()
	m.subs[s] = struct{}{}
	m.subscribes++
	m.notify()
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.subs, s)
		m.mu.Unlock()
	}()

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	announced := 15.0
	if hb > 0 {
		announced = hb.Seconds()
	}
	data, _ := json.Marshal(mesos.Event{Type: mesos.EventSubscribed,
		Subscribed: &mesos.Subscribed{GetState: &state, HeartbeatIntervalSeconds: &announced}})
	if m.write(w, fl, mesos.AppendRecord(nil, data)) != nil {
		return
	}
	beat := time.NewTicker(time.Hour)
	defer beat.Stop()
	if hb > 0 {
		beat.Reset(hb)
	}
	heartbeat := mesos.AppendRecord(nil, []byte(`{"type":"HEARTBEAT"}`))
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.stop:
			return
		case b := <-s.out:
			if m.write(w, fl, b) != nil {
				return
			}
		case <-beat.C:
			m.mu.Lock()
			on := m.heartbeat > 0
			m.mu.Unlock()
			if !on {
				continue
			}
			if m.write(w, fl, heartbeat) != nil {
				return
			}
		}
	}
}

// write sends b, cut into chunks of the configured size.
func (m *Master) write(w io.Writer, fl http.Flusher, b []byte) error {
	m.mu.Lock()
	n := m.chunk
	m.mu.Unlock()
	if n <= 0 {
		n = len(b)
	}
	for len(b) > 0 {
		k := min(n, len(b))
		if _, err := w.Write(b[:k]); err != nil {
			return err
		}
		fl.Flush()
		b = b[k:]
	}
	return nil
}
