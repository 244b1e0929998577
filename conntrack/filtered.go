package conntrack

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The hand-written half of Kernel: the dumps that github.com/ti-mo/conntrack
// cannot ask for, with the kernel's status and reply-tuple filters
// (CTA_STATUS with CTA_STATUS_MASK, CTA_FILTER), sent and read on a
// ctnetlink socket of its own. The messages are encoded and decoded in
// wire.go. kernel.go says why there are two paths.

// filtered is the socket of the filtered dumps. Kernel's mutex guards it.
type filtered struct {
	maxOne  int // most reply-source addresses dumped one by one before a family dump is cheaper
	conn    *netlink.Conn
	raw     syscall.RawConn
	buf     []byte
	seq     uint32
	noTuple bool // the kernel refused a tuple filter: dump whole families
}

func newFiltered() filtered {
	return filtered{maxOne: 4, buf: make([]byte, 64<<10)}
}

// dial opens the socket in the namespace netns refers to (-1: the
// caller's). A dump is paced by its reader (the kernel serializes the next
// part only when the socket has room), so the default receive buffer loses
// nothing.
func (d *filtered) dial(netns int) error {
	cfg := &netlink.Config{}
	if netns >= 0 {
		cfg.NetNS = netns
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return fmt.Errorf("open ctnetlink socket: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return fmt.Errorf("set up ctnetlink socket: %w", err)
	}
	d.conn, d.raw = c, raw
	return nil
}

func (d *filtered) close() error {
	if d.conn == nil {
		return nil
	}
	err := d.conn.Close()
	d.conn, d.raw = nil, nil
	return err
}

// begin readies the socket for one operation bounded by ctx, redialing it
// after an earlier failure. end throws it away when the operation failed or
// was cancelled, since unread answers may be left in it.
func (d *filtered) begin(ctx context.Context, netns int) (end func(*error), err error) {
	if d.conn == nil {
		if err := d.dial(netns); err != nil {
			return nil, err
		}
	}
	dl, _ := ctx.Deadline()
	if err := d.conn.SetDeadline(dl); err != nil {
		d.close()
		return nil, fmt.Errorf("set ctnetlink deadline: %w", err)
	}
	c := d.conn
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	return func(errp *error) {
		if !stop() || *errp != nil {
			// Cancelled (the deadline may be set in the past at any
			// moment now) or failed: start afresh next time.
			d.close()
			if ctxErr := ctx.Err(); ctxErr != nil && *errp != nil {
				*errp = fmt.Errorf("%w (%w)", ctxErr, *errp)
			}
		}
	}, nil
}

func (d *filtered) nextSeq() uint32 {
	d.seq++
	if d.seq == 0 {
		d.seq = 1
	}
	return d.seq
}

// recv reads one datagram into d.buf.
func (d *filtered) recv() ([]byte, error) {
	var n, flags int
	var rerr error
	err := d.raw.Read(func(fd uintptr) bool {
		for {
			n, _, flags, _, rerr = unix.Recvmsg(int(fd), d.buf, nil, unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				return rerr != unix.EAGAIN
			}
		}
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, fmt.Errorf("receive from ctnetlink: %w", err)
	}
	if flags&unix.MSG_TRUNC != 0 {
		return nil, fmt.Errorf("receive from ctnetlink: datagram larger than %d bytes", len(d.buf))
	}
	return d.buf[:n], nil
}

// FlowsFrom implements Interface with the kernel's filters: one dump per
// IPv4 address that asks only for the DNATed flows whose reply comes from
// it (a dump of the DNATed IPv4 flows when there are more than a few
// addresses), and a dump of the DNATed IPv6 flows when there is an IPv6
// address; the rest is selected here.
func (k *Kernel) FlowsFrom(ctx context.Context, addrs []netip.Addr) ([]Flow, error) {
	want := make(map[netip.Addr]bool, len(addrs))
	var v4 []Suspect
	six := false
	for _, a := range addrs {
		if !a.IsValid() || want[a] {
			continue
		}
		want[a] = true
		if a.Is4() {
			v4 = append(v4, Suspect{Backend: netip.AddrPortFrom(a, 0)})
		} else {
			six = true
		}
	}
	return k.dumps(ctx, v4, six, func(f Flow) bool { return want[f.ReplySrc.Addr()] })
}

// FlowsOf is FlowsFrom narrowed to the backends' ports: one dump per IPv4
// backend that asks only for the DNATed flows of its protocol whose reply
// comes from its address and port (a dump of the DNATed IPv4 flows when
// there are more than a few backends), and a dump of the DNATed IPv6 flows
// when there is an IPv6 backend; the rest is selected here. A host runs
// many tasks: narrowed to the address alone, the dump would carry (and
// this would decode) the flows of all of them.
func (k *Kernel) FlowsOf(ctx context.Context, backends []Suspect) ([]Flow, error) {
	want := make(map[Suspect]bool, len(backends))
	var v4 []Suspect
	six := false
	for _, s := range backends {
		if !s.Backend.IsValid() || s.Proto == 0 || want[s] {
			continue
		}
		want[s] = true
		if s.Backend.Addr().Is4() {
			v4 = append(v4, s)
		} else {
			six = true
		}
	}
	return k.dumps(ctx, v4, six, func(f Flow) bool { return want[Suspect{Proto: f.Proto, Backend: f.ReplySrc}] })
}

// dumps runs the dumps of FlowsFrom and FlowsOf: one per IPv4 filter (a
// dump of the family when there are more than a few, or when the kernel
// refused a filter before), one of the IPv6 family when six is set, and
// keeps the DNATed flows that keep accepts.
func (k *Kernel) dumps(ctx context.Context, v4 []Suspect, six bool, keep func(Flow) bool) (flows []Flow, err error) {
	if len(v4) == 0 && !six {
		return nil, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.usable(ctx); err != nil {
		return nil, err
	}
	d := &k.filtered
	end, err := d.begin(ctx, k.netns)
	if err != nil {
		return nil, err
	}
	defer end(&err)
	if len(v4) > d.maxOne || d.noTuple {
		v4 = []Suspect{{}}
	}
	for _, f := range v4 {
		if flows, err = d.dump(flows, familyIPv4, f, keep); err != nil {
			return nil, err
		}
	}
	if six {
		if flows, err = d.dump(flows, familyIPv6, Suspect{}, keep); err != nil {
			return nil, err
		}
	}
	return flows, nil
}

// dump appends the DNATed flows of one dump to out, keeping only those that
// keep accepts. filter, when valid, narrows the dump in the kernel to the
// flows whose reply comes from its address (and, with a protocol, from its
// port in that protocol).
func (d *filtered) dump(out []Flow, fam uint8, filter Suspect, keep func(Flow) bool) ([]Flow, error) {
	seq := d.nextSeq()
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(msgCTGet), Flags: netlink.Request | netlink.Dump, Sequence: seq},
		Data:   appendDumpRequest(nil, fam, filter.Backend.Addr(), filter.Proto, filter.Backend.Port()),
	}
	if _, err := d.conn.Send(req); err != nil {
		return out, fmt.Errorf("send ctnetlink dump request: %w", err)
	}
	for {
		b, err := d.recv()
		if err != nil {
			return out, err
		}
		var done bool
		var errno syscall.Errno
		err = messages(b, func(m message) error {
			if m.seq != seq {
				return nil
			}
			switch {
			case m.typ == nlmsgDone || m.typ == nlmsgError:
				done = true
				e, err := m.errno()
				errno = syscall.Errno(e)
				return err
			case m.typ>>8 != subsysCTNetlink:
				return nil
			}
			f, err := parseFlow(m.body)
			if err != nil {
				return fmt.Errorf("decode conntrack flow: %w", err)
			}
			if f.DNATed() && keep(f) {
				out = append(out, f)
			}
			return nil
		})
		if err != nil {
			return out, err
		}
		if !done {
			continue
		}
		if errno == 0 {
			return out, nil
		}
		if filter.Backend.IsValid() && (errno == unix.EOPNOTSUPP || errno == unix.EINVAL) {
			// This kernel knows CTA_FILTER but refuses ours: dump the
			// family instead, from now on.
			d.noTuple = true
			return d.dump(out, fam, Suspect{}, keep)
		}
		return out, fmt.Errorf("ctnetlink dump: %w", errno)
	}
}

// deleteBatch is the most delete requests sent in one datagram before their
// answers are read. An answer is an acknowledgement or an error that
// carries the request back, up to about 150 bytes: a batch's answers stay
// far below the socket's receive buffer, so none is dropped.
const deleteBatch = 128

// remove deletes flows (each with complete tuples), deleteBatch requests
// per datagram, and calls done with the place of each flow in flows and the
// kernel's answer to it: 0 when the entry was deleted, an errno otherwise (ENOENT: it is gone
// already, or holds another flow now). It stops at the first failure of the
// socket.
func (d *filtered) remove(flows []Flow, done func(i int, errno syscall.Errno)) error {
	var req []byte
	for off := 0; off < len(flows); {
		batch := flows[off:min(len(flows), off+deleteBatch)]
		req = req[:0]
		if d.seq > math.MaxUint32-deleteBatch-1 {
			d.seq = 0 // the batch's sequence numbers follow each other
		}
		first := d.seq + 1
		for _, f := range batch {
			start := len(req)
			req = append(req, make([]byte, nlmsgHdrLen)...) // the header, filled below
			req = appendDeleteRequest(req, f)
			native.PutUint32(req[start:], uint32(len(req)-start))
			native.PutUint16(req[start+4:], msgCTDelete)
			native.PutUint16(req[start+6:], nlmFRequest|nlmFAck)
			native.PutUint32(req[start+8:], d.nextSeq())
		}
		if err := d.send(req); err != nil {
			return err
		}
		pending := len(batch)
		for pending > 0 {
			b, err := d.recv()
			if err != nil {
				return err
			}
			err = messages(b, func(m message) error {
				i := int(m.seq - first)
				if m.typ != nlmsgError || m.seq-first >= uint32(len(batch)) {
					return nil // an answer to an earlier request
				}
				e, err := m.errno()
				if err != nil {
					return err
				}
				done(off+i, syscall.Errno(e))
				pending--
				return nil
			})
			if err != nil {
				return err
			}
		}
		off += len(batch)
	}
	return nil
}

// send writes one datagram of requests.
func (d *filtered) send(b []byte) error {
	var werr error
	err := d.raw.Write(func(fd uintptr) bool {
		for {
			werr = unix.Sendto(int(fd), b, unix.MSG_DONTWAIT, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
			if werr != unix.EINTR {
				return werr != unix.EAGAIN
			}
		}
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("send to ctnetlink: %w", err)
	}
	return nil
}
