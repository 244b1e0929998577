package source

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// Defaults of MarathonOptions.
const (
	DefaultMarathonRequestTimeout = 30 * time.Second
	DefaultMarathonMaxBody        = 256 << 20
	// DefaultMarathonIdleTimeout is how long the event stream may stay
	// silent. Marathon serves /v2/events with Jetty's EventSourceServlet,
	// which writes a keep-alive (a blank line) every 10 s, so 30 s is three
	// missed keep-alives: the connection is dead, or a proxy buffers it.
	DefaultMarathonIdleTimeout  = 30 * time.Second
	DefaultMarathonReconnectMin = 100 * time.Millisecond
	DefaultMarathonReconnectMax = 30 * time.Second
)

// Internal limits of the Marathon client.
const (
	maxRedirects     = 5
	maxTokenFile     = 64 << 10
	maxErrorSnippet  = 256
	dialTimeout      = 10 * time.Second
	tlsTimeout       = 10 * time.Second
	streamHealthyFor = time.Minute // a stream up this long resets the reconnect backoff
)

// marathonEvents are the Marathon event types that may change what l4lb
// derives from /v2/apps: app definitions (labels, ports, health checks),
// task states and task health. Watch subscribes to these (event_type
// filters, Marathon >= 1.3.7) and ignores the others if the server sends
// them anyway. event_stream_attached is handled apart: only the first one of
// a connection, which is Marathon confirming this subscription, counts;
// later ones are other clients attaching.
var marathonEvents = []string{
	"api_post_event",
	"group_change_success",
	"group_change_failed",
	"deployment_info",
	"deployment_success",
	"deployment_failed",
	"deployment_step_success",
	"deployment_step_failure",
	"app_terminated_event",
	"status_update_event",
	"instance_changed_event",
	"unknown_instance_terminated_event",
	"add_health_check_event",
	"remove_health_check_event",
	"failed_health_check_event",
	"health_status_changed_event",
	"instance_health_changed_event",
	"unhealthy_task_kill_event",     // Marathon < 1.4
	"unhealthy_instance_kill_event", // Marathon >= 1.4
}

const eventStreamAttached = "event_stream_attached"

var relevantEvents = func() map[string]bool {
	m := map[string]bool{}
	for _, e := range marathonEvents {
		m[e] = true
	}
	return m
}()

// MarathonOptions configure a Marathon source. The zero value is usable.
type MarathonOptions struct {
	// Username and Password for HTTP basic authentication. User information
	// in the URL (https://user:pass@host:8080) sets them too; giving both is
	// an error.
	Username, Password string
	// TokenFile holds a token sent with every request, for DC/OS strict or
	// permissive mode (a service account's ACS token). The file is read again
	// whenever it changes, and after a 401, so a sidecar can refresh it.
	TokenFile string
	// TokenScheme is how the token is sent: "token" (the default) sends
	// "Authorization: token=TOKEN" as DC/OS does; "bearer" sends
	// "Authorization: Bearer TOKEN".
	TokenScheme string
	// CAFile is a PEM bundle of the certificate authorities that HTTPS
	// servers are verified against, instead of the system's (the DC/OS
	// cluster CA, dcos-ca.crt). Read once, by NewMarathon.
	CAFile string

	// RequestTimeout bounds one Load (connecting, redirects, reading the
	// body) and the connection phase of the event stream.
	RequestTimeout time.Duration
	// MaxBody bounds the /v2/apps response, in bytes.
	MaxBody int64
	// IdleTimeout is how long the event stream may send nothing, not even a
	// keep-alive, before it is considered dead and reconnected.
	IdleTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the delay before reconnecting the
	// event stream: it starts at ReconnectMin, doubles after every failure up
	// to ReconnectMax, is jittered down by up to half, and goes back to
	// ReconnectMin after a stream that stayed up for a minute.
	ReconnectMin, ReconnectMax time.Duration

	// MinInterval is the least time between two rounds of reads of the
	// list and watch loop (--min-sync-interval): ids that events name
	// within it are read once each.
	MinInterval time.Duration
	// MaxAppReads bounds the apps one round reads one by one; more named
	// at once are read with a full list. DefaultMarathonMaxAppReads when
	// zero.
	MaxAppReads int
	// OnAppError, when set, is called by Run when one app could not be
	// read (a 500, a malformed answer): that app keeps its last good
	// state. It must not block.
	OnAppError func(appID string, err error)

	// OnStreamError, when set, is called by Watch after the event stream
	// failed or ended, with the reason and the delay before the next attempt.
	// It runs on Watch's goroutine and must not block.
	OnStreamError func(err error, retryIn time.Duration)
	// OnStreamAttached, when set, is called by Watch when Marathon confirms
	// the event subscription (and changed is called right after).
	OnStreamAttached func()
}

