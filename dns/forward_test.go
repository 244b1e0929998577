package dns

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/internal/netns"
)

// nsDial dials from inside the namespace, for the forwarder of a handler
// that runs in the test process.
func nsDial(ns *netns.NS) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// serveUpstream runs an mdns server in the namespace on addr (UDP and TCP,
// the port of the UDP socket) until the test ends; it returns the address.
func serveUpstream(t *testing.T, ns *netns.NS, addr string, h mdns.Handler) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		return err
	})
	if err != nil {
		if pc != nil {
			pc.Close()
		}
		t.Fatalf("upstream on %s: %v", addr, err)
	}
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() {
			_ = srv.Shutdown()
			<-done
		})
	}
	return pc.LocalAddr().String()
}

// silentUpstream binds UDP and TCP on addr in the namespace and never
// answers: datagrams and connections wait in the kernel.
func silentUpstream(t *testing.T, ns *netns.NS, addr string) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		return err
	})
	if err != nil {
		t.Fatalf("silent upstream on %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close(); ln.Close() })
	return pc.LocalAddr().String()
}

// answering answers every A query with addr, and reports in a TXT record
// of the additional section what it received: transport, EDNS0 and name.
func answering(addr string, delay time.Duration) mdns.HandlerFunc {
	return func(w mdns.ResponseWriter, r *mdns.Msg) {
		time.Sleep(delay)
		m := new(mdns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		if strings.HasPrefix(strings.ToLower(q.Name), "nosuch.") {
			m.Rcode = mdns.RcodeNameError
		} else if q.Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{
				Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60},
				A:   net.ParseIP(addr),
			})
		}
		info := "net=" + w.RemoteAddr().Network()
		if opt := r.IsEdns0(); opt != nil {
			info += fmt.Sprintf(" edns=%d do=%v", opt.UDPSize(), opt.Do())
		}
		info += " name=" + q.Name
		m.Extra = append(m.Extra, &mdns.TXT{
			Hdr: mdns.RR_Header{Name: "info.", Rrtype: mdns.TypeTXT, Class: mdns.ClassINET},
			Txt: []string{info},
		})
		if opt := r.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), opt.Do())
		}
		_ = w.WriteMsg(m)
	}
}

// rcodeOnly answers every query with rcode.
func rcodeOnly(rcode int) mdns.HandlerFunc {
	return func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetRcode(r, rcode)
		_ = w.WriteMsg(m)
	}
}

// bigAnswer answers with 60 A records whatever the client takes, as a
// careless upstream might: the forwarder must truncate for UDP clients.
func bigAnswer(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	for i := range 60 {
		m.Answer = append(m.Answer, &mdns.A{
			Hdr: mdns.RR_Header{Name: r.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60},
			A:   net.IPv4(198, 19, 2, byte(i+1)),
		})
	}
	_ = w.WriteMsg(m)
}

func info(m *mdns.Msg) string {
	for _, rr := range m.Extra {
		if txt, ok := rr.(*mdns.TXT); ok && txt.Hdr.Name == "info." {
			return strings.Join(txt.Txt, " ")
		}
	}
	return ""
}

