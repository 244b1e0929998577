package source

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// The Marathon tests run real HTTP servers (httptest, on 127.0.0.1 in the
// test process) that speak Marathon's formats, and the real client.

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// appsHandler serves body as Marathon's /v2/apps?embed=apps.tasks and
// checks the request.
func appsHandler(t *testing.T, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v2/apps" || r.URL.Query().Get("embed") != "apps.tasks" {
			t.Errorf("request %s %s, want GET /v2/apps?embed=apps.tasks", r.Method, r.URL)
		}
		if got := r.Header.Get("Accept"); got != "application/json" {
			t.Errorf("Accept = %q", got)
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = w.Write(body)
	}
}

func newTestMarathon(t *testing.T, rawURL string, opts MarathonOptions) *Marathon {
	t.Helper()
	m, err := NewMarathon(rawURL, opts)
	if err != nil {
		t.Fatalf("NewMarathon: %v", err)
	}
	return m
}

func TestMarathonLoadFixture(t *testing.T) {
	srv := httptest.NewServer(appsHandler(t, readFixture(t, "marathon15_apps.json")))
	defer srv.Close()
	m := newTestMarathon(t, srv.URL, MarathonOptions{})
	snap, err := m.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Apps) != 1 || snap.Apps[0].ID != "/pywebserver" || len(snap.Apps[0].Tasks) != 1 || len(snap.Problems) != 0 {
		t.Fatalf("snapshot %+v", snap)
	}
	if c := snap.Apps[0].Container; c == nil || len(c.PortMappings) != 1 || *c.PortMappings[0].ContainerPort != 80 {
		t.Fatalf("container %+v", c)
	}
}

// Apps with portDefinitions, Docker portMappings (Marathon < 1.5) and
// container.portMappings on a container network (Marathon >= 1.5), tasks with
// health results: what Load returns gives the VIPs and backends DESIGN.md
// describes.
func TestMarathonLoadVIPs(t *testing.T) {
	srv := httptest.NewServer(appsHandler(t, readFixture(t, "vip_apps.json")))
	defer srv.Close()
	snap, err := newTestMarathon(t, srv.URL+"/", MarathonOptions{}).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	state, problems := vip.Desired(snap.Apps, vip.Config{
		Pool4: netip.MustParsePrefix("198.18.0.0/16"),
		Pool6: netip.MustParsePrefix("fd00:198:18::/64"),
	})
	if len(problems) != 0 {
		t.Errorf("problems: %v", problems)
	}
	var got []string
	for _, v := range state.VIPs {
		for _, b := range v.Backends {
			got = append(got, fmt.Sprintf("%s %s %s", v, b.AddrPort(), b.State))
		}
	}
	slices.Sort(got)
	want := []string{
		"198.18.255.53:53/tcp 198.19.9.1:53 active",
		"198.18.255.53:53/udp 198.19.9.1:53 active",
		"redis.marathon.l4lb.thisdcos.directory:6379/tcp 198.19.0.21:31379 active",
		"web.marathon.l4lb.thisdcos.directory:80/tcp 198.19.0.11:31001 active",
		"web.marathon.l4lb.thisdcos.directory:80/tcp 198.19.0.12:31002 unhealthy",
		"web.marathon.l4lb.thisdcos.directory:80/tcp 198.19.0.13:31003 draining",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestMarathonLoadErrors(t *testing.T) {
	big := `{"apps": [` + strings.Repeat(`{"id": "/x"},`, 1000) + `{"id": "/y"}]}`
	tests := []struct {
		name    string
		handler http.HandlerFunc
		opts    MarathonOptions
		want    string
	}{{
		name: "5xx",
		handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, `{"message":"Could not determine the current leader"}`, http.StatusServiceUnavailable)
		},
		want: `status 503 Service Unavailable: "{\"message\":\"Could not determine the current leader\"}"`,
	}, {
		name:    "404",
		handler: http.NotFound,
		want:    "status 404 Not Found",
	}, {
		name:    "garbage json",
		handler: jsonBody(`{"apps": [{"id": "/a"}, {`),
		want:    "unexpected end of JSON input",
	}, {
		name:    "not json",
		handler: jsonBody(`<html>hello</html>`),
		want:    "not a JSON object",
	}, {
		name:    "empty body",
		handler: jsonBody(``),
		want:    "not a JSON object",
	}, {
		name:    "an array, not the apps object",
		handler: jsonBody(`[]`),
		want:    "not a JSON object",
	}, {
		name:    "apps null",
		handler: jsonBody(`{"apps": null}`),
		want:    `"apps" is not an array`,
	}, {
		name:    "error object",
		handler: jsonBody(`{"message": "Unauthorized"}`),
		want:    `no "apps" in the response`,
	}, {
		name:    "a single app",
		handler: jsonBody(`{"app": {"id": "/a"}}`),
		want:    `no "apps" in the response`,
	}, {
		name: "html content type",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = io.WriteString(w, `{"apps": []}`)
		},
		want: `content type "text/html", want application/json`,
	}, {
		name:    "too large",
		handler: jsonBody(big),
		opts:    MarathonOptions{MaxBody: 1000},
		want:    "response larger than 1000 bytes",
	}, {
		name: "body cut short",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "100000")
			_, _ = io.WriteString(w, `{"apps": [{"id": "/a"}, `)
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler) // close the connection mid-body
		},
		want: "read body: unexpected EOF",
	}, {
		name: "redirect loop",
		handler: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, r.URL.String(), http.StatusTemporaryRedirect)
		},
		want: "more than 5 redirects",
	}, {
		name: "redirect without location",
		handler: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusTemporaryRedirect)
		},
		want: "307 Temporary Redirect without a Location",
	}, {
		name: "redirect to another scheme",
		handler: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "ftp://198.19.0.1/apps", http.StatusFound)
		},
		want: "not http or https",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			m := newTestMarathon(t, srv.URL, tc.opts)
			snap, err := m.Load(context.Background())
			if err == nil {
				t.Fatalf("no error, snapshot %+v", snap)
			}
			if snap.Apps != nil || snap.Problems != nil {
				t.Errorf("partial snapshot with the error: %+v", snap)
			}
			if !strings.Contains(err.Error(), srv.URL+"/v2/apps?embed=apps.tasks") {
				t.Errorf("error does not name the URL: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func jsonBody(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}
}

func TestMarathonLoadConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = newTestMarathon(t, "http://"+addr, MarathonOptions{}).Load(context.Background())
	if err == nil || !strings.Contains(err.Error(), "GET http://"+addr+"/v2/apps") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v", err)
	}
}