// Marathon reads apps and tasks from Marathon's REST API and follows its
// event stream.
type Marathon struct {
	*apiClient          // credentials and TLS
	base       *url.URL // without user information, query or trailing slash
	opts       MarathonOptions

	healthyAfter time.Duration // streamHealthyFor; shorter in tests

	lw        *lwState
	bytesRead atomic.Int64
}

// NewMarathon returns the source for Marathon at rawURL (http or https, with
// an optional path prefix such as https://dcos.example/service/marathon).
func NewMarathon(rawURL string, opts MarathonOptions) (*Marathon, error) {
	u, err := parseAPIURL("marathon", rawURL, &opts.Username, &opts.Password)
	if err != nil {
		return nil, err
	}
	m := &Marathon{base: u, healthyAfter: streamHealthyFor, lw: newLWState()}
	if opts.RequestTimeout < 0 || opts.MaxBody < 0 || opts.IdleTimeout < 0 || opts.ReconnectMin < 0 || opts.ReconnectMax < 0 {
		return nil, fmt.Errorf("marathon %s: negative timeout, size or delay", u)
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = DefaultMarathonRequestTimeout
	}
	if opts.MaxBody == 0 {
		opts.MaxBody = DefaultMarathonMaxBody
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultMarathonIdleTimeout
	}
	if opts.ReconnectMin == 0 {
		opts.ReconnectMin = DefaultMarathonReconnectMin
	}
	if opts.ReconnectMax == 0 {
		opts.ReconnectMax = max(DefaultMarathonReconnectMax, opts.ReconnectMin)
	}
	if opts.MaxAppReads <= 0 {
		opts.MaxAppReads = DefaultMarathonMaxAppReads
	}
	if opts.ReconnectMax < opts.ReconnectMin {
		return nil, fmt.Errorf("marathon %s: reconnect max %s below min %s", u, opts.ReconnectMax, opts.ReconnectMin)
	}
	m.apiClient, err = newAPIClient("marathon", u, apiAuth{
		Username: opts.Username, Password: opts.Password,
		TokenFile: opts.TokenFile, TokenScheme: opts.TokenScheme, CAFile: opts.CAFile,
	}, opts.RequestTimeout)
	if err != nil {
		return nil, err
	}
	m.opts = opts
	return m, nil
}

func (m *Marathon) String() string { return "marathon:" + m.base.String() }

// Load reads every app with its tasks from GET /v2/apps?embed=apps.tasks.
// Any failure is an error naming the URL; apps that do not decode are
// problems in the snapshot.
func (m *Marathon) Load(ctx context.Context) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
	defer cancel()
	resp, at, err := m.get(ctx, "/v2/apps", url.Values{"embed": {"apps.tasks"}}, "application/json")
	if err != nil {
		return Snapshot{}, err
	}
	defer drainClose(resp.Body)
	if err := checkResponse(resp, "application/json"); err != nil {
		return Snapshot{}, fmt.Errorf("GET %s: %w", at, err)
	}
	var body bytes.Buffer
	if n := resp.ContentLength; n > 0 && n <= m.opts.MaxBody {
		body.Grow(int(n) + bytes.MinRead) // one allocation, not a doubling series
	}
	n, err := body.ReadFrom(io.LimitReader(resp.Body, m.opts.MaxBody+1))
	m.bytesRead.Add(n)
	if err != nil {
		return Snapshot{}, fmt.Errorf("GET %s: read body: %w", at, unwrapURLError(err))
	}
	data := body.Bytes()
	if int64(len(data)) > m.opts.MaxBody {
		return Snapshot{}, fmt.Errorf("GET %s: response larger than %d bytes", at, m.opts.MaxBody)
	}
	if err := checkAppsShape(data); err != nil {
		return Snapshot{}, fmt.Errorf("GET %s: %w", at, err)
	}
	apps, problems, err := vip.ParseApps(data)
	if err != nil {
		return Snapshot{}, fmt.Errorf("GET %s: %w", at, err)
	}
	return Snapshot{Apps: apps, Problems: problems}, nil
}

