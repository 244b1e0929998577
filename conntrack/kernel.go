package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/vip"
)

// This is the only file of the package that uses github.com/ti-mo/conntrack.
//
// Kernel has two ways into the conntrack table, because ti-mo/conntrack
// (v0.5.1) cannot say everything that the pass after a change needs:
//
//   - Flows (the full pass: at start, after a failed pass, on resync) goes
//     through ti-mo/conntrack: one Conn.Dump of the whole table, both
//     families; ti-mo filters in the kernel only by mark, so the DNATed
//     flows are kept here (status IPS_DST_NAT, and a reply that does not
//     come from the original destination). ti-mo decodes every attribute
//     of every entry into a 496-byte Flow: with 100,000 entries, Flows
//     takes 0.4 to 0.75 s and allocates 260 MB, 1.5 to 2 times the time
//     (and 3.7 times the memory) of the hand-written dump of the same flows
//     (FlowsFrom with every backend); that is the library's price on a pass
//     that runs rarely.
//   - FlowsFrom (the pass after a change, narrowed to the backends that lost
//     their place) is a hand-written ctnetlink dump (filtered.go, wire.go)
//     that asks the kernel for the DNATed flows of one backend address at a
//     time (CTA_STATUS with CTA_STATUS_MASK, and a reply-tuple CTA_FILTER),
//     which ti-mo cannot express. The kernel still walks the whole table
//     but serializes only those flows, and only their tuples, id and zone
//     are decoded: 25 to 60 ms with 100,000 entries, where a ti-mo dump and
//     a selection here would cost a full pass's 0.5 s after every change.
//   - Delete (every pass) is hand-written too, on the same socket: up to
//     128 requests in one datagram, then their answers, 6 to 7 µs an entry
//     where ti-mo's Conn.Delete, one round trip per entry, took 45 to 50 µs
//     (BenchmarkCleanup: a pass over 100,000 entries that removes a
//     backend's 3,000 takes about 50 ms, 190 ms with ti-mo's deletes).
//
// Which entry a delete hits: the request names the entry by its reply
// tuple, which holds the backend, and by its id (CTA_ID) when the listing
// gave one; the kernel deletes the entry that holds the tuple only if the
// id matches, and answers ENOENT otherwise. Between the listing and the
// delete, a listed entry may end and a new flow take its original tuple: a
// client that reuses its source port towards the same VIP (a SYN on a
// TIME_WAIT entry replaces it at once). That new flow went through the new
// ruleset to a live backend, and deleting it would reset it or delay its
// handshake. Its reply tuple holds another backend, and its id is another
// one: it is left alone. Even a flow opened straight to the backend's
// address, without NAT, that took the very reply tuple is safe by its id.
//
// The two paths use two sockets, dialed in the namespace given WithNetNS
// and again after a failure.

// readBuffer is the receive buffer asked for on ti-mo's socket; the kernel
// caps it at net.core.rmem_max, as ti-mo's Conn does not expose the socket
// to force it past. A dump is paced by its reader (the kernel serializes
// the next part only when the socket has room), so the size decides speed,
// not completeness: with a 16 KiB buffer, a dump of 100,000 entries still
// completes without ENOBUFS, 1.5 times slower.
const readBuffer = 8 << 20

// Kernel is the conntrack table of a network namespace, over netlink.
type Kernel struct {
	mu       sync.Mutex
	netns    int      // duplicate of the namespace fd given to WithNetNS; -1 for the caller's namespace
	ct       *ct.Conn // ti-mo's connection; nil after a failure, until dialed again
	filtered filtered // the hand-written filtered dumps (filtered.go)
	closed   bool
}

var (
	_ Interface  = (*Kernel)(nil)
	_ PortLister = (*Kernel)(nil)
)

// Option configures a Kernel.
type Option func(*Kernel) error

// WithNetNS works on the conntrack table of the network namespace that fd
// refers to (a /var/run/netns/NAME or /proc/PID/ns/net file). The Kernel
// keeps its own duplicate of fd: the caller may close fd after New.
func WithNetNS(fd int) Option {
	return func(k *Kernel) error {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return fmt.Errorf("duplicate netns fd %d: %w", fd, err)
		}
		k.netns = d
		return nil
	}
}

// New opens the conntrack table of the caller's network namespace, or of
// the one given WithNetNS. It needs CAP_NET_ADMIN there.
func New(opts ...Option) (*Kernel, error) {
	k := &Kernel{netns: -1, filtered: newFiltered()}
	for _, o := range opts {
		if err := o(k); err != nil {
			k.closeNetNS()
			return nil, err
		}
	}
	if err := k.dialCT(); err != nil {
		k.closeNetNS()
		return nil, err
	}
	if err := k.filtered.dial(k.netns); err != nil {
		k.ct.Close()
		k.closeNetNS()
		return nil, err
	}
	return k, nil
}

func (k *Kernel) dialCT() error {
	cfg := &netlink.Config{}
	if k.netns >= 0 {
		cfg.NetNS = k.netns
	}
	c, err := ct.Dial(cfg)
	if err != nil {
		return fmt.Errorf("open conntrack netlink socket: %w", err)
	}
	if err := c.SetReadBuffer(readBuffer); err != nil {
		c.Close()
		return fmt.Errorf("set conntrack socket read buffer: %w", err)
	}
	k.ct = c
	return nil
}

