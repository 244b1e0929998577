package explain

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/vip"
)

// This is the only file of the package that speaks netlink: it listens to
// the nftables trace group (what `nft monitor trace` reads) and decodes
// its events. google/nftables v0.3.0 does not decode trace events.

// TraceRules adds the probe's private rule to l4lb's table (nat.Kernel).
type TraceRules interface {
	AddTrace(ctx context.Context, p nat.TraceProbe) (remove func(context.Context) error, err error)
}

// probeSeq makes each probe chain's name unique within the process.
var probeSeq atomic.Uint32

// Probe sends one probe to key (a TCP connection, or one UDP datagram
// that waits for an answer; timeout bounds either)
// from a socket whose packets, and only those, a private rule in l4lb's
// table marks with nftrace; it returns the trace events the kernel
// reported for the probe's first packet. The rule is removed before Probe
// returns, also when ctx is cancelled (SIGINT).
func Probe(ctx context.Context, rules TraceRules, table string, key vip.Key, timeout time.Duration) (tr *Trace, err error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("open netfilter netlink socket: %w", err)
	}
	defer nl.Close()
	if err := nl.JoinGroup(unix.NFNLGRP_NFTRACE); err != nil {
		return nil, fmt.Errorf("join the nftables trace group (kernel without nftables tracing, or not CAP_NET_ADMIN?): %w", err)
	}

	chain := nat.TraceChainPrefix + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(int(probeSeq.Add(1)))
	dst := netip.AddrPortFrom(key.Addr, key.Port)
	network := "tcp"
	if key.Proto == vip.UDP {
		network = "udp"
	}
	if key.Addr.Is4() {
		network += "4"
	} else {
		network += "6"
	}
	var remove func(context.Context) error
	defer func() {
		if remove == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := remove(rctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	tr = &Trace{}
	d := net.Dialer{Timeout: timeout, Control: func(_, _ string, c syscall.RawConn) error {
		port, err := bindAny(c, key.Addr.Is6())
		if err != nil {
			return fmt.Errorf("bind the probe socket: %w", err)
		}
		p := nat.TraceProbe{Chain: chain, Proto: key.Proto, Dst: dst, SrcPort: port}
		tr.Src = "port " + strconv.Itoa(int(port))
		tr.Probe = "chain " + chain + " { type filter hook output priority raw; " + p.TraceText() + " }"
		tr.probeChain, tr.probeRule = chain, p.TraceText()
		remove, err = rules.AddTrace(ctx, p)
		return err
	}}
	conn, derr := d.DialContext(ctx, network, dst.String())
	switch {
	case derr == nil:
		tr.Src = conn.LocalAddr().String()
		tr.Result = exchange(conn, key.Proto, timeout)
		conn.Close()
	case remove == nil:
		return nil, fmt.Errorf("probe %s: %w", key, derr)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("probe %s: %w", key, ctx.Err())
	default:
		tr.Result = dialResult(derr)
	}

	events, err := readTrace(nl, table, chain, 300*time.Millisecond)
	if err != nil {
		return nil, err
	}
	if len(events) == 0 {
		return nil, fmt.Errorf("the kernel reported no trace event for the probe to %s (nftables tracing unsupported here?)", key)
	}
	tr.Events = events
	return tr, nil
}

// bindAny binds the socket to an ephemeral port and returns the port.
func bindAny(c syscall.RawConn, v6 bool) (uint16, error) {
	var port uint16
	var err error
	cerr := c.Control(func(fd uintptr) {
		var sa unix.Sockaddr = &unix.SockaddrInet4{}
		if v6 {
			sa = &unix.SockaddrInet6{}
		}
		if err = unix.Bind(int(fd), sa); err != nil {
			return
		}
		var got unix.Sockaddr
		if got, err = unix.Getsockname(int(fd)); err != nil {
			return
		}
		switch s := got.(type) {
		case *unix.SockaddrInet4:
			port = uint16(s.Port)
		case *unix.SockaddrInet6:
			port = uint16(s.Port)
		}
	})
	return port, errors.Join(cerr, err)
}

// exchange completes the probe on an open socket: TCP is connected;
// UDP sends one datagram and waits up to timeout for an answer.
func exchange(conn net.Conn, proto vip.Proto, timeout time.Duration) string {
	if proto == vip.TCP {
		return "connected to " + conn.RemoteAddr().String()
	}
	if _, err := conn.Write([]byte("l4lb explain probe\n")); err != nil {
		if errors.Is(err, unix.EPERM) {
			return "refused: the send failed with EPERM (rejected by a local nat chain)"
		}
		return "send failed: " + err.Error()
	}
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	switch {
	case err == nil:
		return fmt.Sprintf("sent one datagram; answered %q", string(buf[:n]))
	case errors.Is(err, unix.ECONNREFUSED):
		return "refused: ICMP port unreachable"
	}
	return fmt.Sprintf("sent one datagram; no answer within %v", timeout)
}

func dialResult(err error) string {
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		return "refused: connection reset"
	case errors.Is(err, unix.EPERM):
		return "refused: EPERM (rejected by a local chain)"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "no answer: timed out"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer: timed out"
	}
	return "failed: " + err.Error()
}