// checkAppsShape insists on what /v2/apps returns, {"apps": [...]}, so that
// another JSON document (an empty array from a misrouted proxy, an error
// object) is never taken for an empty cluster. Marathon writes "apps" first,
// so this reads only the first bytes.
func checkAppsShape(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New(`not a JSON object: want {"apps": [...]}`)
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		if key == "apps" {
			if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
				return errors.New(`"apps" is not an array`)
			}
			return nil
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
	}
	return errors.New(`no "apps" in the response: want {"apps": [...]}`)
}

// Watch follows GET /v2/events and calls changed for every event that may
// change the apps, and when a (re)connected stream is attached, since
// anything may have changed while it was down. Events are only triggers;
// the data comes from Load. A failed or ended stream is reconnected after a
// jittered exponential backoff. changed is called on Watch's goroutine and
// must not block (a runner's Trigger does not). Watch returns nil when ctx
// is done.
func (m *Marathon) Watch(ctx context.Context, changed func()) error {
	if changed == nil {
		return errors.New("marathon watch: changed is nil")
	}
	return m.follow(ctx, func(name string, ev sseEvent) { changed() })
}

// follow runs the event stream until ctx is done, reconnecting after a
// jittered exponential backoff, and calls on for every event that may
// change the apps: on the first event_stream_attached of each connection
// (name eventStreamAttached: anything may have changed while it was down)
// and on every relevant event (name "" when its type cannot be told).
func (m *Marathon) follow(ctx context.Context, on func(name string, ev sseEvent)) error {
	b := reconnect{min: m.opts.ReconnectMin, max: m.opts.ReconnectMax, healthyAfter: m.healthyAfter}
	for {
		up, err := m.stream(ctx, on)
		if ctx.Err() != nil {
			return nil
		}
		if !b.wait(ctx, up, err, m.opts.OnStreamError) {
			return nil
		}
	}
}

// reconnect is the delay between a stream's end and the next attempt:
// jittered into [d/2, d], doubling from min to max, and back to min after
// a stream that was up for healthyAfter.
type reconnect struct {
	min, max, healthyAfter time.Duration
	delay                  time.Duration
}

// wait reports the stream's end (err, and the wait) to onErr when it is
// set, then waits; it returns false when ctx is done first.
func (r *reconnect) wait(ctx context.Context, up time.Duration, err error, onErr func(error, time.Duration)) bool {
	if r.delay == 0 || up >= r.healthyAfter {
		r.delay = r.min
	}
	wait := jitter(r.delay)
	if onErr != nil {
		onErr(err, wait)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	}
	r.delay = min(r.delay*2, r.max)
	return true
}

// jitter returns a delay between d/2 and d, so that agents that lost
// Marathon together do not come back in step.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// errIdle is the cause of a stream cut by the idle timeout.
type errIdle time.Duration

func (e errIdle) Error() string {
	return fmt.Sprintf("no data, not even a keep-alive, for %s", time.Duration(e))
}

