package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

const (
	// maxTCPConns bounds the open TCP connections per listen address;
	// further clients wait in the kernel's accept queue.
	maxTCPConns = 1024
	// shutdownTimeout bounds how long Run waits for answers in flight.
	shutdownTimeout = 5 * time.Second
)

// Server serves the Handler over UDP and TCP on every listen address. Each
// address gets several UDP sockets bound with SO_REUSEPORT (one per CPU
// that Go uses), so that the kernel spreads queries over them and every core
// answers; each is read by one goroutine in batches (udp.go). Each address
// also gets one TCP listener, served by miekg/dns.
type Server struct {
	handler    *Handler
	listen     []netip.AddrPort
	udpSockets int // UDP sockets per address
	udpBatch   int // datagrams per system call, udpBatch when 0
	cancel     context.CancelFunc

	mu       sync.Mutex
	listened bool
	ran      bool
	pcs      []*net.UDPConn
	lns      []net.Listener
	addrs    []netip.AddrPort
	ready    chan struct{}
}

// New checks cfg and builds a server that answers from an empty zone until
// the first Publish. It opens no socket: Listen or Run does. cfg.Listen must
// not be empty (empty means DNS is off: build no server).
func New(cfg Config) (*Server, error) {
	c, err := cfg.parse()
	if err != nil {
		return nil, err
	}
	if len(c.listen) == 0 {
		return nil, errors.New("dns: no listen address")
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	// base ends the queries being forwarded when Run returns.
	base, cancel := context.WithCancel(context.Background())
	return &Server{
		handler:    newHandler(c, m, base),
		listen:     c.listen,
		udpSockets: max(runtime.GOMAXPROCS(0), 1),
		cancel:     cancel,
		ready:      make(chan struct{}),
	}, nil
}

// Publish makes z the zone the server answers from. It is cheap (a pointer
// swap) and safe to call at any time, before or while the server runs.
func (s *Server) Publish(z *Zone) { s.handler.Publish(z) }

// Handler returns the server's handler.
func (s *Server) Handler() *Handler { return s.handler }

// Ready is closed once every socket is bound.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the bound addresses, one per listen address (with the port
// the kernel picked where the configuration said 0); nil before Listen.
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.addrs...)
}

// Listen binds every socket, so that a caller learns at once that an address
// is taken or not local. Run calls it when the caller has not. On error no
// socket stays open. Sockets belong to the network namespace of the calling
// thread. A server that listened must be Run to release its sockets (Run
// with a done context releases them at once).
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listened {
		return errors.New("dns: Listen called twice")
	}
	lc := net.ListenConfig{Control: reusePort}
	ctx := context.Background()
	fail := func(err error) error {
		for _, pc := range s.pcs {
			pc.Close()
		}
		for _, ln := range s.lns {
			ln.Close()
		}
		s.pcs, s.lns, s.addrs = nil, nil, nil
		return err
	}
	for _, ap := range s.listen {
		bound := ap
		for i := range s.udpSockets {
			pc, err := lc.ListenPacket(ctx, udpNet(ap), bound.String())
			if err != nil {
				return fail(fmt.Errorf("dns: listen udp %s: %w", bound, err))
			}
			conn := pc.(*net.UDPConn)
			s.pcs = append(s.pcs, conn)
			if err := growRcvBuf(conn); err != nil {
				return fail(fmt.Errorf("dns: listen udp %s: receive buffer: %w", bound, err))
			}
			if ap.Addr().IsUnspecified() {
				if err := setPktinfo(conn, ap.Addr().Is6()); err != nil {
					return fail(fmt.Errorf("dns: listen udp %s: %w", bound, err))
				}
			}
			if i == 0 { // the other sockets share the port the first one got
				bound = netip.AddrPortFrom(ap.Addr(), conn.LocalAddr().(*net.UDPAddr).AddrPort().Port())
			}
		}
		ln, err := lc.Listen(ctx, tcpNet(ap), bound.String())
		if err != nil {
			return fail(fmt.Errorf("dns: listen tcp %s: %w", bound, err))
		}
		s.lns = append(s.lns, ln)
		s.addrs = append(s.addrs, bound)
	}
	s.listened = true
	close(s.ready)
	return nil
}

func udpNet(ap netip.AddrPort) string {
	if ap.Addr().Is4() {
		return "udp4"
	}
	return "udp6"
}

func tcpNet(ap netip.AddrPort) string {
	if ap.Addr().Is4() {
		return "tcp4"
	}
	return "tcp6"
}

// Run serves until ctx is done, then shuts every listener down, waits for
// the answers in flight (at most a few seconds) and returns nil. It binds
// the sockets first unless Listen did, and returns a bind error at once. It
// returns an error as well when a socket fails while serving, after
// shutting the others down. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return errors.New("dns: Run called twice")
	}
	s.ran = true
	listened := s.listened
	s.mu.Unlock()
	defer s.cancel()
	if !listened {
		if err := s.Listen(); err != nil {
			return err
		}
	}

	// UDP: a read loop per socket (udp.go). TCP: miekg/dns's server, a
	// goroutine per connection.
	var servers []*mdns.Server
	for _, ln := range s.lns {
		servers = append(servers, &mdns.Server{Listener: netutil.LimitListener(ln, maxTCPConns), Handler: s.handler})
	}
	// A server can be shut down only once it has started: started counts
	// down when it starts serving or returns, whichever comes first.
	var started sync.WaitGroup
	errc := make(chan error, len(servers)+len(s.pcs))
	for _, srv := range servers {
		var once sync.Once
		started.Add(1)
		srv.NotifyStartedFunc = func() { once.Do(started.Done) }
		go func() {
			err := srv.ActivateAndServe()
			once.Do(started.Done)
			if err != nil {
				err = fmt.Errorf("dns: serve tcp %s: %w", srv.Listener.Addr(), err)
			}
			errc <- err
		}()
	}
	var forwards sync.WaitGroup // UDP queries being forwarded
	for _, conn := range s.pcs {
		u := &udpServer{conn: conn, h: s.handler, pktinfo: conn.LocalAddr().(*net.UDPAddr).IP.IsUnspecified(), inflight: &forwards, batch: s.udpBatch}
		go func() {
			err := u.serve()
			if err != nil {
				err = fmt.Errorf("dns: serve udp %s: %w", conn.LocalAddr(), err)
			}
			errc <- err
		}()
	}

	var errs []error
	pending := len(servers) + len(s.pcs)
	select {
	case <-ctx.Done():
	case err := <-errc:
		pending--
		if err == nil {
			err = fmt.Errorf("dns: a server stopped unexpectedly")
		}
		errs = append(errs, err)
	}
	s.cancel() // queries being forwarded end now
	for _, conn := range s.pcs {
		conn.Close() // ends its read loop
	}
	started.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	for _, srv := range servers {
		// An error means it was not running (it failed) or that answers
		// in flight outlived the timeout; it has closed its listener anyway.
		_ = srv.ShutdownContext(sctx)
	}
	for range pending {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	forwards.Wait()
	// A server that failed before serving may not have closed its socket.
	for _, ln := range s.lns {
		ln.Close()
	}
	return errors.Join(errs...)
}