// readTrace reads trace events until the socket stays quiet for wait, and
// keeps those of the packet that went through the probe chain.
func readTrace(nl *netlink.Conn, table, chain string, wait time.Duration) ([]TraceEvent, error) {
	var all []TraceEvent
	for {
		if err := nl.SetReadDeadline(time.Now().Add(wait)); err != nil {
			return nil, err
		}
		msgs, err := nl.Receive()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return nil, fmt.Errorf("read trace events: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != traceMsgType {
				continue
			}
			ev, err := DecodeTraceEvent(m.Data)
			if err != nil {
				return nil, err
			}
			all = append(all, ev)
		}
		if len(all) > 10000 {
			break
		}
	}
	return ProbeEvents(all, table, chain), nil
}

// ProbeEvents keeps the events of the probe's first packet: those with the
// trace id of the first event in the probe chain, up to the next packet of
// the same socket (the probe chain sees every packet of the probe, the nat
// chains only the first of a connection). The kernel's "end of the rules,
// continue" events (a rule event without a handle) are left out: the
// policy or return event that follows says the same (it gets their
// packet headers).
func ProbeEvents(all []TraceEvent, table, chain string) []TraceEvent {
	var id uint32
	found := false
	for _, ev := range all {
		if ev.Table == table && ev.Chain == chain {
			id, found = ev.ID, true
			break
		}
	}
	if !found {
		return nil
	}
	var out []TraceEvent
	left := false // the packet has left the probe chain
	var carry TraceEvent
	for _, ev := range all {
		if ev.ID != id {
			continue
		}
		inProbe := ev.Table == table && ev.Chain == chain
		if inProbe && left {
			break
		}
		left = left || !inProbe
		if ev.Type == "rule" && ev.Handle == 0 {
			// The kernel dumps the headers once per chain, maybe here:
			// keep them for the event that follows.
			if ev.Packet != "" {
				carry = ev
			}
			continue
		}
		if ev.Packet == "" && carry.Packet != "" && carry.Chain == ev.Chain {
			ev.Packet, ev.dst = carry.Packet, carry.dst
		}
		carry = TraceEvent{}
		out = append(out, ev)
	}
	return out
}

var traceMsgType = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_TRACE)

