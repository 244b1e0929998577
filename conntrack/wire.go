package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/l4lb/l4lb/vip"
)

// The ctnetlink messages of the filtered dumps (filtered.go), encoded and
// decoded by hand: a request with the kernel's status and reply-tuple
// filters, which github.com/ti-mo/conntrack cannot send, and a reply
// decoded only as far as Stale and Delete need (tuples, id, zone), which is
// several times faster than a full decode and allocates nothing per flow.
// This file is pure.
// Numbers are from linux/netlink.h, linux/netfilter/nfnetlink.h,
// nfnetlink_conntrack.h and nf_conntrack_common.h.

// Netlink message header.
const (
	nlmsgHdrLen = 16

	nlmsgError = 2
	nlmsgDone  = 3

	nlmFRequest = 0x1
	nlmFMulti   = 0x2
	nlmFAck     = 0x4
	nlmFDump    = 0x300

	nlaFNested    = 0x8000
	nlaFByteorder = 0x4000
	nlaTypeMask   = ^uint16(nlaFNested | nlaFByteorder)
)

// nfnetlink and ctnetlink.
const (
	nfgenmsgLen = 4

	subsysCTNetlink = 1
	msgCTGet        = subsysCTNetlink<<8 | 1 // IPCTNL_MSG_CT_GET
	msgCTDelete     = subsysCTNetlink<<8 | 2 // IPCTNL_MSG_CT_DELETE

	familyUnspec = 0  // AF_UNSPEC: both families
	familyIPv4   = 2  // AF_INET
	familyIPv6   = 10 // AF_INET6

	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaID         = 12
	ctaZone       = 18
	ctaFilter     = 25
	ctaStatusMask = 26

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaFilterReplyFlags    = 2
	filterFlagIPSrc        = 1 << 0 // CTA_FILTER_F_CTA_IP_SRC
	filterFlagProtoNum     = 1 << 3 // CTA_FILTER_F_CTA_PROTO_NUM
	filterFlagProtoSrcPort = 1 << 4 // CTA_FILTER_F_CTA_PROTO_SRC_PORT

	ipsDstNAT = 1 << 5 // IPS_DST_NAT
)

var native = binary.NativeEndian

// appendAttr appends a netlink attribute with its padding.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = native.AppendUint16(b, uint16(4+len(data)))
	b = native.AppendUint16(b, typ)
	b = append(b, data...)
	return pad(b)
}

func pad(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nest appends a nested attribute whose content fill appends.
func nest(b []byte, typ uint16, fill func([]byte) []byte) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0)
	b = fill(b)
	native.PutUint16(b[start:], uint16(len(b)-start))
	native.PutUint16(b[start+2:], typ|nlaFNested)
	return b
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func nfgenmsg(b []byte, family uint8) []byte { return append(b, family, 0, 0, 0) }

// appendDumpRequest appends the body of a dump request: every DNATed flow of
// family (familyUnspec: both), or only those whose reply source address is
// replySrc when it is a valid IPv4 address, and then, when proto is set,
// only those of that protocol whose reply source port is port. Kernels that
// predate status or tuple filters in dumps ignore the attributes and return
// more, so the caller still selects in Go. The tuple filter is for IPv4
// only: the kernels measured here (6.18) invert the IPv6 address
// comparison of CTA_FILTER and return every other flow instead.
func appendDumpRequest(b []byte, fam uint8, replySrc netip.Addr, proto vip.Proto, port uint16) []byte {
	b = nfgenmsg(b, fam)
	if replySrc.Is4() && fam == familyIPv4 {
		flags := uint32(filterFlagIPSrc)
		b = nest(b, ctaTupleReply, func(b []byte) []byte {
			b = nest(b, ctaTupleIP, func(b []byte) []byte {
				return appendAttr(b, ctaIPv4Src, replySrc.AsSlice())
			})
			if proto == 0 {
				return b
			}
			flags |= filterFlagProtoNum | filterFlagProtoSrcPort
			return nest(b, ctaTupleProto, func(b []byte) []byte {
				b = appendAttr(b, ctaProtoNum, []byte{uint8(proto)})
				return appendAttr(b, ctaProtoSrcPort, be16(port))
			})
		})
		b = nest(b, ctaFilter, func(b []byte) []byte {
			return appendAttr(b, ctaFilterReplyFlags, native.AppendUint32(nil, flags))
		})
	}
	b = appendAttr(b, ctaStatus, be32(ipsDstNAT))
	return appendAttr(b, ctaStatusMask, be32(ipsDstNAT))
}

// appendDeleteRequest appends the body of a request that deletes the entry
// of f, named by its reply tuple (which holds the backend), its zone and,
// when f has one, its id: the kernel deletes the entry that holds the
// tuple only if its id is f's, and answers ENOENT otherwise. kernel.go says
// why the reply tuple. f must have complete tuples (checkTuples): a delete
// request without a tuple makes the kernel flush the whole table.
func appendDeleteRequest(b []byte, f Flow) []byte {
	src, dst := f.ReplySrc.Addr(), f.ReplyDst.Addr()
	fam, srcType, dstType := uint8(familyIPv4), uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if !src.Is4() {
		fam, srcType, dstType = familyIPv6, ctaIPv6Src, ctaIPv6Dst
	}
	b = nfgenmsg(b, fam)
	b = nest(b, ctaTupleReply, func(b []byte) []byte {
		b = nest(b, ctaTupleIP, func(b []byte) []byte {
			b = appendAttr(b, srcType, src.AsSlice())
			return appendAttr(b, dstType, dst.AsSlice())
		})
		return nest(b, ctaTupleProto, func(b []byte) []byte {
			b = appendAttr(b, ctaProtoNum, []byte{uint8(f.Proto)})
			b = appendAttr(b, ctaProtoSrcPort, be16(f.ReplySrc.Port()))
			return appendAttr(b, ctaProtoDstPort, be16(f.ReplyDst.Port()))
		})
	})
	if f.Zone != 0 {
		b = appendAttr(b, ctaZone, be16(f.Zone))
	}
	if f.ID != 0 {
		b = appendAttr(b, ctaID, be32(f.ID))
	}
	return b
}

