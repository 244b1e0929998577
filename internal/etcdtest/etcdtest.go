// Package etcdtest runs a real etcd server (Debian's etcd-server) inside a
// test network namespace, for the tests of cluster mode. The server listens
// on an address of 198.19.0.0/16 inside the namespace, keeps its data in a
// temporary directory, and everything (process, directory, namespace) is
// removed when the test ends, whether it passed or not. Clients in the test
// process reach it through Dialer, which opens its sockets inside the
// namespace; processes started with the namespace's Cmd reach it directly.
package etcdtest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
)

// DefaultAddr is where the server listens when Options.Addr is not set:
// on the namespace's loopback, inside the test host range (DESIGN
// section 6).
var DefaultAddr = netip.MustParseAddr("198.19.0.250")

// Options say where the server runs.
type Options struct {
	// NS is the namespace the server runs in; nil creates one for the
	// test (with Addr on its loopback).
	NS *netns.NS
	// Addr is the server's address; it must already be on an interface
	// of NS when NS is given. DefaultAddr when not set.
	Addr netip.Addr
	// ClientPort and PeerPort default to 2379 and 2380.
	ClientPort, PeerPort uint16
}

// Server is one etcd process.
type Server struct {
	NS      *netns.NS
	Addr    netip.Addr
	DataDir string
	opts    Options
	log     *bytes.Buffer // etcd's output, shown when the test fails

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Require stops the test unless it can run etcd in a namespace: it skips
// on a developer machine without root or etcd, and fails with CI=true.
func Require(t testing.TB) {
	t.Helper()
	netns.Require(t, "etcd")
}

// Start runs etcd for t and waits until it answers. It is stopped and its
// data removed when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	Require(t)
	if opts.NS == nil {
		opts.NS = netns.ForTest(t, "etcd")
		if !opts.Addr.IsValid() {
			opts.Addr = DefaultAddr
		}
		if _, err := opts.NS.Run("ip", "addr", "add", netip.PrefixFrom(opts.Addr, opts.Addr.BitLen()).String(), "dev", "lo"); err != nil {
			t.Fatalf("etcd address: %v", err)
		}
	}
	if !opts.Addr.IsValid() {
		opts.Addr = DefaultAddr
	}
	if opts.ClientPort == 0 {
		opts.ClientPort = 2379
	}
	if opts.PeerPort == 0 {
		opts.PeerPort = 2380
	}
	s := &Server{NS: opts.NS, Addr: opts.Addr, DataDir: filepath.Join(t.TempDir(), "etcd"), opts: opts, log: &bytes.Buffer{}}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("etcd output:\n%s", s.Output())
		}
	})
	if err := s.Restart(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	return s
}

// Endpoint is the client URL, http://ADDR:PORT.
func (s *Server) Endpoint() string {
	return "http://" + netip.AddrPortFrom(s.Addr, s.opts.ClientPort).String()
}

// Output is what etcd printed so far.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// lockedWriter serialises etcd's stdout and stderr into one buffer.
type lockedWriter struct{ s *Server }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	if w.s.log.Len() > 1<<20 {
		w.s.log.Reset()
	}
	return w.s.log.Write(p)
}

// Restart starts the server again after Stop (or the first time), on the
// same data directory, and waits until it accepts connections.
func (s *Server) Restart() error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return fmt.Errorf("etcd is running")
	}
	client := "http://" + netip.AddrPortFrom(s.Addr, s.opts.ClientPort).String()
	peer := "http://" + netip.AddrPortFrom(s.Addr, s.opts.PeerPort).String()
	cmd := s.NS.Cmd(context.Background(), "etcd",
		"--name", "l4lb-test",
		"--data-dir", s.DataDir,
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "l4lb-test="+peer,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-level", "warn",
	)
	cmd.Stdout, cmd.Stderr = lockedWriter{s}, lockedWriter{s}
	// Its own process group, so that Stop reaches etcd behind ip netns exec.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("run etcd: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("etcd exited at start: %s", s.Output())
		default:
		}
		conn, err := s.Dial(context.Background(), netip.AddrPortFrom(s.Addr, s.opts.ClientPort).String())
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("etcd does not answer on %s: %w", client, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pid is the server's process id (ip netns exec executes etcd in its
// place), 0 when it is not running.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop kills the server (SIGKILL, as a crash) and waits for it to exit. The
// data directory stays for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// Dial opens a TCP connection from inside the server's namespace. It is
// the dialer of clients that run in the test process.
func (s *Server) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return Dialer(s.NS)(ctx, addr)
}

// Dialer returns a dialer that opens its sockets inside ns: a socket stays
// in the namespace it was created in, whatever thread uses it later.
func Dialer(ns *netns.NS) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ns.Do(func() error {
			var d net.Dialer
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", addr)
			conn = c
			return err
		})
		return conn, err
	}
}

// Link is a cuttable path to the server for one client: Cut closes every
// connection it opened and refuses new ones (a partition, or a client
// killed without a word); Heal lets dials through again.
type Link struct {
	dial  func(ctx context.Context, addr string) (net.Conn, error)
	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
}

// Link returns a new cuttable path to the server.
func (s *Server) Link() *Link {
	return &Link{dial: s.Dial, conns: map[net.Conn]bool{}}
}

// Dial is the client's dialer.
func (l *Link) Dial(ctx context.Context, addr string) (net.Conn, error) {
	l.mu.Lock()
	cut := l.cut
	l.mu.Unlock()
	if cut {
		return nil, fmt.Errorf("dial %s: link cut by the test", addr)
	}
	c, err := l.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut {
		c.Close()
		return nil, fmt.Errorf("dial %s: link cut by the test", addr)
	}
	l.conns[c] = true
	return c, nil
}

// Cut closes the link's connections and refuses new ones.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = true
	for c := range l.conns {
		c.Close()
	}
	clear(l.conns)
}

// Heal lets the client dial again.
func (l *Link) Heal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = false
}