// Close closes the sockets.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	var errs []error
	if k.ct != nil {
		errs = append(errs, k.ct.Close())
		k.ct = nil
	}
	errs = append(errs, k.filtered.close())
	k.closeNetNS()
	return errors.Join(errs...)
}

func (k *Kernel) closeNetNS() {
	if k.netns >= 0 {
		unix.Close(k.netns)
		k.netns = -1
	}
}

// usable checks, with k.mu held, that an operation may start.
func (k *Kernel) usable(ctx context.Context) error {
	if k.closed {
		return errors.New("conntrack: use of closed Kernel")
	}
	return ctx.Err()
}

// withCT runs fn on ti-mo's connection, dialing it first when needed, with
// k.mu held. ti-mo's calls take no context: when ctx ends first, the
// connection is closed under fn, which makes a blocked call return at once.
// A connection that was closed or whose use failed (fn returned an error)
// is thrown away, since unread answers may be left in it, and dialed anew
// next time.
func (k *Kernel) withCT(ctx context.Context, fn func(c *ct.Conn) error) error {
	if k.ct == nil {
		if err := k.dialCT(); err != nil {
			return err
		}
	}
	c := k.ct
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	err := fn(c)
	if !stop() {
		k.ct = nil // closed by ctx, or about to be
		if err != nil && !errors.Is(err, ctx.Err()) {
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return err
	}
	if err != nil {
		_ = c.Close()
		k.ct = nil
	}
	return err
}

// Flows implements Interface: one ti-mo dump of both families, the DNATed
// flows kept.
func (k *Kernel) Flows(ctx context.Context) (flows []Flow, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.usable(ctx); err != nil {
		return nil, err
	}
	err = k.withCT(ctx, func(c *ct.Conn) error {
		all, err := c.Dump(nil)
		if err != nil {
			return fmt.Errorf("dump conntrack table: %w", err)
		}
		n := 0
		for i := range all {
			if all[i].Status.DstNAT() {
				n++
			}
		}
		flows = make([]Flow, 0, n)
		for i := range all {
			if !all[i].Status.DstNAT() {
				continue
			}
			if f := fromCT(&all[i]); f.DNATed() {
				flows = append(flows, f)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return flows, nil
}

// Delete implements Interface on the hand-written socket: the requests go
// deleteBatch to a datagram, each naming its entry by its reply tuple and
// its id (see the file comment), and the kernel's answers are read after
// each datagram. A flow without complete tuples is refused here and never
// reaches the kernel.
func (k *Kernel) Delete(ctx context.Context, flows []Flow) (deleted int, err error) {
	if len(flows) == 0 {
		return 0, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.usable(ctx); err != nil {
		return 0, err
	}
	// The failure reported is the first in the order of flows.
	var failed int
	var first error
	firstAt := len(flows)
	fail := func(i int, err error) {
		failed++
		if i < firstAt {
			first, firstAt = err, i
		}
	}
	valid := make([]Flow, 0, len(flows))
	at := make([]int, 0, len(flows)) // of each valid flow, its place in flows
	for i, f := range flows {
		if err := checkTuples(f); err != nil {
			fail(i, err)
			continue
		}
		valid, at = append(valid, f), append(at, i)
	}
	d := &k.filtered
	end, err := d.begin(ctx, k.netns)
	if err != nil {
		return 0, err
	}
	err = d.remove(valid, func(i int, errno syscall.Errno) {
		switch errno {
		case 0:
			deleted++
		case unix.ENOENT:
		default:
			fail(at[i], fmt.Errorf("delete %s: %w: %w", valid[i], errRefused, errno))
		}
	})
	end(&err)
	if err != nil {
		return deleted, fmt.Errorf("delete: %w", err)
	}
	if failed > 0 {
		return deleted, &DeleteError{Failed: failed, Err: first}
	}
	return deleted, nil
}

// errRefused marks the kernel's refusal of one request, as opposed to a
// failure of the connection.
var errRefused = errors.New("refused by the kernel")

// fromCT is the plain Flow of a ti-mo flow.
func fromCT(c *ct.Flow) Flow {
	o, r := &c.TupleOrig, &c.TupleReply
	return Flow{
		Proto:    vip.Proto(o.Proto.Protocol),
		OrigSrc:  netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.SourcePort),
		OrigDst:  netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort),
		ReplySrc: netip.AddrPortFrom(r.IP.SourceAddress, r.Proto.SourcePort),
		ReplyDst: netip.AddrPortFrom(r.IP.DestinationAddress, r.Proto.DestinationPort),
		Zone:     c.Zone,
		ID:       c.ID,
	}
}

// errBadFlow marks a flow that cannot name one entry.
var errBadFlow = errors.New("flow has no complete tuples")

// checkTuples refuses a flow that does not name one entry: a protocol and
// four addresses of one family without scope. A delete request without a
// tuple would make the kernel flush the whole table.
func checkTuples(f Flow) error {
	addrs := [4]netip.Addr{f.OrigSrc.Addr(), f.OrigDst.Addr(), f.ReplySrc.Addr(), f.ReplyDst.Addr()}
	for _, a := range addrs {
		if !a.IsValid() || a.Is4() != addrs[0].Is4() || a.Zone() != "" || f.Proto == 0 {
			return fmt.Errorf("%w: %s", errBadFlow, f)
		}
	}
	return nil
}
