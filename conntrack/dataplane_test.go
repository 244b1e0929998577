package conntrack

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/vip"
	"golang.org/x/sys/unix"
)

// Test pools: the VIP range of DESIGN section 6.
var (
	testPool4 = netip.MustParsePrefix("198.18.0.0/16")
	testPool6 = netip.MustParsePrefix("fd00:198:18::/64")
)

// stateOf computes the desired state of Marathon apps (JSON), keeping the
// VIP addresses of prev.
func stateOf(t testing.TB, appsJSON string, prev vip.State) vip.State {
	t.Helper()
	apps, problems, err := vip.ParseApps([]byte(appsJSON))
	if err != nil || len(problems) > 0 {
		t.Fatalf("parse apps: %v %v", err, problems)
	}
	s, problems := vip.Desired(apps, vip.Config{Pool4: testPool4, Pool6: testPool6, Previous: prev.Allocations})
	if len(problems) > 0 {
		t.Fatalf("desired: %v", problems)
	}
	return s
}

// dataPlane is l4lb's nat kernel adapter on a test namespace: rulesets go
// into the kernel as the daemon puts them there (element changes, never a
// rewrite of the table), so entries already in conntrack survive a change as
// they do in production. Routes are left to the test.
type dataPlane struct {
	k *nat.Kernel
}

func newDataPlane(t testing.TB, ns *netns.NS) *dataPlane {
	t.Helper()
	f, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	// The adapter redials on this fd: it stays open as long as the adapter.
	k, err := nat.New("", nat.WithNetNS(int(f.Fd())), nat.WithoutRoutes())
	if err != nil {
		f.Close()
		t.Fatalf("nat adapter in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() {
		k.Close()
		f.Close()
	})
	return &dataPlane{k: k}
}

// apply makes the namespace's table hold the ruleset of s.
func (d *dataPlane) apply(t testing.TB, s vip.State) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.k.Apply(c, nat.Compile(s, ""), false); err != nil {
		t.Fatalf("apply ruleset: %v", err)
	}
}

// toolFlows lists the conntrack table of ns with the conntrack tool (an
// independent witness), keeping the DNATed flows.
func toolFlows(t testing.TB, ns *netns.NS, args ...string) []Flow {
	t.Helper()
	var out []Flow
	fams := []string{"ipv4", "ipv6"}
	for _, a := range args {
		if ip, err := netip.ParseAddr(a); err == nil {
			fams = fams[:1]
			if ip.Is6() {
				fams = []string{"ipv6"}
			}
		}
	}
	for _, fam := range fams {
		text, err := ns.Run("conntrack", append([]string{"-L", "-f", fam, "-o", "id"}, args...)...)
		if err != nil {
			t.Fatalf("conntrack -L: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
			if line == "" {
				continue
			}
			f, err := parseToolLine(line)
			if err != nil {
				t.Fatalf("conntrack -L line %q: %v", line, err)
			}
			if f.DNATed() {
				out = append(out, f)
			}
		}
	}
	return out
}

// parseToolLine reads one line of `conntrack -L -o id`, e.g.
// "tcp 6 118 SYN_SENT src=A dst=B sport=1 dport=2 [UNREPLIED] src=C dst=A sport=3 dport=1 mark=0 use=1 id=7".
func parseToolLine(line string) (Flow, error) {
	fields := strings.Fields(line)
	for len(fields) > 0 && strings.HasPrefix(fields[0], "[") { // event type: [NEW]
		fields = fields[1:]
	}
	if len(fields) < 2 {
		return Flow{}, fmt.Errorf("short line")
	}
	proto, err := strconv.Atoi(fields[1])
	if err != nil {
		return Flow{}, fmt.Errorf("protocol %q", fields[1])
	}
	var addrs [2][2]netip.Addr
	var ports [2][2]uint16
	var f Flow
	f.Proto = vip.Proto(proto)
	seen := map[string]int{}
	for _, fld := range fields {
		k, v, ok := strings.Cut(fld, "=")
		if !ok {
			continue
		}
		dir := seen[k]
		seen[k]++
		switch k {
		case "src", "dst":
			a, err := netip.ParseAddr(v)
			if err != nil || dir > 1 {
				return f, fmt.Errorf("%s=%s", k, v)
			}
			addrs[dir][map[string]int{"src": 0, "dst": 1}[k]] = a
		case "sport", "dport":
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil || dir > 1 {
				return f, fmt.Errorf("%s=%s", k, v)
			}
			ports[dir][map[string]int{"sport": 0, "dport": 1}[k]] = uint16(p)
		case "id":
			id, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return f, fmt.Errorf("id=%s", v)
			}
			f.ID = uint32(id)
		case "zone":
			z, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return f, fmt.Errorf("zone=%s", v)
			}
			f.Zone = uint16(z)
		}
	}
	f.OrigSrc = netip.AddrPortFrom(addrs[0][0], ports[0][0])
	f.OrigDst = netip.AddrPortFrom(addrs[0][1], ports[0][1])
	f.ReplySrc = netip.AddrPortFrom(addrs[1][0], ports[1][0])
	f.ReplyDst = netip.AddrPortFrom(addrs[1][1], ports[1][1])
	return f, nil
}

