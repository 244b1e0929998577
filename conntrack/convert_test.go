package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/l4lb/l4lb/vip"
	"golang.org/x/sys/unix"
)

func TestFromCT(t *testing.T) {
	want := Flow{Proto: vip.UDP, OrigSrc: ap("fd00:198:19::1:b", 5353), OrigDst: ap("fd00:198:18::1", 53),
		ReplySrc: ap("fd00:198:19::c", 31053), ReplyDst: ap("fd00:198:19::1:b", 5353), Zone: 7, ID: 42}
	c, err := toCT(want)
	if err != nil {
		t.Fatal(err)
	}
	// As a dump fills it: the original tuple's protocol and ports, the id.
	c.TupleOrig.Proto.Protocol = uint8(vip.UDP)
	c.TupleOrig.Proto.SourcePort, c.TupleOrig.Proto.DestinationPort = 5353, 53
	c.ID = 42
	if got := fromCT(&c); got != want {
		t.Errorf("fromCT: %+v, want %+v", got, want)
	}
}

// toCT names the entry by its reply tuple and zone; the original tuple
// carries only the addresses, which ti-mo reads for the address family and
// does not send without a protocol.
func TestToCT(t *testing.T) {
	for _, f := range []Flow{
		{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 40650), OrigDst: ap("198.18.0.1", 80),
			ReplySrc: ap("198.19.0.22", 8080), ReplyDst: ap("198.19.1.11", 40650), ID: 9},
		{Proto: vip.UDP, OrigSrc: ap("fd00:198:19::1:b", 5353), OrigDst: ap("fd00:198:18::1", 53),
			ReplySrc: ap("fd00:198:19::c", 31053), ReplyDst: ap("fd00:198:19::1:b", 5353), Zone: 7, ID: 42},
	} {
		c, err := toCT(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		six := f.OrigSrc.Addr().Is6()
		if p := c.TupleOrig.Proto; p.Protocol != 0 || p.SourcePort != 0 || p.DestinationPort != 0 || c.TupleOrig.IP.IsIPv6() != six || c.TupleReply.IP.IsIPv6() != six {
			t.Errorf("%s: original tuple %+v", f, c.TupleOrig)
		}
		if c.ID != 0 || c.Zone != f.Zone || c.Status.Value != 0 || c.Mark != 0 || c.Timeout != 0 {
			t.Errorf("%s: request %+v carries more than tuples and zone", f, c)
		}
		back := fromCT(&c)
		if c.TupleReply.Proto.Protocol != uint8(f.Proto) || back.ReplySrc != f.ReplySrc || back.ReplyDst != f.ReplyDst {
			t.Errorf("%s: reply tuple %+v", f, c.TupleReply)
		}
	}
}

// A delete request without a tuple would flush the table: refuse every
// flow that does not name one entry.
func TestToCTRefusesIncompleteTuples(t *testing.T) {
	good := Flow{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 1), OrigDst: ap("198.18.0.1", 80),
		ReplySrc: ap("198.19.0.22", 8080), ReplyDst: ap("198.19.1.11", 1)}
	cases := map[string]func(*Flow){
		"zero":            func(f *Flow) { *f = Flow{} },
		"no protocol":     func(f *Flow) { f.Proto = 0 },
		"no client":       func(f *Flow) { f.OrigSrc = netip.AddrPort{} },
		"no destination":  func(f *Flow) { f.OrigDst = netip.AddrPort{} },
		"no reply source": func(f *Flow) { f.ReplySrc = netip.AddrPort{} },
		"no reply dest":   func(f *Flow) { f.ReplyDst = netip.AddrPort{} },
		"mixed families":  func(f *Flow) { f.OrigDst = ap("fd00:198:18::1", 80) },
		"scoped address": func(f *Flow) {
			ll := netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 1)
			*f = Flow{Proto: vip.TCP, OrigSrc: ll, OrigDst: ap("fe80::2", 80), ReplySrc: ap("fe80::2", 80), ReplyDst: ll}
		},
	}
	for name, change := range cases {
		f := good
		change(&f)
		if _, err := toCT(f); !errors.Is(err, errBadFlow) {
			t.Errorf("%s (%s): %v, want errBadFlow", name, f, err)
		}
	}
	if _, err := toCT(good); err != nil {
		t.Errorf("complete flow: %v", err)
	}
}

func TestAnswer(t *testing.T) {
	closed := errors.New("use of closed file")
	for _, c := range []struct {
		err     error
		gone    bool
		refused bool
		conn    bool
	}{
		{err: nil},
		{err: fmt.Errorf("netfilter query: %w", unix.ENOENT), gone: true},
		{err: fmt.Errorf("netfilter query: %w", unix.EINVAL), refused: true},
		{err: fmt.Errorf("netfilter query: %w", closed), conn: true},
	} {
		gone, err := answer(c.err)
		if gone != c.gone || errors.Is(err, errRefused) != c.refused || errors.Is(err, closed) != c.conn ||
			(c.refused && !errors.Is(err, unix.EINVAL)) {
			t.Errorf("answer(%v): %v, %v", c.err, gone, err)
		}
	}
}
