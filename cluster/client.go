package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// ClientConfig says how to reach etcd.
type ClientConfig struct {
	Endpoints []string // http://host:port or https://host:port
	CAFile    string   // PEM CAs the server certificate is checked against
	CertFile  string   // client certificate (PEM), with KeyFile
	KeyFile   string
	// Dial opens connections; nil uses the system dialer. Tests dial into
	// a network namespace with it.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// DialTimeout bounds the first connection; 5 s when zero.
	DialTimeout time.Duration
}

// ParseEndpoints splits "URL[,URL]" into endpoints and checks their scheme.
func ParseEndpoints(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			return nil, fmt.Errorf("etcd endpoint %q: want http://HOST:PORT or https://HOST:PORT", e)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("no etcd endpoint")
	}
	return out, nil
}

// NewClient returns an etcd client. It does not wait for a connection: the
// first request does.
func NewClient(cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoint")
	}
	c := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		AutoSyncInterval:     0,
		Logger:               zap.NewNop(),
		MaxCallRecvMsgSize:   64 << 20,
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	// Reconnect within seconds of etcd's return (gRPC's default backoff
	// grows to two minutes).
	c.DialOptions = append(c.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
		MinConnectTimeout: 2 * time.Second,
	}))
	if cfg.Dial != nil {
		c.DialOptions = append(c.DialOptions, grpc.WithContextDialer(cfg.Dial))
	}
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		tc, err := tlsConfig(cfg)
		if err != nil {
			return nil, err
		}
		c.TLS = tc
	}
	cli, err := clientv3.New(c)
	if err != nil {
		return nil, fmt.Errorf("etcd client %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return cli, nil
}

func tlsConfig(cfg ClientConfig) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("etcd client certificate: give both the cert file and the key file")
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
