package conntrack

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

// A delete request without a tuple would flush the table: refuse every
// flow that does not name one entry.
func TestCheckTuplesRefusesIncompleteTuples(t *testing.T) {
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
		if err := checkTuples(f); !errors.Is(err, errBadFlow) {
			t.Errorf("%s (%s): %v, want errBadFlow", name, f, err)
		}
	}
	if err := checkTuples(good); err != nil {
		t.Errorf("complete flow: %v", err)
	}
}