// stream runs one connection of the event stream until it fails, ends or
// ctx is done. It returns how long the stream was up (zero if Marathon did
// not accept it) and why it ended, never a nil error.
func (m *Marathon) stream(ctx context.Context, on func(name string, ev sseEvent)) (time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(m.opts.IdleTimeout, func() { cancel(errIdle(m.opts.IdleTimeout)) })
	defer idle.Stop()

	q := url.Values{"event_type": append([]string{eventStreamAttached}, marathonEvents...)}
	// Marathon 1.6 sends whole root groups in deployment events unless asked
	// for the light format; later versions always send it, older ignore it.
	q.Set("plan-format", "light")
	resp, at, err := m.get(ctx, "/v2/events", q, "text/event-stream")
	if err != nil {
		return 0, streamErr(ctx, at, err)
	}
	defer resp.Body.Close() // not drained: the stream does not end by itself
	if err := checkResponse(resp, "text/event-stream"); err != nil {
		return 0, fmt.Errorf("GET %s: %w", at, err)
	}
	idle.Reset(m.opts.IdleTimeout)
	start := time.Now()

	events := newSSEReader(&idleReader{r: resp.Body, t: idle, d: m.opts.IdleTimeout})
	attached := false
	for {
		ev, err := events.Next()
		if err != nil {
			if err == io.EOF {
				err = errors.New("server closed the stream")
			}
			return time.Since(start), streamErr(ctx, at, fmt.Errorf("GET %s: %w", at, unwrapURLError(err)))
		}
		switch name := eventName(ev); {
		case name == eventStreamAttached:
			if attached {
				continue // another client attached
			}
			attached = true
			if m.opts.OnStreamAttached != nil {
				m.opts.OnStreamAttached()
			}
			on(name, ev)
		case relevantEvents[name], name == "":
			on(name, ev)
		}
	}
}

// streamErr prefers the idle timeout, when it cut the stream, to the error
// the read returned because of it.
func streamErr(ctx context.Context, at string, err error) error {
	var idle errIdle
	if cause := context.Cause(ctx); errors.As(cause, &idle) {
		return fmt.Errorf("GET %s: %w (idle timeout)", at, cause)
	}
	return err
}

// eventName is the Marathon event type of an event: its SSE event field, or
// for an unnamed event the eventType in its JSON data. It is empty when that
// cannot be told, and such an event counts as relevant.
func eventName(ev sseEvent) string {
	if ev.Type != "message" {
		return ev.Type
	}
	var probe struct {
		EventType string `json:"eventType"`
	}
	if ev.Truncated || json.Unmarshal([]byte(ev.Data), &probe) != nil {
		return ""
	}
	return probe.EventType
}

// idleReader pushes the idle timer back on every read that returns data.
type idleReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.t.Reset(r.d)
	}
	return n, err
}

// get sends GET base+path?query, following redirects (Marathon standbys
// redirect /v2/events to the leader) with the same credentials, at most
// maxRedirects times and never from https to http. It returns the response
// and the URL that answered, for error messages. Errors name the URL.
func (m *Marathon) get(ctx context.Context, path string, query url.Values, accept string) (*http.Response, string, error) {
	u := *m.base
	u.Path += path
	u.RawQuery = query.Encode()
	return m.send(ctx, http.MethodGet, &u, nil, func(h http.Header) {
		h.Set("Accept", accept)
		if accept == "text/event-stream" {
			h.Set("Cache-Control", "no-cache")
			h.Set("Accept-Encoding", "identity") // no transparent gzip on a stream
		}
	})
}

// checkResponse accepts a 2xx response of the wanted media type.
func checkResponse(resp *http.Response, want string) error {
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %s%s", resp.Status, snippet(resp.Body))
	}
	ct := resp.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != want {
		return fmt.Errorf("content type %q, want %s", ct, want)
	}
	return nil
}

// snippet returns the start of an error body, quoted, for error messages.
func snippet(body io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(body, maxErrorSnippet+1))
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ""
	}
	more := ""
	if len(b) > maxErrorSnippet {
		b, more = b[:maxErrorSnippet], "..."
	}
	return ": " + strconv.Quote(string(b)) + more
}

// drainClose reads a little of what is left, so the connection can be
// reused, and closes the body.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	_ = body.Close()
}

// unwrapURLError drops net/http's `Get "URL": ` wrapper; our messages name
// the URL already.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
