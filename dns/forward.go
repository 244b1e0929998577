package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// maxForwards bounds the queries being forwarded at once; beyond it a query
// gets SERVFAIL at once instead of a goroutine and a socket (dnsmasq's
// dns-forward-max plays the same role).
const maxForwards = 1024

var (
	errNoAnswer = errors.New("no upstream answered")
	errOverload = errors.New("too many queries being forwarded")
	// aLongTimeAgo is a deadline in the past: it unblocks reads and writes.
	aLongTimeAgo = time.Unix(1, 0)
)

// forwarder sends queries for names outside the zone to upstream servers.
//
// Upstreams are tried in order. Each gets the per-try timeout to answer;
// when it fails (a network error, SERVFAIL or REFUSED) or its time is up,
// the next one is asked too, while the earlier ones may still answer: the
// first good answer wins. When the last upstream has failed or had its
// timeout, the client gets SERVFAIL. Each try uses a fresh socket (a random
// source port) and a fresh random ID; the client's message is forwarded
// otherwise unchanged (its question and EDNS0 record), over TCP when the
// client came over TCP.
type forwarder struct {
	upstreams []string
	timeout   time.Duration
	// dial opens the socket of one try; tests replace it to dial from
	// inside a network namespace.
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
	sem     chan struct{}
	metrics *metrics
}

func newForwarder(upstreams []netip.AddrPort, timeout time.Duration, m *metrics) *forwarder {
	f := &forwarder{timeout: timeout, sem: make(chan struct{}, maxForwards), metrics: m}
	for _, u := range upstreams {
		f.upstreams = append(f.upstreams, u.String())
	}
	var d net.Dialer
	f.dial = d.DialContext
	return f
}

type tryResult struct {
	i   int
	msg *mdns.Msg
	err error
}

// exchange forwards r and returns the first good answer, with the ID of the
// upstream query; the caller restores the client's. r is not modified.
func (f *forwarder) exchange(parent context.Context, r *mdns.Msg, tcp bool) (*mdns.Msg, error) {
	select {
	case f.sem <- struct{}{}:
		defer func() { <-f.sem }()
	default:
		f.metrics.forwardFailures.WithLabelValues("", failOverload).Inc()
		return nil, errOverload
	}
	// Packing writes the extended rcode into the OPT record: pack a copy.
	query, err := r.Copy().Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	q := r.Question[0]

	// Every try ends when exchange returns: its socket's deadline is moved
	// to the past.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	n := len(f.upstreams)
	results := make(chan tryResult, n) // never blocks a try
	counted := make([]bool, n)         // failure already counted
	fail := func(i int, reason string) {
		if !counted[i] {
			counted[i] = true
			f.metrics.forwardFailures.WithLabelValues(f.upstreams[i], reason).Inc()
		}
	}
	next, pending := 0, 0
	launch := func() {
		i := next
		next++
		pending++
		go func() {
			m, err := f.try(ctx, f.upstreams[i], query, q, tcp)
			results <- tryResult{i: i, msg: m, err: err}
		}()
	}

	launch()
	timer := time.NewTimer(f.timeout)
	defer timer.Stop()
	for {
		select {
		case res := <-results:
			pending--
			if res.err == nil && res.msg.Rcode != mdns.RcodeServerFailure && res.msg.Rcode != mdns.RcodeRefused {
				return res.msg, nil
			}
			if res.err == nil {
				fail(res.i, failRcode)
			} else {
				fail(res.i, failError)
			}
			if next < n {
				launch()
				timer.Reset(f.timeout)
			} else if pending == 0 {
				return nil, errNoAnswer
			}
		case <-timer.C:
			fail(next-1, failTimeout)
			if next == n {
				return nil, errNoAnswer
			}
			launch()
			timer.Reset(f.timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// try sends the packed query to one upstream and waits for the answer that
// matches it, until ctx ends.
func (f *forwarder) try(ctx context.Context, addr string, query []byte, q mdns.Question, tcp bool) (*mdns.Msg, error) {
	network := "udp"
	if tcp {
		network = "tcp"
	}
	conn, err := f.dial(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, addr, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(aLongTimeAgo) })
	defer stop()

	id := mdns.Id()
	var out []byte
	if tcp {
		out = make([]byte, 2+len(query))
		binary.BigEndian.PutUint16(out, uint16(len(query)))
		copy(out[2:], query)
		binary.BigEndian.PutUint16(out[2:], id)
	} else {
		out = append([]byte(nil), query...)
		binary.BigEndian.PutUint16(out, id)
	}
	if _, err := conn.Write(out); err != nil {
		return nil, fmt.Errorf("send to %s: %w", addr, err)
	}

	buf := make([]byte, mdns.MaxMsgSize)
	for {
		var p []byte
		if tcp {
			var l [2]byte
			if _, err := io.ReadFull(conn, l[:]); err != nil {
				return nil, fmt.Errorf("read from %s: %w", addr, err)
			}
			p = buf[:binary.BigEndian.Uint16(l[:])]
			if _, err := io.ReadFull(conn, p); err != nil {
				return nil, fmt.Errorf("read from %s: %w", addr, err)
			}
		} else {
			k, err := conn.Read(buf)
			if err != nil {
				return nil, fmt.Errorf("read from %s: %w", addr, err)
			}
			p = buf[:k]
		}
		if len(p) < 12 || binary.BigEndian.Uint16(p) != id {
			if tcp {
				return nil, fmt.Errorf("answer from %s does not match the query", addr)
			}
			continue // a stray datagram: keep waiting for ours
		}
		m := new(mdns.Msg)
		if err := m.Unpack(p); err != nil {
			return nil, fmt.Errorf("answer from %s: %w", addr, err)
		}
		if !m.Response {
			return nil, fmt.Errorf("answer from %s is not a response", addr)
		}
		// An error answer may come without the question (FORMERR, NOTIMP).
		if len(m.Question) == 0 && m.Rcode != mdns.RcodeSuccess {
			return m, nil
		}
		if len(m.Question) != 1 || m.Question[0].Qtype != q.Qtype ||
			m.Question[0].Qclass != q.Qclass || !strings.EqualFold(m.Question[0].Name, q.Name) {
			return nil, fmt.Errorf("answer from %s does not match the question", addr)
		}
		return m, nil
	}
}
