package conntrack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return familyIPv4
	}
	return familyIPv6
}

// appendTuple encodes one direction the way the kernel does in a dump.
func appendTuple(b []byte, typ uint16, proto vip.Proto, src, dst netip.AddrPort) []byte {
	return nest(b, typ, func(b []byte) []byte {
		b = nest(b, ctaTupleIP, func(b []byte) []byte {
			if src.Addr().Is4() {
				b = appendAttr(b, ctaIPv4Src, src.Addr().AsSlice())
				return appendAttr(b, ctaIPv4Dst, dst.Addr().AsSlice())
			}
			b = appendAttr(b, ctaIPv6Src, src.Addr().AsSlice())
			return appendAttr(b, ctaIPv6Dst, dst.Addr().AsSlice())
		})
		b = nest(b, ctaTupleProto, func(b []byte) []byte {
			b = appendAttr(b, ctaProtoNum, []byte{uint8(proto)})
			b = appendAttr(b, ctaProtoSrcPort, be16(src.Port()))
			return appendAttr(b, ctaProtoDstPort, be16(dst.Port()))
		})
		return appendAttr(b, 3, be16(0)) // CTA_TUPLE_ZONE, ignored
	})
}

// dumpBody encodes f as the body of a dump reply, with the attributes a
// kernel adds that l4lb does not read.
func dumpBody(f Flow) []byte {
	b := nfgenmsg(nil, family(f.OrigSrc.Addr()))
	b = appendTuple(b, ctaTupleOrig, f.Proto, f.OrigSrc, f.OrigDst)
	b = appendTuple(b, ctaTupleReply, f.Proto, f.ReplySrc, f.ReplyDst)
	b = appendAttr(b, ctaStatus, be32(0x1ae))
	b = appendAttr(b, 7, be32(118))        // CTA_TIMEOUT
	b = nest(b, 4, func(b []byte) []byte { // CTA_PROTOINFO
		return nest(b, 1, func(b []byte) []byte { return appendAttr(b, 1, []byte{3}) })
	})
	b = appendAttr(b, 8, be32(0)) // CTA_MARK
	if f.Zone != 0 {
		b = appendAttr(b, ctaZone, be16(f.Zone))
	}
	b = appendAttr(b, 11, be32(1)) // CTA_USE
	return appendAttr(b, ctaID, be32(f.ID))
}

func TestParseFlow(t *testing.T) {
	for _, f := range []Flow{
		{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 40650), OrigDst: ap("198.18.0.1", 80),
			ReplySrc: ap("198.19.0.22", 8080), ReplyDst: ap("198.19.1.11", 40650), ID: 0xdeadbeef},
		{Proto: vip.UDP, OrigSrc: ap("fd00:198:19::1:b", 5353), OrigDst: ap("fd00:198:18::1", 53),
			ReplySrc: ap("fd00:198:19::c", 31053), ReplyDst: ap("fd00:198:19::1:b", 5353), Zone: 7, ID: 1},
	} {
		got, err := parseFlow(dumpBody(f))
		if err != nil || got != f {
			t.Errorf("parse %s: %+v, %v", f, got, err)
		}
	}
}

func TestParseFlowMalformed(t *testing.T) {
	good := dumpBody(Flow{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 1), OrigDst: ap("198.18.0.1", 80),
		ReplySrc: ap("198.19.0.22", 8080), ReplyDst: ap("198.19.1.11", 1), ID: 9})
	onlyOrig := nfgenmsg(nil, familyIPv4)
	onlyOrig = appendTuple(onlyOrig, ctaTupleOrig, vip.TCP, ap("198.19.1.11", 1), ap("198.18.0.1", 80))
	noAddr := nfgenmsg(nil, familyIPv4)
	for _, typ := range []uint16{ctaTupleOrig, ctaTupleReply} {
		noAddr = nest(noAddr, typ, func(b []byte) []byte {
			return nest(b, ctaTupleProto, func(b []byte) []byte { return appendAttr(b, ctaProtoNum, []byte{6}) })
		})
	}
	shortAddr := nfgenmsg(nil, familyIPv4)
	shortAddr = nest(shortAddr, ctaTupleOrig, func(b []byte) []byte {
		return nest(b, ctaTupleIP, func(b []byte) []byte { return appendAttr(b, ctaIPv4Src, []byte{1, 2, 3}) })
	})
	badLen := bytes.Clone(good)
	binary.NativeEndian.PutUint16(badLen[4:], 0xfff0)
	for name, b := range map[string][]byte{
		"empty":       nil,
		"header only": good[:4],
		"truncated":   good[:len(good)-3],
		"bad length":  badLen,
		"one tuple":   onlyOrig,
		"no address":  noAddr,
		"short addr":  shortAddr,
	} {
		if f, err := parseFlow(b); err == nil {
			t.Errorf("%s: parsed %s, want an error", name, f)
		}
	}
}

