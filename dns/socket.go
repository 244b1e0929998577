package dns

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// This file holds the socket options and control messages of the server,
// the package's only use of golang.org/x/sys/unix.

// oobSize fits one IPv4 or IPv6 packet-info control message.
var oobSize = max(unix.CmsgSpace(unix.SizeofInet4Pktinfo), unix.CmsgSpace(unix.SizeofInet6Pktinfo))

// reusePort sets SO_REUSEPORT: several sockets of this process share an
// address and the kernel spreads datagrams and connections over them; a
// restarted daemon can also bind while the old one drains.
func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set SO_REUSEPORT: %w", serr)
	}
	return nil
}

// setPktinfo makes the kernel report each datagram's destination address,
// for a socket bound to a wildcard address: the answer must leave from the
// address the query was sent to.
func setPktinfo(conn *net.UDPConn, v6 bool) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set packet info option: %w", serr)
	}
	return nil
}

// replyOOB turns the packet information received with a query into the
// control message that sends the answer from the query's destination
// address; nil when oob carries none.
func replyOOB(oob []byte) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			var info unix.Inet4Pktinfo
			copy(info.Spec_dst[:], m.Data[8:12]) // ipi_addr: the header's destination
			return unix.PktInfo4(&info)
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			var info unix.Inet6Pktinfo
			copy(info.Addr[:], m.Data[:16])
			if a := netip.AddrFrom16(info.Addr); a.IsLinkLocalUnicast() {
				// A link-local source needs its interface.
				info.Ifindex = binary.NativeEndian.Uint32(m.Data[16:20])
			}
			return unix.PktInfo6(&info)
		}
	}
	return nil
}

// truncated reports whether recvmsg flags say the datagram did not fit.
func truncated(flags int) bool { return flags&unix.MSG_TRUNC != 0 }

// udpRcvBuf is the receive buffer asked for each UDP socket: room for a
// burst of some 5,000 queries while the reading goroutine waits for a CPU,
// instead of drops that cost clients a retry after a second or more.
const udpRcvBuf = 4 << 20

// growRcvBuf enlarges the socket's receive buffer to udpRcvBuf: beyond
// net.core.rmem_max with CAP_NET_ADMIN (SO_RCVBUFFORCE), else as far as
// rmem_max allows.
func growRcvBuf(conn *net.UDPConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpRcvBuf)
	}); err != nil {
		return err
	}
	if serr == nil {
		return nil
	}
	return conn.SetReadBuffer(udpRcvBuf)
}
