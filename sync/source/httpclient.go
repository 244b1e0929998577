package source

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// apiAuth is how the Marathon and Mesos sources authenticate and check TLS:
// basic authentication, or a token file (a DC/OS service account's token,
// re-read when it changes and after a 401), and a CA bundle (dcos-ca.crt).
type apiAuth struct {
	Username, Password string
	TokenFile          string
	TokenScheme        string // "token" (Authorization: token=..., the default) or "bearer"
	CAFile             string
}

// apiClient is an HTTP client with the credentials of one source. Redirects
// are not followed by the client: each source follows them itself, keeping
// the credentials and refusing to go from https to http.
type apiClient struct {
	client             *http.Client
	token              *tokenFile // nil without a token file
	auth               string     // "token=" or "Bearer "
	username, password string
}

// parseAPIURL checks the URL of a source (http or https, a host, no query)
// and moves the user information it holds into username and password.
// kind names the source in errors.
func parseAPIURL(kind, rawURL string, username, password *string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, password included: keep only its reason.
		return nil, fmt.Errorf("%s url: %w", kind, unwrapURLError(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%s url %s: scheme must be http or https", kind, u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%s url %s: no host", kind, u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%s url %s: no query or fragment allowed", kind, u.Redacted())
	}
	if u.User != nil {
		if *username != "" || *password != "" {
			return nil, fmt.Errorf("%s url %s: credentials both in the url and in the options", kind, u.Redacted())
		}
		*username = u.User.Username()
		*password, _ = u.User.Password()
		u.User = nil
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// newAPIClient returns the client of the source kind at u. responseTimeout
// bounds the wait for response headers.
func newAPIClient(kind string, u *url.URL, a apiAuth, responseTimeout time.Duration) (*apiClient, error) {
	c := &apiClient{username: a.Username, password: a.Password}
	if a.TokenFile != "" {
		if a.Username != "" || a.Password != "" {
			return nil, fmt.Errorf("%s %s: both basic authentication and a token file: choose one", kind, u)
		}
		c.token = &tokenFile{path: a.TokenFile}
		switch strings.ToLower(a.TokenScheme) {
		case "", "token":
			c.auth = "token="
		case "bearer":
			c.auth = "Bearer "
		default:
			return nil, fmt.Errorf("%s %s: token scheme %q: want token or bearer", kind, u, a.TokenScheme)
		}
	} else if a.TokenScheme != "" {
		return nil, fmt.Errorf("%s %s: a token scheme without a token file", kind, u)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.CAFile != "" {
		pem, err := os.ReadFile(a.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s %s: ca file: %w", kind, u, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s %s: ca file %s: no PEM certificate in it", kind, u, a.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	c.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                  http.ProxyFromEnvironment,
			DialContext:            (&net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}).DialContext,
			TLSClientConfig:        tlsConf,
			TLSHandshakeTimeout:    tlsTimeout,
			ResponseHeaderTimeout:  responseTimeout,
			MaxIdleConnsPerHost:    2,
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: 1 << 20,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// authorize adds the configured credentials to req.
func (c *apiClient) authorize(req *http.Request) error {
	switch {
	case c.token != nil:
		tok, err := c.token.get()
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", c.auth+tok)
	case c.username != "" || c.password != "":
		req.SetBasicAuth(c.username, c.password)
	}
	return nil
}

// tokenFile caches a token read from a file, reading it again when the
// file's stat changes or after invalidate.
type tokenFile struct {
	path string

	mu    sync.Mutex
	stamp string
	token string
}

func (t *tokenFile) get() (string, error) {
	fi, err := os.Stat(t.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	stamp := fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		stamp = fmt.Sprint(st.Dev, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if stamp == t.stamp && t.token != "" {
		return t.token, nil
	}
	f, err := os.Open(t.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", t.path, err)
	}
	if len(data) > maxTokenFile {
		return "", fmt.Errorf("token file %s: larger than %d bytes", t.path, maxTokenFile)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", t.path)
	}
	for _, c := range []byte(tok) {
		if c < 0x21 || c > 0x7e {
			return "", fmt.Errorf("token file %s: the token has a space or a character outside printable ASCII", t.path)
		}
	}
	t.stamp, t.token = stamp, tok
	return tok, nil
}

func (t *tokenFile) invalidate() {
	t.mu.Lock()
	t.stamp = ""
	t.mu.Unlock()
}

// send sends method to start with body and the headers header sets, with
// the source's credentials, following redirects itself (a standby
// redirects to the leader) with the same credentials, at most
// maxRedirects times and never from https to http or to another scheme.
// It returns the response and the URL that answered, for error messages;
// errors name the method and the URL.
func (c *apiClient) send(ctx context.Context, method string, start *url.URL, body []byte, header func(h http.Header)) (*http.Response, string, error) {
	at := start
	for hop := 0; ; hop++ {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, at.String(), rd)
		if err != nil {
			return nil, at.String(), fmt.Errorf("%s %s: %w", method, at, err)
		}
		req.Header.Set("User-Agent", "l4lb")
		header(req.Header)
		if err := c.authorize(req); err != nil {
			return nil, at.String(), fmt.Errorf("%s %s: %w", method, at, err)
		}
		resp, err := c.client.Do(req)
		if err != nil {
			return nil, at.String(), fmt.Errorf("%s %s: %w", method, at, unwrapURLError(err))
		}
		if resp.StatusCode == http.StatusUnauthorized && c.token != nil {
			c.token.invalidate()
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
			http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, at.String(), nil
		}
		loc := resp.Header.Get("Location")
		drainClose(resp.Body)
		if loc == "" {
			return nil, at.String(), fmt.Errorf("%s %s: %s without a Location", method, at, resp.Status)
		}
		next, err := at.Parse(loc) // //host:port/path keeps the scheme
		if err != nil {
			return nil, at.String(), fmt.Errorf("%s %s: %s to a bad Location %q: %w", method, at, resp.Status, loc, err)
		}
		next.User = nil
		if next.Scheme != "http" && next.Scheme != "https" {
			return nil, at.String(), fmt.Errorf("%s %s: redirect to %s: not http or https", method, at, next)
		}
		if at.Scheme == "https" && next.Scheme == "http" {
			return nil, at.String(), fmt.Errorf("%s %s: refusing redirect from https to %s", method, at, next)
		}
		if hop >= maxRedirects {
			return nil, at.String(), fmt.Errorf("%s %s: more than %d redirects", method, start, maxRedirects)
		}
		at = next
	}
}