func TestAppendDumpRequest(t *testing.T) {
	count := func(b []byte) map[uint16]int {
		m := map[uint16]int{}
		_ = attrs(b[nfgenmsgLen:], func(typ uint16, _ []byte) error { m[typ]++; return nil })
		return m
	}
	all := appendDumpRequest(nil, familyUnspec, netip.Addr{}, 0, 0)
	if m := count(all); all[0] != familyUnspec || len(m) != 2 || m[ctaStatus] != 1 || m[ctaStatusMask] != 1 {
		t.Errorf("full dump: family %d attrs %v", all[0], m)
	}
	one := appendDumpRequest(nil, familyIPv4, netip.MustParseAddr("198.19.0.11"), 0, 0)
	if m := count(one); one[0] != familyIPv4 || m[ctaTupleReply] != 1 || m[ctaFilter] != 1 {
		t.Errorf("filtered dump: family %d attrs %v", one[0], m)
	}
	// No IPv6 tuple filter: the kernel gets it backwards.
	six := appendDumpRequest(nil, familyIPv6, netip.MustParseAddr("fd00:198:19::b"), 0, 0)
	if m := count(six); six[0] != familyIPv6 || m[ctaTupleReply] != 0 || m[ctaFilter] != 0 {
		t.Errorf("IPv6 dump: family %d attrs %v", six[0], m)
	}
}

func TestMessages(t *testing.T) {
	msg := func(typ, flags uint16, seq uint32, body []byte) []byte {
		b := native.AppendUint32(nil, uint32(nlmsgHdrLen+len(body)))
		b = native.AppendUint16(b, typ)
		b = native.AppendUint16(b, flags)
		b = native.AppendUint32(b, seq)
		b = native.AppendUint32(b, 0)
		return pad(append(b, body...))
	}
	enoent := int32(-2)
	errBody := native.AppendUint32(nil, uint32(enoent))
	dg := append(msg(msgCTGet, nlmFMulti, 5, []byte{2, 0, 0, 0, 1}), msg(nlmsgError, 0, 6, errBody)...)
	dg = append(dg, msg(nlmsgDone, nlmFMulti, 5, nil)...)
	var got []message
	if err := messages(dg, func(m message) error { got = append(got, m); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].seq != 5 || len(got[0].body) != 5 || got[1].typ != nlmsgError || got[2].typ != nlmsgDone {
		t.Fatalf("messages: %+v", got)
	}
	if e, err := got[1].errno(); e != 2 || err != nil {
		t.Errorf("errno %d, %v", e, err)
	}
	if e, err := got[2].errno(); e != 0 || err != nil {
		t.Errorf("done errno %d, %v", e, err)
	}
	if err := messages(dg[:20], func(message) error { return nil }); err == nil {
		t.Error("truncated datagram accepted")
	}
}

func FuzzParseFlow(f *testing.F) {
	f.Add(dumpBody(Flow{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 1), OrigDst: ap("198.18.0.1", 80),
		ReplySrc: ap("198.19.0.22", 8080), ReplyDst: ap("198.19.1.11", 1), ID: 9}))
	f.Add(dumpBody(Flow{Proto: vip.UDP, OrigSrc: ap("fd00::1", 1), OrigDst: ap("fd00::2", 2),
		ReplySrc: ap("fd00::3", 3), ReplyDst: ap("fd00::1", 1), Zone: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, err := parseFlow(b)
		if err == nil && (!fl.OrigSrc.IsValid() || !fl.ReplySrc.IsValid()) {
			t.Fatalf("parsed an incomplete flow %+v", fl)
		}
		_ = messages(b, func(m message) error { _, _ = m.errno(); return nil })
	})
}

// A delete request names the entry by its reply tuple, zone and id, and
// carries no original tuple (the kernel would look that one up instead).
func TestAppendDeleteRequest(t *testing.T) {
	for _, f := range []Flow{
		{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 40650), OrigDst: ap("198.18.0.1", 80),
			ReplySrc: ap("198.19.0.22", 8080), ReplyDst: ap("198.19.1.11", 40650), ID: 9},
		{Proto: vip.UDP, OrigSrc: ap("fd00:198:19::1:b", 5353), OrigDst: ap("fd00:198:18::1", 53),
			ReplySrc: ap("fd00:198:19::c", 31053), ReplyDst: ap("fd00:198:19::1:b", 5353), Zone: 7, ID: 42},
		{Proto: vip.TCP, OrigSrc: ap("198.19.1.11", 1), OrigDst: ap("198.18.0.1", 80),
			ReplySrc: ap("198.19.0.22", 80), ReplyDst: ap("198.19.1.11", 1)}, // no id: by tuple alone
	} {
		b := appendDeleteRequest(nil, f)
		if b[0] != family(f.ReplySrc.Addr()) {
			t.Errorf("%s: family %d", f, b[0])
		}
		var got Flow
		seen := map[uint16]int{}
		err := attrs(b[nfgenmsgLen:], func(typ uint16, data []byte) error {
			seen[typ]++
			switch typ {
			case ctaTupleReply:
				tu, err := parseTuple(data)
				got.Proto, got.ReplySrc, got.ReplyDst = tu.proto, tu.src, tu.dst
				return err
			case ctaZone:
				got.Zone = binary.BigEndian.Uint16(data)
			case ctaID:
				got.ID = binary.BigEndian.Uint32(data)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		want := Flow{Proto: f.Proto, ReplySrc: f.ReplySrc, ReplyDst: f.ReplyDst, Zone: f.Zone, ID: f.ID}
		if got != want || seen[ctaTupleOrig] != 0 || seen[ctaTupleReply] != 1 || (f.ID == 0) != (seen[ctaID] == 0) {
			t.Errorf("%s: request names %+v (attributes %v), want %+v", f, got, seen, want)
		}
	}
}