// attrs walks the attributes in b, calling fn with each one's type (flags
// removed) and payload.
func attrs(b []byte, fn func(typ uint16, data []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("attribute header: %d bytes left", len(b))
		}
		l := int(native.Uint16(b))
		if l < 4 || l > len(b) {
			return fmt.Errorf("attribute length %d with %d bytes left", l, len(b))
		}
		if err := fn(native.Uint16(b[2:])&nlaTypeMask, b[4:l]); err != nil {
			return err
		}
		l = (l + 3) &^ 3
		if l > len(b) {
			l = len(b)
		}
		b = b[l:]
	}
	return nil
}

// tuple is one direction of a flow.
type tuple struct {
	proto    vip.Proto
	src, dst netip.AddrPort
}

func parseTuple(b []byte) (tuple, error) {
	var t tuple
	var src, dst netip.Addr
	var sport, dport uint16
	err := attrs(b, func(typ uint16, data []byte) error {
		switch typ {
		case ctaTupleIP:
			return attrs(data, func(typ uint16, data []byte) error {
				want := 4
				if typ == ctaIPv6Src || typ == ctaIPv6Dst {
					want = 16
				}
				if len(data) != want {
					return fmt.Errorf("address attribute %d: %d bytes", typ, len(data))
				}
				a, _ := netip.AddrFromSlice(data)
				switch typ {
				case ctaIPv4Src, ctaIPv6Src:
					src = a
				case ctaIPv4Dst, ctaIPv6Dst:
					dst = a
				}
				return nil
			})
		case ctaTupleProto:
			return attrs(data, func(typ uint16, data []byte) error {
				switch typ {
				case ctaProtoNum:
					if len(data) < 1 {
						return errors.New("empty protocol attribute")
					}
					t.proto = vip.Proto(data[0])
				case ctaProtoSrcPort, ctaProtoDstPort:
					if len(data) != 2 {
						return fmt.Errorf("port attribute %d: %d bytes", typ, len(data))
					}
					if typ == ctaProtoSrcPort {
						sport = binary.BigEndian.Uint16(data)
					} else {
						dport = binary.BigEndian.Uint16(data)
					}
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	if !src.IsValid() || !dst.IsValid() {
		return t, errors.New("tuple without addresses")
	}
	t.src, t.dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return t, nil
}

// parseFlow decodes the body (nfgenmsg and attributes) of a ctnetlink flow
// message.
func parseFlow(b []byte) (Flow, error) {
	var f Flow
	if len(b) < nfgenmsgLen {
		return f, fmt.Errorf("flow message of %d bytes", len(b))
	}
	var orig, reply bool
	err := attrs(b[nfgenmsgLen:], func(typ uint16, data []byte) error {
		switch typ {
		case ctaTupleOrig, ctaTupleReply:
			t, err := parseTuple(data)
			if err != nil {
				return fmt.Errorf("tuple %d: %w", typ, err)
			}
			if typ == ctaTupleOrig {
				orig = true
				f.Proto, f.OrigSrc, f.OrigDst = t.proto, t.src, t.dst
			} else {
				reply = true
				f.ReplySrc, f.ReplyDst = t.src, t.dst
			}
		case ctaID:
			if len(data) != 4 {
				return fmt.Errorf("id attribute: %d bytes", len(data))
			}
			f.ID = binary.BigEndian.Uint32(data)
		case ctaZone:
			if len(data) != 2 {
				return fmt.Errorf("zone attribute: %d bytes", len(data))
			}
			f.Zone = binary.BigEndian.Uint16(data)
		}
		return nil
	})
	if err != nil {
		return f, err
	}
	if !orig || !reply {
		return f, errors.New("flow message without both tuples")
	}
	return f, nil
}

// message is one netlink message of a datagram.
type message struct {
	typ, flags uint16
	seq        uint32
	body       []byte
}

// messages splits a datagram into netlink messages.
func messages(b []byte, fn func(m message) error) error {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return fmt.Errorf("netlink header: %d bytes left", len(b))
		}
		l := int(native.Uint32(b))
		if l < nlmsgHdrLen || l > len(b) {
			return fmt.Errorf("netlink message length %d with %d bytes left", l, len(b))
		}
		m := message{typ: native.Uint16(b[4:]), flags: native.Uint16(b[6:]), seq: native.Uint32(b[8:]), body: b[nlmsgHdrLen:l]}
		if err := fn(m); err != nil {
			return err
		}
		l = (l + 3) &^ 3
		if l > len(b) {
			l = len(b)
		}
		b = b[l:]
	}
	return nil
}

// errno returns the error number of an NLMSG_ERROR or NLMSG_DONE message:
// 0 for an acknowledgement or a clean end of dump, a positive errno
// otherwise.
func (m message) errno() (int32, error) {
	if len(m.body) < 4 {
		if m.typ == nlmsgDone {
			return 0, nil
		}
		return 0, fmt.Errorf("netlink error message of %d bytes", len(m.body))
	}
	return -int32(native.Uint32(m.body)), nil
}
