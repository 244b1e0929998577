package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	mdns "github.com/miekg/dns"
)

const (
	// maxQuerySize is the read buffer of a UDP socket: queries are small,
	// and a larger one (cut by the kernel) is dropped.
	maxQuerySize = 4096
	// packBufSize holds any answer up to maxUDPSize before compression.
	packBufSize = 2 * maxUDPSize
)

// udpServer answers the queries of one UDP socket. One goroutine reads.
// A query the handler answers from the zone is answered inline, with read
// and pack buffers that live as long as the socket: no goroutine and no
// buffer per query. A query that is forwarded waits on upstreams, so it
// gets a goroutine of its own, counted in inflight.
type udpServer struct {
	conn     *net.UDPConn
	h        *Handler
	pktinfo  bool // wildcard address: answer from each query's destination
	inflight *sync.WaitGroup
}

// serve reads until the socket is closed (nil) or fails (an error).
func (u *udpServer) serve() error {
	buf := make([]byte, maxQuerySize)
	var oob []byte
	if u.pktinfo {
		oob = make([]byte, oobSize)
	}
	w := &udpWriter{conn: u.conn, out: make([]byte, packBufSize)}
	for {
		n, oobn, flags, from, err := u.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read: %w", err)
		}
		// Drop what cannot be a query: too short, cut by the kernel, or a
		// response (answering those lets two servers loop).
		if n < 12 || truncated(flags) || buf[2]&0x80 != 0 {
			continue
		}
		req := new(mdns.Msg)
		if err := req.Unpack(buf[:n]); err != nil {
			// The header parsed: the handler answers FORMERR to a
			// message without a question.
			req = &mdns.Msg{MsgHdr: req.MsgHdr}
		}
		var src []byte
		if u.pktinfo {
			src = replyOOB(oob[:oobn])
		}
		if u.h.forwards(req) {
			fw := &udpWriter{conn: u.conn, from: from, oob: src}
			u.inflight.Add(1)
			go func() {
				defer u.inflight.Done()
				u.h.ServeDNS(fw, req)
			}()
			continue
		}
		w.from, w.oob = from, src
		u.h.ServeDNS(w, req)
	}
}

// udpWriter is the ResponseWriter of a UDP query.
type udpWriter struct {
	conn *net.UDPConn
	from netip.AddrPort
	oob  []byte // selects the source address; nil on a socket bound to one address
	out  []byte // pack buffer, reused; allocated on first use
}

// WriteMsg packs m into the writer's buffer and sends it.
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

// Write sends a packed message.
func (w *udpWriter) Write(b []byte) (int, error) {
	n, _, err := w.conn.WriteMsgUDPAddrPort(b, w.oob, w.from)
	return n, err
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.from) }
func (w *udpWriter) Close() error         { return nil }
func (w *udpWriter) TsigStatus() error    { return nil }
func (w *udpWriter) TsigTimersOnly(bool)  {}
func (w *udpWriter) Hijack()              {}
