package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	// maxQuerySize is the read buffer of one datagram: queries are small,
	// and a larger one (cut by the kernel) is dropped.
	maxQuerySize = 4096
	// packBufSize holds any answer up to maxUDPSize before compression.
	packBufSize = 2 * maxUDPSize
	// udpBatch is how many datagrams one recvmmsg takes and one sendmmsg
	// sends at most. Under load a batch amortises the system calls and
	// the wake-ups; when idle it holds one query and adds no delay.
	udpBatch = 32
)

// batchConn reads and writes several datagrams per system call
// (recvmmsg, sendmmsg); ipv4.Message and ipv6.Message are the same type.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// udpServer answers the queries of one UDP socket. One goroutine reads a
// batch of datagrams, answers the queries for the zone inline, with buffers
// that live as long as the socket (no goroutine, no buffer per query), and
// sends the batch of answers. A query that is forwarded waits on upstreams,
// so it gets a goroutine of its own, counted in inflight, and sends its
// answer itself.
type udpServer struct {
	conn     *net.UDPConn
	h        *Handler
	pktinfo  bool // wildcard address: answer from each query's destination
	inflight *sync.WaitGroup
	batch    int // datagrams per system call; udpBatch when 0
}

// serve reads until the socket is closed (nil) or fails (an error).
func (u *udpServer) serve() error {
	var pc batchConn = ipv4.NewPacketConn(u.conn)
	if la, ok := u.conn.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		pc = ipv6.NewPacketConn(u.conn)
	}
	size := u.batch
	if size <= 0 {
		size = udpBatch
	}
	in := make([]ipv4.Message, size)
	out := make([]ipv4.Message, size)
	ws := make([]*udpWriter, size)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, maxQuerySize)}
		if u.pktinfo {
			in[i].OOB = make([]byte, oobSize)
		}
		out[i].Buffers = [][]byte{nil}
		ws[i] = &udpWriter{conn: u.conn, out: make([]byte, packBufSize), batched: true}
	}
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read: %w", err)
		}
		k := 0
		for i := range n {
			m := &in[i]
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			w := ws[i]
			w.from, w.oob, w.queued = from.AddrPort(), nil, nil
			if u.pktinfo {
				w.oob = replyOOB(m.OOB[:m.NN])
			}
			u.serveOne(w, m.Buffers[0][:m.N], truncated(m.Flags))
			if w.queued != nil {
				out[k].Buffers[0], out[k].OOB, out[k].Addr = w.queued, w.oob, m.Addr
				k++
			}
		}
		if err := send(pc, out[:k]); err != nil {
			return err
		}
	}
}

// serveOne answers one datagram: inline with w, or on a goroutine when it
// is forwarded.
func (u *udpServer) serveOne(w *udpWriter, data []byte, cut bool) {
	// Drop what cannot be a query: too short, cut by the kernel, or a
	// response (answering those lets two servers loop).
	if len(data) < 12 || cut || data[2]&0x80 != 0 {
		return
	}
	req := new(mdns.Msg)
	if err := req.Unpack(data); err != nil {
		// The header parsed: the handler answers FORMERR to a message
		// without a question.
		req = &mdns.Msg{MsgHdr: req.MsgHdr}
	}
	if u.h.forwards(req) {
		fw := &udpWriter{conn: u.conn, from: w.from, oob: w.oob}
		u.inflight.Add(1)
		go func() {
			defer u.inflight.Done()
			u.h.ServeDNS(fw, req)
		}()
		return
	}
	u.h.ServeDNS(w, req)
}

// send writes the answers of a batch. An answer the kernel refuses (an
// unreachable client, a reject rule) is dropped, and the others still go.
func send(pc batchConn, ms []ipv4.Message) error {
	for len(ms) > 0 {
		n, err := pc.WriteBatch(ms, 0)
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil || n <= 0 {
			n = max(n, 0) + 1 // ms[n] failed: skip it
		}
		ms = ms[min(n, len(ms)):]
	}
	return nil
}

// udpWriter is the ResponseWriter of a UDP query. A batched writer keeps
// the packed answer for the batch's sendmmsg; otherwise it sends at once.
type udpWriter struct {
	conn    *net.UDPConn
	from    netip.AddrPort
	oob     []byte // selects the source address; nil on a socket bound to one address
	out     []byte // pack buffer, reused; allocated on first use
	batched bool
	queued  []byte // the answer waiting for the batch
}

// WriteMsg packs m into the writer's buffer and sends or queues it.
func (w *udpWriter) WriteMsg(m *mdns.Msg) error {
	if w.out == nil {
		w.out = make([]byte, packBufSize)
	}
	b, err := m.PackBuffer(w.out)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// Write sends or queues a packed message.
func (w *udpWriter) Write(b []byte) (int, error) {
	if !w.batched {
		n, _, err := w.conn.WriteMsgUDPAddrPort(b, w.oob, w.from)
		return n, err
	}
	if w.queued != nil {
		return 0, errors.New("dns: second answer to one query")
	}
	w.queued = append(w.out[:0], b...) // b may be the caller's, or w.out already
	return len(b), nil
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.from) }
func (w *udpWriter) Close() error         { return nil }
func (w *udpWriter) TsigStatus() error    { return nil }
func (w *udpWriter) TsigTimersOnly(bool)  {}
func (w *udpWriter) Hijack()              {}