// A server that does not answer, or stops sending the body, is cut by the
// request timeout; the caller's context is respected too.
func TestMarathonLoadTimeouts(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/slowbody/") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"apps": [`)
			http.NewResponseController(w).Flush()
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()

	for _, prefix := range []string{"/noanswer", "/slowbody"} {
		t.Run(prefix, func(t *testing.T) {
			m := newTestMarathon(t, srv.URL+prefix, MarathonOptions{RequestTimeout: 200 * time.Millisecond})
			start := time.Now()
			_, err := m.Load(context.Background())
			if err == nil || !strings.Contains(err.Error(), srv.URL+prefix+"/v2/apps") {
				t.Fatalf("err = %v", err)
			}
			if !strings.Contains(err.Error(), "deadline exceeded") && !strings.Contains(err.Error(), "timeout") {
				t.Errorf("err = %v, want a timeout", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Load took %s", d)
			}
		})
	}

	t.Run("caller context", func(t *testing.T) {
		m := newTestMarathon(t, srv.URL+"/noanswer", MarathonOptions{})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		if _, err := m.Load(ctx); err == nil || !strings.Contains(err.Error(), "canceled") {
			t.Fatalf("err = %v", err)
		}
	})
}

// authCheck wraps h, failing requests without the wanted Authorization.
func authCheck(t *testing.T, want string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != want {
			t.Errorf("%s: Authorization = %q, want %q", r.URL.Path, got, want)
			http.Error(w, `{"message":"unauthorized"}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// A standby Marathon redirects to the leader (307 from a proxy, 302 from
// Jetty's sendRedirect, relative or absolute); the client follows with its
// credentials and the query.
func TestMarathonLoadRedirect(t *testing.T) {
	const auth = "token=secret-token"
	leader := httptest.NewServer(authCheck(t, auth, appsHandler(t, readFixture(t, "vip_apps.json"))))
	defer leader.Close()
	var hops int
	var mu sync.Mutex
	standby := httptest.NewServer(authCheck(t, auth, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hops++
		mu.Unlock()
		switch r.URL.Path {
		case "/v2/apps":
			http.Redirect(w, r, "/moved"+r.URL.RequestURI(), http.StatusFound) // relative
		case "/moved/v2/apps":
			http.Redirect(w, r, leader.URL+"/v2/apps?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
		default:
			http.NotFound(w, r)
		}
	})))
	defer standby.Close()

	tokenPath := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenPath, []byte("secret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := newTestMarathon(t, standby.URL, MarathonOptions{TokenFile: tokenPath})
	snap, err := m.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Apps) != 3 || hops != 2 {
		t.Fatalf("%d apps after %d redirects", len(snap.Apps), hops)
	}
}

func TestMarathonRefusesHTTPSDowngrade(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the plain http server got a request, Authorization %q", r.Header.Get("Authorization"))
	}))
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	defer tlsSrv.Close()
	m := newTestMarathon(t, "https://user:pw@"+strings.TrimPrefix(tlsSrv.URL, "https://"), MarathonOptions{CAFile: writeCA(t, tlsSrv)})
	_, err := m.Load(context.Background())
	if err == nil || !strings.Contains(err.Error(), "refusing redirect from https to "+plain.URL) || strings.Contains(err.Error(), "pw") {
		t.Fatalf("err = %v", err)
	}
}

// writeCA writes the test server's certificate as a PEM CA file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestMarathonTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(appsHandler(t, readFixture(t, "marathon15_apps.json")))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes below
	srv.StartTLS()
	defer srv.Close()

	m := newTestMarathon(t, srv.URL, MarathonOptions{CAFile: writeCA(t, srv)})
	snap, err := m.Load(context.Background())
	if err != nil || len(snap.Apps) != 1 {
		t.Fatalf("with the CA file: %d apps, %v", len(snap.Apps), err)
	}

	// Without it the server's certificate is unknown.
	_, err = newTestMarathon(t, srv.URL, MarathonOptions{}).Load(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA file: %v", err)
	}

	// Another CA is not enough either (every httptest server has the same
	// certificate: make a CA of our own).
	_, err = newTestMarathon(t, srv.URL, MarathonOptions{CAFile: otherCA(t)}).Load(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("with another CA: %v", err)
	}
}

// otherCA writes a fresh self-signed CA certificate to a file.
func otherCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "l4lb test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestMarathonBasicAuth(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || user != "l4lb" || pass != "s3cr3t:pw" {
			http.Error(w, `{"message":"bad credentials"}`, http.StatusUnauthorized)
			return
		}
		appsHandler(t, []byte(`{"apps": [{"id": "/a"}]}`))(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	m := newTestMarathon(t, "http://l4lb:s3cr3t%3Apw@"+host, MarathonOptions{})
	if snap, err := m.Load(context.Background()); err != nil || len(snap.Apps) != 1 {
		t.Fatalf("userinfo: %v", err)
	}
	if s := m.String(); s != "marathon:"+srv.URL || strings.Contains(s, "s3cr3t") {
		t.Errorf("String() = %q", s)
	}

	m = newTestMarathon(t, srv.URL, MarathonOptions{Username: "l4lb", Password: "s3cr3t:pw"})
	if _, err := m.Load(context.Background()); err != nil {
		t.Fatalf("options: %v", err)
	}

	m = newTestMarathon(t, "http://l4lb:wrong@"+host, MarathonOptions{})
	_, err := m.Load(context.Background())
	if err == nil || !strings.Contains(err.Error(), "401 Unauthorized") || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password: %v", err)
	}
}

// The token file is read again when it changes, and after a 401; both
// header forms work.
func TestMarathonTokenFile(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		appsHandler(t, []byte(`{"apps": []}`))(w, r)
	}))
	defer srv.Close()
	path := filepath.Join(t.TempDir(), "token")
	write := func(s string) {
		t.Helper()
		// Written in place, not renamed: the stat still changes.
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	load := func(m *Marathon) {
		t.Helper()
		if _, err := m.Load(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	write("eyJhbGciOiJSUzI1NiJ9.one\n")
	m := newTestMarathon(t, srv.URL, MarathonOptions{TokenFile: path})
	load(m)
	load(m)
	write("eyJhbGciOiJSUzI1NiJ9.two-longer\n")
	load(m)
	mb := newTestMarathon(t, srv.URL, MarathonOptions{TokenFile: path, TokenScheme: "Bearer"})
	load(mb)
	want := []string{
		"token=eyJhbGciOiJSUzI1NiJ9.one",
		"token=eyJhbGciOiJSUzI1NiJ9.one",
		"token=eyJhbGciOiJSUzI1NiJ9.two-longer",
		"Bearer eyJhbGciOiJSUzI1NiJ9.two-longer",
	}
	if !slices.Equal(seen, want) {
		t.Fatalf("Authorization headers %q, want %q", seen, want)
	}

	for _, bad := range []string{"", " \n", "two words", "x\x01y"} {
		write(bad)
		_, err := m.Load(context.Background())
		if err == nil || !strings.Contains(err.Error(), "token file "+path) {
			t.Errorf("token %q: err = %v", bad, err)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "token file") {
		t.Errorf("missing token file: err = %v", err)
	}
	if len(seen) != 4 {
		t.Errorf("requests were sent without a valid token: %q", seen[4:])
	}
}

func TestMarathonTokenInvalidatedBy401(t *testing.T) {
	tf := &tokenFile{path: filepath.Join(t.TempDir(), "token")}
	if err := os.WriteFile(tf.path, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := tf.get(); err != nil || tok != "a" {
		t.Fatal(tok, err)
	}
	// Pretend the cache holds a stale token for the same stat.
	tf.mu.Lock()
	tf.token = "stale"
	tf.mu.Unlock()
	if tok, _ := tf.get(); tok != "stale" {
		t.Fatalf("cache not used: %q", tok)
	}
	tf.invalidate()
	if tok, _ := tf.get(); tok != "a" {
		t.Fatalf("after invalidate: %q", tok)
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusUnauthorized)
	}))
	defer srv.Close()
	m := newTestMarathon(t, srv.URL, MarathonOptions{TokenFile: tf.path})
	_, _ = m.Load(context.Background())
	m.token.mu.Lock()
	stamp := m.token.stamp
	m.token.mu.Unlock()
	if stamp != "" {
		t.Errorf("a 401 did not invalidate the cached token")
	}
}

func TestNewMarathonErrors(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		url  string
		opts MarathonOptions
		want string
	}{
		{"198.19.0.1:8080", MarathonOptions{}, "marathon url"},
		{"ftp://198.19.0.1", MarathonOptions{}, "scheme must be http or https"},
		{"http://", MarathonOptions{}, "no host"},
		{"http://198.19.0.1:8080/?x=1", MarathonOptions{}, "no query"},
		{"http://u:p@198.19.0.1", MarathonOptions{Username: "v"}, "credentials both in the url and in the options"},
		{"http://198.19.0.1", MarathonOptions{Username: "v", TokenFile: token}, "choose one"},
		{"http://198.19.0.1", MarathonOptions{TokenFile: token, TokenScheme: "jwt"}, `token scheme "jwt"`},
		{"http://198.19.0.1", MarathonOptions{TokenScheme: "bearer"}, "without a token file"},
		{"http://198.19.0.1", MarathonOptions{IdleTimeout: -1}, "negative"},
		{"http://198.19.0.1", MarathonOptions{ReconnectMin: time.Minute, ReconnectMax: time.Second}, "below min"},
		{"https://198.19.0.1", MarathonOptions{CAFile: filepath.Join(dir, "missing.pem")}, "no such file"},
		{"https://198.19.0.1", MarathonOptions{CAFile: notPEM}, "no PEM certificate"},
		{"http://user:hunter2@198.19.0.1:80 80", MarathonOptions{}, "marathon url"},
	}
	for _, tc := range tests {
		_, err := NewMarathon(tc.url, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMarathon(%q, %+v) = %v, want %q", tc.url, tc.opts, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestParseMarathon(t *testing.T) {
	s, err := Parse("marathon:https://leader.mesos:8443/marathon/")
	if err != nil {
		t.Fatal(err)
	}
	m, ok := s.(*Marathon)
	if !ok || m.String() != "marathon:https://leader.mesos:8443/marathon" {
		t.Fatalf("Parse = %T %v", s, s)
	}
	if m.opts.IdleTimeout != DefaultMarathonIdleTimeout || m.opts.RequestTimeout != DefaultMarathonRequestTimeout {
		t.Errorf("defaults not applied: %+v", m.opts)
	}
	_, err = Parse("marathon:ftp://user:hunter2@x")
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "source marathon:ftp://user:xxxxx@x") {
		t.Errorf("err = %v", err)
	}
	if _, err := ParseWith("marathon:http://x", MarathonOptions{TokenScheme: "bearer"}); err == nil {
		t.Errorf("ParseWith ignored the options")
	}
}
