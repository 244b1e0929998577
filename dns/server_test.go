package dns

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/internal/netns"
)

// startServer binds srv inside the namespace and runs it until the test
// ends; cleanup checks that Run returned nil promptly.
func startServer(t *testing.T, ns *netns.NS, srv *Server) {
	t.Helper()
	if err := ns.Do(srv.Listen); err != nil {
		t.Fatalf("listen in %s: %v", ns.Name, err)
	}
	select {
	case <-srv.Ready():
	default:
		t.Fatal("Ready not closed after Listen")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// exchange sends m from inside the namespace over net ("udp" or "tcp").
func exchange(ns *netns.NS, network string, m *mdns.Msg, addr netip.AddrPort) (*mdns.Msg, error) {
	var r *mdns.Msg
	err := ns.Do(func() error {
		c := mdns.Client{Net: network, Timeout: 3 * time.Second}
		var err error
		r, _, err = c.Exchange(m, addr.String())
		return err
	})
	return r, err
}

// sockets lists the sockets bound in the namespace as "udp 127.0.0.1:53".
func sockets(t *testing.T, ns *netns.NS) []string {
	t.Helper()
	out, err := ns.Run("ss", "-Hnlut")
	if err != nil {
		t.Fatal(err)
	}
	var socks []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 {
			socks = append(socks, f[0]+" "+f[4])
		}
	}
	return socks
}

func count(list []string, item string) int {
	n := 0
	for _, s := range list {
		if s == item {
			n++
		}
	}
	return n
}

// TestServer runs the server in a namespace: several SO_REUSEPORT UDP
// sockets and one TCP listener per address, answers over both, every
// socket released on shutdown.
func TestServer(t *testing.T) {
	ns := netns.ForTest(t, "l4dnss", "ss")
	reg := prometheus.NewPedanticRegistry()
	srv, err := New(Config{Listen: []string{"127.0.0.1:0", "[::1]:5353"}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	srv.udpSockets = 3
	srv.Publish(Records(testState(t), ""))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ns.Do(srv.Listen); err != nil {
		t.Fatal(err)
	}
	addrs := srv.Addrs()
	if len(addrs) != 2 || addrs[0].Port() == 0 || addrs[1] != netip.MustParseAddrPort("[::1]:5353") {
		t.Fatalf("addresses %v", addrs)
	}
	socks := sockets(t, ns)
	for _, a := range addrs {
		if n := count(socks, "udp "+a.String()); n != 3 {
			t.Errorf("%d UDP sockets on %s, want 3: %q", n, a, socks)
		}
		if n := count(socks, "tcp "+a.String()); n != 1 {
			t.Errorf("%d TCP sockets on %s, want 1: %q", n, a, socks)
		}
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	state := testState(t)
	for _, a := range addrs {
		for _, network := range []string{"udp", "tcp"} {
			// Many queries from fresh sockets, so that every UDP socket
			// of the group gets some.
			for i := range 20 {
				m := new(mdns.Msg)
				m.SetQuestion(nameDual+".", mdns.TypeAAAA)
				r, err := exchange(ns, network, m, a)
				if err != nil {
					t.Fatalf("%s %s: %v", network, a, err)
				}
				if len(r.Answer) != 1 || r.Answer[0].(*mdns.AAAA).AAAA.String() != addrOf(t, state, nameDual, true).String() {
					t.Fatalf("%s %s query %d: %v", network, a, i, r)
				}
			}
		}
	}
	if got := gather(t, reg); !strings.Contains(strings.Join(got, "\n"), `l4lb_dns_queries_total{qtype="AAAA",rcode="NOERROR"} 80`) {
		t.Errorf("queries not counted:\n%s", strings.Join(got, "\n"))
	}

	// Publishing while running changes the answers at once.
	srv.Publish(Records(testState(t, "/dual"), ""))
	m := new(mdns.Msg)
	m.SetQuestion(nameDual+".", mdns.TypeAAAA)
	if r, err := exchange(ns, "udp", m, addrs[0]); err != nil || r.Rcode != mdns.RcodeNameError {
		t.Errorf("after withdrawing: %v, %v", r, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if socks := sockets(t, ns); len(socks) != 0 {
		t.Errorf("sockets left after Run: %q", socks)
	}
	if err := srv.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

// TestServerBindErrors checks that a bind error comes back at once and
// leaves no socket behind.
func TestServerBindErrors(t *testing.T) {
	ns := netns.ForTest(t, "l4dnsb", "ss")
	// A port held by a socket without SO_REUSEPORT.
	var held net.PacketConn
	if err := ns.Do(func() error {
		var err error
		held, err = net.ListenPacket("udp", "127.0.0.1:5300")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for _, tc := range []struct {
		listen []string
		want   string
	}{
		{[]string{"127.0.0.1:0", "127.0.0.1:5300"}, "address already in use"},
		{[]string{"127.0.0.1:0", "198.19.99.99:53"}, "cannot assign requested address"},
	} {
		srv, err := New(Config{Listen: tc.listen})
		if err != nil {
			t.Fatal(err)
		}
		err = ns.Do(srv.Listen)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: Listen error %v, want %q", tc.listen, err, tc.want)
		}
		if socks := sockets(t, ns); len(socks) != 1 {
			t.Errorf("%v: sockets after a failed Listen: %q", tc.listen, socks)
		}
		select {
		case <-srv.Ready():
			t.Error("Ready closed after a failed Listen")
		default:
		}
	}
	// Run binds by itself and returns the error at once. It runs outside
	// the namespace here, where 198.19.99.99 is not local either.
	srv, err := New(Config{Listen: []string{"198.19.99.99:53"}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := srv.Run(context.Background()); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("Run: %v after %v, want a bind error at once", err, time.Since(start))
	}
}

// dig is one parsed answer of dig.
type dig struct {
	status    string   // NOERROR, NXDOMAIN, ...
	flags     []string // qr aa rd ra tc
	answer    []string // "name type data"
	authority []string
	server    string // "127.0.0.1#53(127.0.0.1) (UDP)"
	edns      string // "version: 0, flags:; udp: 1232"
}

var (
	reStatus = regexp.MustCompile(`status: ([A-Z]+),`)
	reFlags  = regexp.MustCompile(`;; flags: ([a-z ]*);`)
)

// runDig runs dig in the namespace and parses its output.
func runDig(t *testing.T, ns *netns.NS, args ...string) dig {
	t.Helper()
	out, err := ns.Run("dig", append([]string{"+tries=1", "+time=3"}, args...)...)
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	var d dig
	if m := reStatus.FindStringSubmatch(out); m != nil {
		d.status = m[1]
	}
	if m := reFlags.FindStringSubmatch(out); m != nil {
		d.flags = strings.Fields(m[1])
	}
	section := ""
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION:"):
			section = "answer"
		case strings.HasPrefix(line, ";; AUTHORITY SECTION:"):
			section = "authority"
		case strings.HasPrefix(line, ";; SERVER: "):
			d.server = strings.TrimPrefix(line, ";; SERVER: ")
		case strings.HasPrefix(line, "; EDNS: "):
			d.edns = strings.TrimPrefix(line, "; EDNS: ")
		case line == "" || strings.HasPrefix(line, ";"):
			section = ""
		case section != "":
			f := strings.Fields(line)
			if len(f) >= 5 {
				rr := f[0] + " " + f[3] + " " + strings.Join(f[4:], " ")
				if section == "answer" {
					d.answer = append(d.answer, rr)
				} else {
					d.authority = append(d.authority, f[0]+" "+f[3])
				}
			}
		}
	}
	if d.status == "" {
		t.Fatalf("dig %v: no answer:\n%s", args, out)
	}
	return d
}

func (d dig) has(flag string) bool {
	for _, f := range d.flags {
		if f == flag {
			return true
		}
	}
	return false
}

// TestDig runs the server in an agent namespace on 127.0.0.1:53 and on the
// agent's own addresses, and asks with dig from the agent and from a
// container.
func TestDig(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4dnsd", 0, 1, "dig")
	agent, ctr := topo.Agent, topo.Containers[0]
	upstream := serveUpstream(t, agent.NS, "127.0.0.1:5300", answering("198.19.0.100", 0))
	srv, err := New(Config{
		Listen:    []string{"127.0.0.1:53", topo.AgentCtr.Addr4.String(), "[" + topo.AgentCtr.Addr6.String() + "]:53"},
		Upstreams: []string{upstream},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.handler.fwd.dial = nsDial(agent.NS)
	state := testState(t)
	srv.Publish(Records(state, ""))
	startServer(t, agent.NS, srv)
	a, aaaa := addrOf(t, state, nameMyservice, false).String(), addrOf(t, state, nameDual, true).String()
	apex := "l4lb.thisdcos.directory."

	for _, tc := range []struct {
		name      string
		ns        *netns.NS
		args      []string
		status    string
		flags     string // flags that must be set
		answer    []string
		authority []string
		server    string // substring of dig's SERVER line
	}{
		{name: "A", ns: agent.NS, args: []string{"@127.0.0.1", nameMyservice, "A"},
			status: "NOERROR", flags: "qr aa", answer: []string{nameMyservice + ". A " + a}, server: "(UDP)"},
		{name: "AAAA", ns: agent.NS, args: []string{"@127.0.0.1", nameDual, "AAAA"},
			status: "NOERROR", flags: "qr aa", answer: []string{nameDual + ". AAAA " + aaaa}},
		{name: "SOA", ns: agent.NS, args: []string{"@127.0.0.1", apex, "SOA"},
			status: "NOERROR", flags: "qr aa", answer: []string{apex + " SOA ns." + apex + " hostmaster." + apex + " " +
				strconv.FormatUint(uint64(srv.handler.Zone().Serial()), 10) + " 3600 600 86400 5"}},
		{name: "NS", ns: agent.NS, args: []string{"@127.0.0.1", apex, "NS"},
			status: "NOERROR", flags: "qr aa", answer: []string{apex + " NS ns." + apex}},
		{name: "NXDOMAIN", ns: agent.NS, args: []string{"@127.0.0.1", "nosuch.marathon." + apex, "A"},
			status: "NXDOMAIN", flags: "qr aa", authority: []string{apex + " SOA"}},
		{name: "NODATA", ns: agent.NS, args: []string{"@127.0.0.1", nameMyservice, "AAAA"},
			status: "NOERROR", flags: "qr aa", authority: []string{apex + " SOA"}},
		{name: "NODATA the other way", ns: agent.NS, args: []string{"@127.0.0.1", nameSix, "A"},
			status: "NOERROR", flags: "qr aa", authority: []string{apex + " SOA"}},
		{name: "mixed case", ns: agent.NS, args: []string{"@127.0.0.1", "MyService.Marathon.L4LB.thisdcos.directory", "A"},
			status: "NOERROR", flags: "qr aa", answer: []string{"MyService.Marathon.L4LB.thisdcos.directory. A " + a}},
		{name: "TCP", ns: agent.NS, args: []string{"+tcp", "@127.0.0.1", nameMyservice, "A"},
			status: "NOERROR", flags: "qr aa", answer: []string{nameMyservice + ". A " + a}, server: "(TCP)"},
		{name: "forwarded", ns: agent.NS, args: []string{"@127.0.0.1", "www.example.org", "A"},
			status: "NOERROR", flags: "qr rd ra", answer: []string{"www.example.org. A 198.19.0.100"}},
		{name: "forwarded over TCP", ns: agent.NS, args: []string{"+tcp", "@127.0.0.1", "www.example.org", "A"},
			status: "NOERROR", flags: "qr rd ra", answer: []string{"www.example.org. A 198.19.0.100"}, server: "(TCP)"},
		{name: "from a container", ns: ctr.NS, args: []string{"@" + topo.AgentCtr.Addr4.String(), nameMyservice, "A"},
			status: "NOERROR", flags: "qr aa", answer: []string{nameMyservice + ". A " + a}},
		{name: "from a container over IPv6", ns: ctr.NS, args: []string{"@" + topo.AgentCtr.Addr6.String(), nameDual, "AAAA"},
			status: "NOERROR", flags: "qr aa", answer: []string{nameDual + ". AAAA " + aaaa}},
		{name: "from a container over TCP", ns: ctr.NS, args: []string{"+tcp", "@" + topo.AgentCtr.Addr4.String(), nameSix, "AAAA"},
			status: "NOERROR", flags: "qr aa", answer: []string{nameSix + ". AAAA " + addrOf(t, state, nameSix, true).String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := runDig(t, tc.ns, tc.args...)
			if d.status != tc.status {
				t.Errorf("status %s, want %s", d.status, tc.status)
			}
			for _, f := range strings.Fields(tc.flags) {
				if !d.has(f) {
					t.Errorf("flags %v, want %s", d.flags, f)
				}
			}
			if d.has("tc") {
				t.Error("truncated")
			}
			if strings.Join(d.answer, "\n") != strings.Join(tc.answer, "\n") {
				t.Errorf("answer:\n got %q\nwant %q", d.answer, tc.answer)
			}
			if tc.authority != nil && strings.Join(d.authority, "\n") != strings.Join(tc.authority, "\n") {
				t.Errorf("authority %q, want %q", d.authority, tc.authority)
			}
			if !strings.Contains(d.server, tc.server) {
				t.Errorf("server %q, want %q", d.server, tc.server)
			}
			// dig asks with EDNS0 (and a cookie): the answer carries OPT.
			if !strings.HasPrefix(d.edns, "version: 0") || !strings.Contains(d.edns, "udp: 1232") {
				t.Errorf("EDNS %q", d.edns)
			}
		})
	}
}

// TestServerWildcard listens on the wildcard addresses: each answer must
// leave from the address its query was sent to (clients use connected
// sockets and drop anything else), whichever address of the agent that is.
func TestServerWildcard(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4dnsw", 1, 1)
	srv, err := New(Config{Listen: []string{"0.0.0.0:5353", "[::]:5353"}})
	if err != nil {
		t.Fatal(err)
	}
	state := testState(t)
	srv.Publish(Records(state, ""))
	startServer(t, topo.Agent.NS, srv)
	want := addrOf(t, state, nameMyservice, false).String()
	for _, tc := range []struct {
		from *netns.NS
		to   netip.Addr
	}{
		{topo.Agent.NS, netip.MustParseAddr("127.0.0.1")},
		{topo.Agent.NS, netip.MustParseAddr("::1")},
		{topo.Containers[0].NS, topo.AgentCtr.Addr4},
		{topo.Containers[0].NS, topo.AgentCtr.Addr6},
		{topo.Backends[0].NS, topo.Agent.Addr4},
		{topo.Backends[0].NS, topo.Agent.Addr6},
		// Another address of the agent than the one on the client's link.
		{topo.Backends[0].NS, topo.AgentCtr.Addr4},
	} {
		for _, network := range []string{"udp", "tcp"} {
			m := new(mdns.Msg)
			m.SetQuestion(nameMyservice+".", mdns.TypeA)
			r, err := exchange(tc.from, network, m, netip.AddrPortFrom(tc.to, 5353))
			if err != nil {
				t.Errorf("%s to %s from %s: %v", network, tc.to, tc.from.Name, err)
				continue
			}
			if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != want {
				t.Errorf("%s to %s from %s: %v", network, tc.to, tc.from.Name, r)
			}
		}
	}
}