func answerA(m *mdns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// TestForward runs the forwarder against real mdns servers on 127.0.0.1 in
// a namespace: one answering, one slow, one failing (SERVFAIL), one
// refusing, one silent, and a port where nobody listens.
func TestForward(t *testing.T) {
	ns := netns.ForTest(t, "l4dnsfw")
	const timeout = 300 * time.Millisecond
	up := map[string]string{
		"answer":  serveUpstream(t, ns, "127.0.0.1:0", answering("198.19.0.100", 0)),
		"answer2": serveUpstream(t, ns, "127.0.0.1:0", answering("198.19.0.102", 0)),
		"slow":    serveUpstream(t, ns, "127.0.0.1:0", answering("198.19.0.101", 3*timeout)),
		"late":    serveUpstream(t, ns, "127.0.0.1:0", answering("198.19.0.103", timeout*3/2)),
		"fail":    serveUpstream(t, ns, "127.0.0.1:0", rcodeOnly(mdns.RcodeServerFailure)),
		"refuse":  serveUpstream(t, ns, "127.0.0.1:0", rcodeOnly(mdns.RcodeRefused)),
		"big":     serveUpstream(t, ns, "127.0.0.1:0", mdns.HandlerFunc(bigAnswer)),
		"silent":  silentUpstream(t, ns, "127.0.0.1:0"),
		"silent2": silentUpstream(t, ns, "127.0.0.1:0"),
		"closed":  "127.0.0.1:1",
	}
	names := map[string]string{}
	for k, v := range up {
		names[v] = k
	}

	for _, tc := range []struct {
		name      string
		upstreams []string
		q         query
		rcode     int
		a         []string // A records of the answer
		info      string   // what the upstream saw
		tc        bool
		failures  []string // upstream/reason counted
		minTime   time.Duration
		maxTime   time.Duration
	}{
		{name: "answer over UDP with the client's EDNS0",
			upstreams: []string{"answer"}, q: query{name: "Www.Example.ORG.", qtype: mdns.TypeA, edns: 1232, do: true},
			a: []string{"198.19.0.100"}, info: "net=udp edns=1232 do=true name=Www.Example.ORG."},
		{name: "answer over UDP without EDNS0",
			upstreams: []string{"answer"}, q: query{name: "example.org.", qtype: mdns.TypeA},
			a: []string{"198.19.0.100"}, info: "net=udp name=example.org."},
		{name: "TCP client, TCP upstream",
			upstreams: []string{"answer"}, q: query{name: "example.org.", qtype: mdns.TypeA, tcp: true},
			a: []string{"198.19.0.100"}, info: "net=tcp name=example.org."},
		{name: "NXDOMAIN is an answer",
			upstreams: []string{"answer", "answer2"}, q: query{name: "nosuch.example.org.", qtype: mdns.TypeA},
			rcode: mdns.RcodeNameError, info: "net=udp name=nosuch.example.org."},
		{name: "SERVFAIL, then the next one",
			upstreams: []string{"fail", "answer"}, q: query{name: "example.org.", qtype: mdns.TypeA},
			a: []string{"198.19.0.100"}, failures: []string{"fail/rcode"}, maxTime: timeout},
		{name: "REFUSED and a closed port, then the next one",
			upstreams: []string{"refuse", "closed", "answer"}, q: query{name: "example.org.", qtype: mdns.TypeA},
			a: []string{"198.19.0.100"}, failures: []string{"refuse/rcode", "closed/error"}, maxTime: timeout},
		{name: "closed port over TCP, then the next one",
			upstreams: []string{"closed", "answer"}, q: query{name: "example.org.", qtype: mdns.TypeA, tcp: true},
			a: []string{"198.19.0.100"}, info: "net=tcp name=example.org.", failures: []string{"closed/error"}, maxTime: timeout},
		{name: "slow one, the next answers after the per-try timeout",
			upstreams: []string{"slow", "answer"}, q: query{name: "example.org.", qtype: mdns.TypeA},
			a: []string{"198.19.0.100"}, failures: []string{"slow/timeout"}, minTime: timeout, maxTime: 2 * timeout},
		{name: "first answer wins: a late answer beats a silent second upstream",
			upstreams: []string{"late", "silent"}, q: query{name: "example.org.", qtype: mdns.TypeA},
			a: []string{"198.19.0.103"}, failures: []string{"late/timeout"}, minTime: timeout, maxTime: 2 * timeout},
		{name: "all fail at once: SERVFAIL at once",
			upstreams: []string{"fail", "closed", "refuse"}, q: query{name: "example.org.", qtype: mdns.TypeA},
			rcode: mdns.RcodeServerFailure, failures: []string{"fail/rcode", "closed/error", "refuse/rcode"}, maxTime: timeout},
		{name: "silent upstream: SERVFAIL after the timeout",
			upstreams: []string{"silent"}, q: query{name: "example.org.", qtype: mdns.TypeA},
			rcode: mdns.RcodeServerFailure, failures: []string{"silent/timeout"}, minTime: timeout, maxTime: 2 * timeout},
		{name: "two silent upstreams over TCP: SERVFAIL after both timeouts",
			upstreams: []string{"silent", "silent2"}, q: query{name: "example.org.", qtype: mdns.TypeA, tcp: true, edns: 1232},
			rcode: mdns.RcodeServerFailure, failures: []string{"silent/timeout", "silent2/timeout"}, minTime: 2 * timeout, maxTime: 3 * timeout},
		{name: "large answer truncated for a UDP client",
			upstreams: []string{"big"}, q: query{name: "big.example.org.", qtype: mdns.TypeA},
			tc: true},
		{name: "large answer whole over TCP",
			upstreams: []string{"big"}, q: query{name: "big.example.org.", qtype: mdns.TypeA, tcp: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			var ups []string
			for _, u := range tc.upstreams {
				ups = append(ups, up[u])
			}
			h, err := NewHandler(Config{Upstreams: ups, UpstreamTimeout: timeout, Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			h.fwd.dial = nsDial(ns)
			start := time.Now()
			w := ask(t, h, tc.q)
			took := time.Since(start)
			m := w.msg
			if m.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s\n%s", mdns.RcodeToString[m.Rcode], mdns.RcodeToString[tc.rcode], m)
			}
			if !m.RecursionAvailable {
				t.Error("RA not set")
			}
			if m.Truncated != tc.tc {
				t.Errorf("TC %v, want %v (%d answers)", m.Truncated, tc.tc, len(m.Answer))
			}
			if tc.a != nil && !slices.Equal(answerA(m), tc.a) {
				t.Errorf("answer %v, want %v", answerA(m), tc.a)
			}
			if strings.HasPrefix(tc.q.name, "big.") && !tc.tc && len(m.Answer) != 60 {
				t.Errorf("%d answers, want 60", len(m.Answer))
			}
			if tc.info != "" && info(m) != tc.info {
				t.Errorf("upstream saw %q, want %q", info(m), tc.info)
			}
			if tc.q.edns != 0 && m.IsEdns0() == nil {
				t.Error("no OPT record in the answer to an EDNS0 query")
			}
			if tc.minTime > 0 && took < tc.minTime {
				t.Errorf("answered after %v, before the per-try timeout %v", took, tc.minTime)
			}
			if tc.maxTime > 0 && took > tc.maxTime+500*time.Millisecond {
				t.Errorf("answered after %v, want about %v", took, tc.maxTime)
			}
			var failures []string
			for _, line := range gather(t, reg) {
				var u, reason string
				var n float64
				if _, err := fmt.Sscanf(strings.NewReplacer(`{reason="`, " ", `",upstream="`, " ", `"}`, " ").Replace(line),
					"l4lb_dns_forward_failures_total %s %s %g", &reason, &u, &n); err == nil {
					// Labels come sorted: reason before upstream.
					for range int(n) {
						failures = append(failures, names[u]+"/"+reason)
					}
				}
			}
			slices.Sort(failures)
			want := slices.Sorted(slices.Values(tc.failures))
			if !slices.Equal(failures, want) {
				t.Errorf("failures %q, want %q", failures, want)
			}
		})
	}
}

// TestForwardOverload checks the bound on queries being forwarded at once.
func TestForwardOverload(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	h, err := NewHandler(Config{Upstreams: []string{"198.19.0.2:53"}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for range maxForwards {
		h.fwd.sem <- struct{}{}
	}
	w := ask(t, h, query{name: "example.org.", qtype: mdns.TypeA})
	if w.msg.Rcode != mdns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", mdns.RcodeToString[w.msg.Rcode])
	}
	if got := gather(t, reg); !slices.Contains(got, `l4lb_dns_forward_failures_total{reason="overload",upstream=""} 1`) {
		t.Errorf("overload not counted:\n%s", strings.Join(got, "\n"))
	}
}

// TestForwardShutdown checks that a query being forwarded ends when the
// handler's base context does.
func TestForwardShutdown(t *testing.T) {
	ns := netns.ForTest(t, "l4dnsfs")
	silent := silentUpstream(t, ns, "127.0.0.1:0")
	c, err := Config{Upstreams: []string{silent}, UpstreamTimeout: time.Minute}.parse()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := newMetrics(nil)
	ctx, cancel := context.WithCancel(context.Background())
	h := newHandler(c, m, ctx)
	h.fwd.dial = nsDial(ns)
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	w := ask(t, h, query{name: "example.org.", qtype: mdns.TypeA})
	if w.msg.Rcode != mdns.RcodeServerFailure || time.Since(start) > 5*time.Second {
		t.Errorf("%s after %v, want SERVFAIL soon after the cancel", mdns.RcodeToString[w.msg.Rcode], time.Since(start))
	}
}