// DecodeTraceEvent decodes the payload of an NFT_MSG_TRACE message: the
// nfgenmsg header, then NFTA_TRACE_* attributes.
func DecodeTraceEvent(b []byte) (TraceEvent, error) {
	var ev TraceEvent
	if len(b) < 4 {
		return ev, fmt.Errorf("trace event of %d bytes", len(b))
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return ev, fmt.Errorf("decode trace event: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	var nh, th []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_TRACE_TABLE:
			ev.Table = ad.String()
		case unix.NFTA_TRACE_CHAIN:
			ev.Chain = ad.String()
		case unix.NFTA_TRACE_RULE_HANDLE:
			ev.Handle = ad.Uint64()
		case unix.NFTA_TRACE_TYPE:
			switch ad.Uint32() {
			case unix.NFT_TRACETYPE_RULE:
				ev.Type = "rule"
			case unix.NFT_TRACETYPE_RETURN:
				ev.Type = "return"
			case unix.NFT_TRACETYPE_POLICY:
				ev.Type = "policy"
			default:
				ev.Type = "unspec"
			}
		case unix.NFTA_TRACE_VERDICT:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				code, target := int32(0), ""
				for nad.Next() {
					switch nad.Type() {
					case unix.NFTA_VERDICT_CODE:
						code = int32(nad.Uint32())
					case unix.NFTA_VERDICT_CHAIN:
						target = nad.String()
					}
				}
				ev.Verdict = verdictName(code, target)
				return nil
			})
		case unix.NFTA_TRACE_POLICY:
			ev.Verdict = verdictName(int32(ad.Uint32()), "")
		case unix.NFTA_TRACE_ID:
			ev.ID = ad.Uint32()
		case unix.NFTA_TRACE_NFPROTO:
			switch ad.Uint32() {
			case unix.NFPROTO_IPV4:
				ev.Family = "ip"
			case unix.NFPROTO_IPV6:
				ev.Family = "ip6"
			default:
				ev.Family = "inet"
			}
		case unix.NFTA_TRACE_NETWORK_HEADER:
			nh = ad.Bytes()
		case unix.NFTA_TRACE_TRANSPORT_HEADER:
			th = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return ev, fmt.Errorf("decode trace event: %w", err)
	}
	ev.Packet, ev.dst = packetOf(nh, th)
	return ev, nil
}

// verdictName names a verdict as nft does.
func verdictName(code int32, chain string) string {
	switch code {
	case unix.NFT_CONTINUE:
		return "continue"
	case unix.NFT_BREAK:
		return "break"
	case unix.NFT_JUMP:
		return "jump " + chain
	case unix.NFT_GOTO:
		return "goto " + chain
	case unix.NFT_RETURN:
		return "return"
	}
	// Netfilter verdicts (linux/netfilter.h), with a queue number in the
	// high bits for NF_QUEUE.
	switch code & 0xff {
	case 0:
		return "drop"
	case 1:
		return "accept"
	case 2:
		return "stolen"
	case 3:
		return "queue"
	case 4:
		return "repeat"
	}
	return fmt.Sprintf("verdict %d", code)
}

// packetOf describes the packet from the headers a trace event carries:
// "tcp 198.19.0.1:40000 -> 198.18.0.1:80", and its destination.
func packetOf(nh, th []byte) (string, netip.AddrPort) {
	var src, dst netip.Addr
	var proto byte
	switch {
	case len(nh) >= 20 && nh[0]>>4 == 4:
		src, dst, proto = netip.AddrFrom4([4]byte(nh[12:16])), netip.AddrFrom4([4]byte(nh[16:20])), nh[9]
	case len(nh) >= 40 && nh[0]>>4 == 6:
		src, dst, proto = netip.AddrFrom16([16]byte(nh[8:24])), netip.AddrFrom16([16]byte(nh[24:40])), nh[6]
	default:
		return "", netip.AddrPort{}
	}
	if len(th) < 4 || (proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP) {
		return fmt.Sprintf("%s %s -> %s", vip.Proto(proto), src, dst), netip.AddrPortFrom(dst, 0)
	}
	s := netip.AddrPortFrom(src, binary.BigEndian.Uint16(th[0:2]))
	d := netip.AddrPortFrom(dst, binary.BigEndian.Uint16(th[2:4]))
	return fmt.Sprintf("%s %s -> %s", vip.Proto(proto), s, d), d
}