// synth is a namespace whose conntrack table tests fill with DNATed flows
// quickly: raw packets from made-up clients to the VIPs of l4lb's ruleset,
// whose backends sit behind a veth with fixed neighbours, so that nothing
// answers and every packet leaves one entry (SYN_SENT or UNREPLIED).
type synth struct {
	ns       *netns.NS
	dp       *dataPlane
	state    vip.State
	apps     func(without ...netip.Addr) string // the apps, with the tasks on some backends left out
	vip4     map[vip.Proto]netip.AddrPort
	vip6     map[vip.Proto]netip.AddrPort
	backends []netip.Addr
	fd4, fd6 int
	next     uint32 // source of unique client address and port pairs
}

// newSynth builds the namespace with n4 IPv4 and n6 IPv6 backends behind a
// TCP and UDP VIP of each family.
func newSynth(t testing.TB, n4, n6 int) *synth {
	t.Helper()
	ns := netns.ForTest(t, "l4cs", "nft", "conntrack", "sysctl")
	sy := &synth{ns: ns, fd4: -1, fd6: -1}
	for i := range n4 {
		sy.backends = append(sy.backends, netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + i)}))
	}
	for i := range n6 {
		sy.backends = append(sy.backends, netip.MustParseAddr(fmt.Sprintf("fd00:198:19::%x", 0x100+i)))
	}
	sy.apps = func(without ...netip.Addr) string {
		var tasks4, tasks6 []string
		for i, a := range sy.backends {
			switch {
			case slices.Contains(without, a):
			case a.Is4():
				tasks4 = append(tasks4, fmt.Sprintf(`{"id": "b.%d", "host": "%s", "ports": [8080], "state": "TASK_RUNNING"}`, i, a))
			default:
				tasks6 = append(tasks6, fmt.Sprintf(`{"id": "b.%d", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "%s", "protocol": "IPv6"}]}`, i, a))
			}
		}
		return fmt.Sprintf(`{"apps": [
		  {"id": "/b4", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "b4:80"}}], "tasks": [%s]},
		  {"id": "/b6", "networks": [{"mode": "container", "name": "six"}],
		   "container": {"portMappings": [{"containerPort": 8080, "protocol": "udp,tcp", "labels": {"VIP_0": "b6:80"}}]},
		   "tasks": [%s]}]}`, strings.Join(tasks4, ","), strings.Join(tasks6, ","))
	}
	sy.state = stateOf(t, sy.apps(), vip.State{})
	sy.vip4, sy.vip6 = map[vip.Proto]netip.AddrPort{}, map[vip.Proto]netip.AddrPort{}
	for _, v := range sy.state.VIPs {
		if len(v.Backends) == 0 {
			continue
		}
		if v.Addr.Is4() {
			sy.vip4[v.Proto] = netip.AddrPortFrom(v.Addr, v.Port)
		} else {
			sy.vip6[v.Proto] = netip.AddrPortFrom(v.Addr, v.Port)
		}
	}
	sy.dp = newDataPlane(t, ns)
	sy.dp.apply(t, sy.state)
	run := func(args ...string) {
		t.Helper()
		if _, err := ns.Run(args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	run("ip", "link", "add", "b0", "type", "veth", "peer", "name", "b1")
	run("ip", "link", "set", "b0", "up")
	run("ip", "link", "set", "b1", "up")
	for _, p := range []string{"198.18.0.0/16", "198.19.0.0/24", "fd00:198:18::/64", "fd00:198:19::/64"} {
		run("ip", "route", "add", p, "dev", "b0")
	}
	for _, b := range sy.backends {
		run("ip", "neigh", "add", b.String(), "lladdr", "02:00:00:00:00:01", "dev", "b0", "nud", "permanent")
	}
	// The entries must outlive the test or benchmark.
	for _, k := range []string{"net.netfilter.nf_conntrack_tcp_timeout_syn_sent", "net.netfilter.nf_conntrack_udp_timeout"} {
		if err := ns.Sysctl(k, "1200"); err != nil {
			t.Fatal(err)
		}
	}
	err := ns.Do(func() error {
		var err error
		if sy.fd4, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return err
		}
		sy.fd6, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	t.Cleanup(func() {
		for _, fd := range []int{sy.fd4, sy.fd6} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	})
	if err != nil {
		t.Fatalf("raw sockets: %v", err)
	}
	return sy
}

// client returns the n-th made-up client address and port of a family.
func client(n uint32, six bool) netip.AddrPort {
	port := uint16(1024 + n%64000)
	host := byte(10 + n/64000)
	if six {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 0, 1, 0x98, 0, 0x19, 14: 2, 15: host}), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 2, host}), port)
}

