package nat

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/l4lb/l4lb/vip"
)

// Byte layouts of set elements as the kernel stores them. In a
// concatenation every field is padded to a 4-byte register; addresses and
// ports are in network order, the numgen slot in host order (numgen writes
// its register in host order).

// hostOrder is the CPU's byte order, for values the kernel keeps in host
// order.
var hostOrder = binary.NativeEndian

func addrBytes(a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return b[:]
	}
	b := a.As16()
	return b[:]
}

// vipKeyBytes encodes addr . l4proto . dport.
func vipKeyBytes(k vip.Key) []byte {
	b := addrBytes(k.Addr)
	b = append(b, byte(k.Proto), 0, 0, 0)
	return append(b, byte(k.Port>>8), byte(k.Port), 0, 0)
}

// beKeyBytes encodes addr . l4proto . dport . slot.
func beKeyBytes(k vip.Key, slot int) []byte {
	return hostOrder.AppendUint32(vipKeyBytes(k), uint32(slot))
}

// beValBytes encodes the DNAT target addr . port.
func beValBytes(ap netip.AddrPort) []byte {
	b := addrBytes(ap.Addr())
	return append(b, byte(ap.Port()>>8), byte(ap.Port()), 0, 0)
}

func pairBytes(a netip.Addr) []byte { return append(addrBytes(a), addrBytes(a)...) }

func addrFrom(b []byte) (netip.Addr, bool) {
	switch len(b) {
	case 4:
		return netip.AddrFrom4([4]byte(b)), true
	case 16:
		return netip.AddrFrom16([16]byte(b)), true
	}
	return netip.Addr{}, false
}

func decodeVIPKey(b []byte, v6 bool) (vip.Key, error) {
	n := 4
	if v6 {
		n = 16
	}
	if len(b) != n+8 {
		return vip.Key{}, fmt.Errorf("VIP key of %d bytes, want %d", len(b), n+8)
	}
	a, _ := addrFrom(b[:n])
	return vip.Key{Addr: a, Proto: vip.Proto(b[n]), Port: binary.BigEndian.Uint16(b[n+4:])}, nil
}

func decodeBEKey(b []byte, v6 bool) (vip.Key, int, error) {
	if len(b) < 4 {
		return vip.Key{}, 0, fmt.Errorf("backend key of %d bytes", len(b))
	}
	k, err := decodeVIPKey(b[:len(b)-4], v6)
	if err != nil {
		return vip.Key{}, 0, err
	}
	return k, int(hostOrder.Uint32(b[len(b)-4:])), nil
}

func decodeBEVal(b []byte, v6 bool) (netip.AddrPort, error) {
	n := 4
	if v6 {
		n = 16
	}
	if len(b) != n+4 {
		return netip.AddrPort{}, fmt.Errorf("backend value of %d bytes, want %d", len(b), n+4)
	}
	a, _ := addrFrom(b[:n])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n:])), nil
}

func decodePair(b []byte) (netip.Addr, error) {
	if len(b) != 8 && len(b) != 32 {
		return netip.Addr{}, fmt.Errorf("address pair of %d bytes", len(b))
	}
	x, _ := addrFrom(b[:len(b)/2])
	y, _ := addrFrom(b[len(b)/2:])
	if x != y {
		return netip.Addr{}, fmt.Errorf("hairpin pair %s . %s is not an address with itself", x, y)
	}
	return x, nil
}

// Set userdata, as nft writes it (libnftnl's udata TLVs: one byte type, one
// byte length): byte orders, and for concatenations the typeof description
// that lets `nft list` print the set and read it back. Without it the slot
// of the backend maps would list as "integer", which nft cannot parse.
const (
	udataKeyByteOrder  = 0
	udataDataByteOrder = 1
	udataKeyTypeof     = 3
	udataDataTypeof    = 4
	udataDataInterval  = 6

	typeofExpr = 0 // NFTNL_UDATA_SET_TYPEOF_EXPR
	typeofData = 1 // NFTNL_UDATA_SET_TYPEOF_DATA

	exprPayload = 7  // nft's EXPR_PAYLOAD
	exprMeta    = 9  // EXPR_META
	exprConcat  = 13 // EXPR_CONCAT
	exprNumgen  = 23 // EXPR_NUMGEN

	protoDescTH  = 11 // nft's PROTO_DESC_TH
	protoDescIP  = 12 // PROTO_DESC_IP
	protoDescIP6 = 13 // PROTO_DESC_IP6
	ipDaddrField = 12 // IPHDR_DADDR
	ip6Daddr     = 9  // IP6HDR_DADDR
	thDport      = 2  // THDR_DPORT
	metaL4Proto  = 16 // NFT_META_L4PROTO
	numgenRandom = 1  // NFT_NG_RANDOM
	byteOrderBig = 2  // nft's BYTEORDER_BIG_ENDIAN
)

func tlv(t byte, payload ...[]byte) []byte {
	var p []byte
	for _, x := range payload {
		p = append(p, x...)
	}
	return append([]byte{t, byte(len(p))}, p...)
}

func u32(v uint32) []byte { return hostOrder.AppendUint32(nil, v) }

// typeofConcat describes a concatenation of the given sub-expressions.
func typeofConcat(elems ...[]byte) []byte {
	var list []byte
	for i, e := range elems {
		list = append(list, tlv(byte(i), e)...)
	}
	return append(tlv(typeofExpr, u32(exprConcat)), tlv(typeofData, list)...)
}

func typeofPayload(desc, field uint32) []byte {
	return append(tlv(0, u32(exprPayload)), tlv(1, tlv(0, u32(desc)), tlv(1, u32(field)))...)
}

func typeofMeta(key uint32) []byte {
	return append(tlv(0, u32(exprMeta)), tlv(1, tlv(0, u32(key)))...)
}

func typeofNumgen(mod uint32) []byte {
	return append(tlv(0, u32(exprNumgen)), tlv(1, tlv(0, u32(numgenRandom)), tlv(1, u32(mod)), tlv(2, u32(0)))...)
}

// setUserdata returns the userdata nft gives the set.
func setUserdata(d setDecl) []byte {
	daddr := typeofPayload(protoDescIP, ipDaddrField)
	if d.v6 {
		daddr = typeofPayload(protoDescIP6, ip6Daddr)
	}
	dport := typeofPayload(protoDescTH, thDport)
	switch d.kind {
	case kindBackends:
		return concat(tlv(udataKeyByteOrder, u32(0)), tlv(udataDataByteOrder, u32(0)),
			tlv(udataKeyTypeof, typeofConcat(daddr, typeofMeta(metaL4Proto), dport, typeofNumgen(2))),
			tlv(udataDataTypeof, typeofConcat(daddr, dport)),
			tlv(udataDataInterval, u32(0)))
	case kindVIPs, kindPairs:
		return concat(tlv(udataKeyByteOrder, u32(0)),
			tlv(udataKeyTypeof, tlv(typeofExpr, u32(exprConcat)), tlv(typeofData)))
	}
	return tlv(udataKeyByteOrder, u32(byteOrderBig))
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
