package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Server answers on one address and port, over TCP and UDP, with its name:
// a TCP connection first receives "name\n", then every line it sends is
// echoed back as "name line\n"; a UDP datagram is answered with
// "name payload". Tests use it to see which backend a VIP picked and
// whether a held connection still works.
type Server struct {
	Name string
	Addr netip.AddrPort

	tcp    net.Listener
	udp    net.PacketConn
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// Serve starts a server inside the namespace. Close stops it.
func (n *NS) Serve(name string, addr netip.AddrPort) (*Server, error) {
	s := &Server{Name: name, Addr: addr, conns: map[net.Conn]bool{}}
	err := n.Do(func() error {
		var err error
		if s.tcp, err = net.Listen("tcp", addr.String()); err != nil {
			return err
		}
		s.udp, err = net.ListenPacket("udp", addr.String())
		return err
	})
	if err != nil {
		if s.tcp != nil {
			s.tcp.Close()
		}
		return nil, fmt.Errorf("serve %s on %s in %s: %w", name, addr, n.Name, err)
	}
	s.wg.Add(2)
	go s.acceptLoop()
	go s.udpLoop()
	return s, nil
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go s.handle(c)
	}
}

func (s *Server) handle(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	if _, err := fmt.Fprintf(c, "%s\n", s.Name); err != nil {
		return
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := fmt.Fprintf(c, "%s %s\n", s.Name, sc.Text()); err != nil {
			return
		}
	}
}

func (s *Server) udpLoop() {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		reply := append([]byte(s.Name+" "), buf[:n]...)
		_, _ = s.udp.WriteTo(reply, from)
	}
}

// Conns is the number of TCP connections the server holds open.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops the server and closes its connections; it returns once every
// goroutine of the server has ended.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.tcp.Close()
	s.udp.Close()
	s.wg.Wait()
}

// DialTCP connects from inside the namespace.
func (n *NS) DialTCP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr.String())
		return err
	})
	return c, err
}

// AskTCP connects to addr from inside the namespace and returns the name the
// server greets with.
func (n *NS) AskTCP(addr netip.AddrPort, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := n.DialTCP(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read greeting from %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// AskUDP sends one datagram to addr from inside the namespace (from a fixed
// local port when local is valid) and returns the name in the answer.
func (n *NS) AskUDP(addr netip.AddrPort, local netip.AddrPort, timeout time.Duration) (string, error) {
	var c net.Conn
	err := n.Do(func() error {
		d := net.Dialer{}
		if local.IsValid() {
			d.LocalAddr = net.UDPAddrFromAddrPort(local)
		}
		var err error
		c, err = d.Dial("udp", addr.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", fmt.Errorf("send to %s: %w", addr, err)
	}
	buf := make([]byte, 1500)
	m, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("read answer from %s: %w", addr, err)
	}
	name, _, _ := strings.Cut(string(buf[:m]), " ")
	return name, nil
}

// IsRefused reports whether err is an immediate refusal (a TCP reset, an
// ICMP port unreachable, or EPERM from a local reject), as opposed to a
// timeout.
func IsRefused(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "connection reset") ||
		strings.Contains(s, "operation not permitted")
}