// send sends n packets (TCP SYNs or UDP datagrams) to dst, each from a new
// client address and port, and returns the clients.
func (sy *synth) send(t testing.TB, proto vip.Proto, dst netip.AddrPort, n int) []netip.AddrPort {
	t.Helper()
	var clients []netip.AddrPort
	for range n {
		src := client(sy.next, dst.Addr().Is6())
		sy.next++
		clients = append(clients, src)
		sy.sendFrom(t, proto, src, dst)
	}
	return clients
}

// sendFrom sends one packet (a TCP SYN, a UDP datagram, or an ICMP or
// ICMPv6 echo request whose id is src's port) from src to dst.
func (sy *synth) sendFrom(t testing.TB, proto vip.Proto, src, dst netip.AddrPort) {
	t.Helper()
	var l4 []byte
	switch proto {
	case 1, 58:
		typ := byte(8) // echo request
		if proto == 58 {
			typ = 128
		}
		l4 = append([]byte{typ, 0, 0, 0}, binary.BigEndian.AppendUint16(nil, src.Port())...)
		l4 = append(l4, 0, 1) // sequence
	case vip.TCP:
		l4 = binary.BigEndian.AppendUint16(nil, src.Port())
		l4 = binary.BigEndian.AppendUint16(l4, dst.Port())
		l4 = append(l4, 0, 0, 0, 1, 0, 0, 0, 0, 5<<4, 0x02, 0x04, 0, 0, 0, 0, 0) // seq 1, SYN, window 1024
	default:
		l4 = binary.BigEndian.AppendUint16(nil, src.Port())
		l4 = binary.BigEndian.AppendUint16(l4, dst.Port())
		l4 = binary.BigEndian.AppendUint16(l4, 12)
		l4 = append(l4, 0, 0, 'p', 'i', 'n', 'g')
	}
	var pkt [80]byte
	var err error
	if dst.Addr().Is4() {
		p := append(pkt[:0], 0x45, 0, 0, byte(20+len(l4)), 0, 0, 0, 0, 64, byte(proto), 0, 0)
		p = append(p, src.Addr().AsSlice()...)
		p = append(p, dst.Addr().AsSlice()...)
		p = append(p, l4...)
		err = unix.Sendto(sy.fd4, p, 0, &unix.SockaddrInet4{Addr: dst.Addr().As4()})
	} else {
		p := append(pkt[:0], 0x60, 0, 0, 0, 0, byte(len(l4)), byte(proto), 64)
		p = append(p, src.Addr().AsSlice()...)
		p = append(p, dst.Addr().AsSlice()...)
		p = append(p, l4...)
		err = unix.Sendto(sy.fd6, p, 0, &unix.SockaddrInet6{Addr: dst.Addr().As16()})
	}
	if err != nil {
		t.Fatalf("send %s -> %s: %v", src, dst, err)
	}
}

// count returns the number of entries in the namespace's table.
func (sy *synth) count(t testing.TB) int {
	t.Helper()
	out, err := sy.ns.Run("conntrack", "-C")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("conntrack -C: %q", out)
	}
	return n
}

// kernelFor opens the conntrack table of ns.
func kernelFor(t testing.TB, ns *netns.NS, opts ...Option) *Kernel {
	t.Helper()
	f, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k, err := New(append([]Option{WithNetNS(int(f.Fd()))}, opts...)...)
	if err != nil {
		t.Fatalf("open conntrack in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}
