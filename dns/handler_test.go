package dns

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// recorder is a ResponseWriter that keeps what would go on the wire: the
// packed answer, and the message unpacked from it.
type recorder struct {
	tcp bool
	raw []byte
	msg *mdns.Msg
}

func (r *recorder) LocalAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}

func (r *recorder) RemoteAddr() net.Addr {
	if r.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

func (r *recorder) WriteMsg(m *mdns.Msg) error {
	raw, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = r.Write(raw)
	return err
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.msg != nil {
		return 0, fmt.Errorf("second answer")
	}
	r.raw = append([]byte(nil), b...)
	r.msg = new(mdns.Msg)
	return len(b), r.msg.Unpack(b)
}

func (r *recorder) Close() error          { return nil }
func (r *recorder) TsigStatus() error     { return nil }
func (r *recorder) TsigTimersOnly(bool)   {}
func (r *recorder) Hijack()               {}
func (r *recorder) Network() string       { return map[bool]string{false: "udp", true: "tcp"}[r.tcp] }
func (r *recorder) String() string        { return r.msg.String() }
func (r *recorder) answerTypes() []string { return rrTypes(r.msg.Answer) }

func rrTypes(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, mdns.TypeToString[rr.Header().Rrtype])
	}
	return out
}

// query is one question to ask.
type query struct {
	name   string
	qtype  uint16
	class  uint16 // IN when 0
	edns   uint16 // EDNS0 buffer size; no OPT record when 0
	do     bool
	ver    uint8 // EDNS version
	opcode int
	tcp    bool
}

func (q query) msg() *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(q.name, q.qtype)
	if q.class != 0 {
		m.Question[0].Qclass = q.class
	}
	m.Opcode = q.opcode
	if q.edns != 0 {
		m.SetEdns0(q.edns, q.do)
		m.IsEdns0().SetVersion(q.ver)
	}
	return m
}

// ask sends q through the handler and returns the recorded answer, checking
// what every answer must satisfy.
func ask(t *testing.T, h *Handler, q query) *recorder {
	t.Helper()
	req := q.msg()
	orig := req.Copy()
	w := &recorder{tcp: q.tcp}
	h.ServeDNS(w, req)
	if w.msg == nil {
		t.Fatalf("%s %s: no answer", q.name, mdns.TypeToString[q.qtype])
	}
	if req.String() != orig.String() {
		t.Errorf("%s: the handler changed the request", q.name)
	}
	if w.msg.Id != req.Id || !w.msg.Response {
		t.Errorf("%s: id %d response %v, want id %d response", q.name, w.msg.Id, w.msg.Response, req.Id)
	}
	if !q.tcp {
		limit := 512
		if q.edns != 0 {
			limit = min(max(int(q.edns), 512), maxUDPSize)
		}
		if len(w.raw) > limit {
			t.Errorf("%s: %d bytes over UDP, client takes %d", q.name, len(w.raw), limit)
		}
	}
	return w
}

// testHandler serves the zone of testdata/apps.json, answering as the name
// server at 198.19.0.1 and fd00:198:19::1.
func testHandler(t *testing.T, reg prometheus.Registerer) (*Handler, *Zone) {
	t.Helper()
	h, err := NewHandler(Config{Listen: []string{"198.19.0.1:53", "[fd00:198:19::1]:53", "0.0.0.0:5353"}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	z := Records(testState(t), "")
	h.Publish(z)
	return h, z
}

func TestHandler(t *testing.T) {
	s := testState(t)
	h, z := testHandler(t, nil)
	a := func(name string) string { return addrOf(t, s, name, false).String() }
	aaaa := func(name string) string { return addrOf(t, s, name, true).String() }
	const (
		apex = "l4lb.thisdcos.directory."
		soa  = "SOA"
	)
	for _, tc := range []struct {
		name   string
		q      query
		rcode  int
		aa     bool     // authoritative
		answer []string // "owner type data", in order
		ns     []string // types in the authority section
		extra  []string // "owner type data" in the additional section, OPT aside
		tc     bool
	}{
		{name: "A", q: query{name: nameMyservice + ".", qtype: mdns.TypeA},
			aa: true, answer: []string{nameMyservice + ". A " + a(nameMyservice)}},
		{name: "AAAA", q: query{name: nameSix + ".", qtype: mdns.TypeAAAA},
			aa: true, answer: []string{nameSix + ". AAAA " + aaaa(nameSix)}},
		{name: "A and AAAA of one name, A", q: query{name: nameDual + ".", qtype: mdns.TypeA},
			aa: true, answer: []string{nameDual + ". A " + a(nameDual)}},
		{name: "A and AAAA of one name, AAAA", q: query{name: nameDual + ".", qtype: mdns.TypeAAAA},
			aa: true, answer: []string{nameDual + ". AAAA " + aaaa(nameDual)}},
		{name: "ANY", q: query{name: nameDual + ".", qtype: mdns.TypeANY},
			aa: true, answer: []string{nameDual + ". A " + a(nameDual), nameDual + ". AAAA " + aaaa(nameDual)}},
		{name: "VIP without tasks", q: query{name: nameIdle + ".", qtype: mdns.TypeA},
			aa: true, answer: []string{nameIdle + ". A " + a(nameIdle)}},
		{name: "dotted name", q: query{name: nameHello + ".", qtype: mdns.TypeA},
			aa: true, answer: []string{nameHello + ". A " + a(nameHello)}},
		{name: "NODATA: AAAA of an IPv4 name", q: query{name: nameMyservice + ".", qtype: mdns.TypeAAAA},
			aa: true, ns: []string{soa}},
		{name: "NODATA: A of an IPv6 name", q: query{name: nameSix + ".", qtype: mdns.TypeA},
			aa: true, ns: []string{soa}},
		{name: "NODATA: MX", q: query{name: nameMyservice + ".", qtype: mdns.TypeMX},
			aa: true, ns: []string{soa}},
		{name: "NODATA: TXT", q: query{name: nameDual + ".", qtype: mdns.TypeTXT},
			aa: true, ns: []string{soa}},
		{name: "NODATA: SRV", q: query{name: nameMyservice + ".", qtype: mdns.TypeSRV},
			aa: true, ns: []string{soa}},
		{name: "NODATA: unknown type", q: query{name: nameMyservice + ".", qtype: 65280},
			aa: true, ns: []string{soa}},
		{name: "NODATA: empty non-terminal", q: query{name: "hello-world.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeA},
			aa: true, ns: []string{soa}},
		{name: "NODATA: framework label", q: query{name: "marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeA},
			aa: true, ns: []string{soa}},
		{name: "NODATA: A at the apex", q: query{name: apex, qtype: mdns.TypeA},
			aa: true, ns: []string{soa}},
		{name: "NXDOMAIN", q: query{name: "nosuch.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeA},
			rcode: mdns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "NXDOMAIN AAAA", q: query{name: "nosuch.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeAAAA},
			rcode: mdns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "NXDOMAIN below a VIP", q: query{name: "x." + nameMyservice + ".", qtype: mdns.TypeA},
			rcode: mdns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "NXDOMAIN other framework", q: query{name: "myservice.other.l4lb.thisdcos.directory.", qtype: mdns.TypeA},
			rcode: mdns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "mixed case keeps the question's spelling",
			q:  query{name: "MyService.MARATHON.l4lb.ThisDCOS.directory.", qtype: mdns.TypeA},
			aa: true, answer: []string{"MyService.MARATHON.l4lb.ThisDCOS.directory. A " + a(nameMyservice)}},
		{name: "mixed case NODATA", q: query{name: "SIX.marathon.L4LB.thisdcos.directory.", qtype: mdns.TypeA},
			aa: true, ns: []string{soa}},
		{name: "mixed case NXDOMAIN", q: query{name: "NoSuch.Marathon.L4LB.thisdcos.directory.", qtype: mdns.TypeA},
			rcode: mdns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "SOA", q: query{name: apex, qtype: mdns.TypeSOA},
			aa: true, answer: []string{fmt.Sprintf("%s SOA ns.%s hostmaster.%s %d 3600 600 86400 5", apex, apex, apex, z.Serial())}},
		{name: "SOA mixed case", q: query{name: "L4LB.thisdcos.Directory.", qtype: mdns.TypeSOA},
			aa: true, answer: []string{fmt.Sprintf("%s SOA ns.%s hostmaster.%s %d 3600 600 86400 5", apex, apex, apex, z.Serial())}},
		{name: "NS with glue", q: query{name: apex, qtype: mdns.TypeNS},
			aa: true, answer: []string{apex + " NS ns." + apex},
			extra: []string{"ns." + apex + " A 198.19.0.1", "ns." + apex + " AAAA fd00:198:19::1"}},
		{name: "ANY at the apex", q: query{name: apex, qtype: mdns.TypeANY},
			aa: true, answer: []string{fmt.Sprintf("%s SOA ns.%s hostmaster.%s %d 3600 600 86400 5", apex, apex, apex, z.Serial()), apex + " NS ns." + apex},
			extra: []string{"ns." + apex + " A 198.19.0.1", "ns." + apex + " AAAA fd00:198:19::1"}},
		{name: "name server address", q: query{name: "NS." + apex, qtype: mdns.TypeA},
			aa: true, answer: []string{"NS." + apex + " A 198.19.0.1"}},
		{name: "name server NODATA", q: query{name: "ns." + apex, qtype: mdns.TypeMX},
			aa: true, ns: []string{soa}},
		{name: "outside the zone without upstream", q: query{name: "example.org.", qtype: mdns.TypeA},
			rcode: mdns.RcodeRefused},
		{name: "parent of the zone", q: query{name: "thisdcos.directory.", qtype: mdns.TypeSOA},
			rcode: mdns.RcodeRefused},
		{name: "suffix that is not a subdomain", q: query{name: "xl4lb.thisdcos.directory.", qtype: mdns.TypeA},
			rcode: mdns.RcodeRefused},
		{name: "root", q: query{name: ".", qtype: mdns.TypeNS},
			rcode: mdns.RcodeRefused},
		{name: "class CHAOS", q: query{name: nameMyservice + ".", qtype: mdns.TypeTXT, class: mdns.ClassCHAOS},
			rcode: mdns.RcodeRefused},
		{name: "class ANY", q: query{name: nameMyservice + ".", qtype: mdns.TypeA, class: mdns.ClassANY},
			aa: true, answer: []string{nameMyservice + ". A " + a(nameMyservice)}},
		{name: "no zone transfer", q: query{name: apex, qtype: mdns.TypeAXFR, tcp: true},
			rcode: mdns.RcodeRefused},
		{name: "NOTIFY is not implemented", q: query{name: apex, qtype: mdns.TypeSOA, opcode: mdns.OpcodeNotify},
			rcode: mdns.RcodeNotImplemented},
		{name: "UPDATE is not implemented", q: query{name: apex, qtype: mdns.TypeSOA, opcode: mdns.OpcodeUpdate},
			rcode: mdns.RcodeNotImplemented},
		{name: "EDNS0", q: query{name: nameMyservice + ".", qtype: mdns.TypeA, edns: 4096},
			aa: true, answer: []string{nameMyservice + ". A " + a(nameMyservice)}},
		{name: "EDNS0 NXDOMAIN", q: query{name: "nosuch." + apex, qtype: mdns.TypeA, edns: 1232, do: true},
			rcode: mdns.RcodeNameError, aa: true, ns: []string{soa}},
		{name: "EDNS version 1", q: query{name: nameMyservice + ".", qtype: mdns.TypeA, edns: 1232, ver: 1},
			rcode: mdns.RcodeBadVers},
		{name: "TCP", q: query{name: nameMyservice + ".", qtype: mdns.TypeA, tcp: true},
			aa: true, answer: []string{nameMyservice + ". A " + a(nameMyservice)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := ask(t, h, tc.q)
			m := w.msg
			if m.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s\n%s", mdns.RcodeToString[m.Rcode], mdns.RcodeToString[tc.rcode], m)
			}
			if m.Authoritative != tc.aa {
				t.Errorf("AA %v, want %v", m.Authoritative, tc.aa)
			}
			if m.Truncated != tc.tc {
				t.Errorf("TC %v, want %v", m.Truncated, tc.tc)
			}
			if m.RecursionAvailable {
				t.Error("RA set without upstreams")
			}
			if got := rrStrings(m.Answer); !slices.Equal(got, tc.answer) {
				t.Errorf("answer:\n got %q\nwant %q", got, tc.answer)
			}
			if got := rrTypes(m.Ns); !slices.Equal(got, tc.ns) {
				t.Errorf("authority %q, want %q", got, tc.ns)
			}
			var extra []mdns.RR
			for _, rr := range m.Extra {
				if rr.Header().Rrtype != mdns.TypeOPT {
					extra = append(extra, rr)
				}
			}
			if got := rrStrings(extra); !slices.Equal(got, tc.extra) {
				t.Errorf("additional:\n got %q\nwant %q", got, tc.extra)
			}
			for _, rr := range append(append([]mdns.RR{}, m.Answer...), m.Ns...) {
				if rr.Header().Ttl != TTL {
					t.Errorf("TTL %d: %s", rr.Header().Ttl, rr)
				}
			}
			if len(m.Question) != 1 || m.Question[0].Name != tc.q.name || m.Question[0].Qtype != tc.q.qtype {
				t.Errorf("question %v, want %s %s", m.Question, tc.q.name, mdns.TypeToString[tc.q.qtype])
			}
			// EDNS0: an OPT record answers one, version 0, with our size
			// and the client's DO bit.
			opt := m.IsEdns0()
			switch {
			case tc.q.edns == 0 && opt != nil:
				t.Errorf("OPT record without EDNS0 in the query")
			case tc.q.edns != 0 && opt == nil:
				t.Errorf("no OPT record in the answer")
			case opt != nil:
				if opt.Version() != 0 || opt.UDPSize() != advertisedUDPSize || opt.Do() != tc.q.do {
					t.Errorf("OPT version %d size %d DO %v", opt.Version(), opt.UDPSize(), opt.Do())
				}
			}
		})
	}
}

// rrStrings renders records as "owner type data".
func rrStrings(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		h := rr.Header()
		data := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, h.Name+" "+mdns.TypeToString[h.Rrtype]+" "+strings.ReplaceAll(data, "\t", " "))
	}
	return out
}

// bigHandler serves one name with many IPv4 addresses: more than 512 bytes.
func bigHandler(t *testing.T) *Handler {
	t.Helper()
	h, err := NewHandler(Config{})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for i := range 60 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}))
	}
	h.Publish(build(h.origin, map[string][]netip.Addr{"big.marathon.l4lb.thisdcos.directory.": addrs}))
	return h
}

func TestTruncation(t *testing.T) {
	h := bigHandler(t)
	const name = "big.marathon.l4lb.thisdcos.directory."
	for _, tc := range []struct {
		name string
		q    query
		tc   bool
	}{
		{"UDP without EDNS0: 512 bytes", query{name: name, qtype: mdns.TypeA}, true},
		{"EDNS0 with a small buffer", query{name: name, qtype: mdns.TypeA, edns: 700}, true},
		{"EDNS0 below 512 counts as 512", query{name: name, qtype: mdns.TypeA, edns: 100}, true},
		{"EDNS0 with a large buffer", query{name: name, qtype: mdns.TypeA, edns: 1232}, false},
		{"TCP is never truncated", query{name: name, qtype: mdns.TypeA, tcp: true}, false},
		{"TCP with EDNS0 and a small buffer", query{name: name, qtype: mdns.TypeA, edns: 512, tcp: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := ask(t, h, tc.q) // checks the size limit
			if w.msg.Truncated != tc.tc {
				t.Errorf("TC %v, want %v (%d bytes, %d answers)", w.msg.Truncated, tc.tc, len(w.raw), len(w.msg.Answer))
			}
			if !tc.tc && len(w.msg.Answer) != 60 {
				t.Errorf("%d answers, want 60", len(w.msg.Answer))
			}
			if tc.tc && len(w.msg.Answer) >= 60 {
				t.Errorf("truncated with all %d answers", len(w.msg.Answer))
			}
			if tc.q.edns != 0 && w.msg.IsEdns0() == nil {
				t.Error("truncation dropped the OPT record")
			}
		})
	}
}

func TestFormErr(t *testing.T) {
	h, _ := testHandler(t, nil)
	for _, req := range []*mdns.Msg{
		{MsgHdr: mdns.MsgHdr{Id: 7}},
		{MsgHdr: mdns.MsgHdr{Id: 7}, Question: []mdns.Question{{Name: nameMyservice + ".", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}, {Name: nameSix + ".", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}}},
	} {
		w := &recorder{}
		h.ServeDNS(w, req)
		if w.msg == nil || w.msg.Rcode != mdns.RcodeFormatError || w.msg.Id != 7 {
			t.Errorf("%d questions: %v, want FORMERR", len(req.Question), w.msg)
		}
	}
}

// TestPublish checks that answers follow the published zone, also while
// queries run concurrently (run with -race).
func TestPublish(t *testing.T) {
	h, full := testHandler(t, nil)
	less := full.Intersect(Records(testState(t, "/myservice"), ""))
	q := query{name: nameMyservice + ".", qtype: mdns.TypeA}
	if w := ask(t, h, q); w.msg.Rcode != mdns.RcodeSuccess || len(w.msg.Answer) != 1 {
		t.Fatalf("before: %v", w.msg)
	}
	h.Publish(less)
	if w := ask(t, h, q); w.msg.Rcode != mdns.RcodeNameError {
		t.Fatalf("after withdrawing: %v", w.msg)
	}
	if h.Zone() != less {
		t.Error("Zone() is not the published zone")
	}
	h.Publish(nil)
	if w := ask(t, h, query{name: nameSix + ".", qtype: mdns.TypeAAAA}); w.msg.Rcode != mdns.RcodeNameError {
		t.Fatalf("after publishing nil: %v", w.msg)
	}

	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 500 {
				name := []string{nameMyservice, "MYSERVICE.marathon.l4lb.thisdcos.directory", nameDual}[(i+j)%3]
				w := &recorder{tcp: j%2 == 0}
				h.ServeDNS(w, query{name: name + ".", qtype: mdns.TypeANY, edns: 512}.msg())
				if w.msg == nil || (w.msg.Rcode != mdns.RcodeSuccess && w.msg.Rcode != mdns.RcodeNameError) {
					t.Errorf("concurrent query: %v", w.msg)
					return
				}
			}
		})
	}
	for i := range 200 {
		if i%2 == 0 {
			h.Publish(full)
		} else {
			h.Publish(less)
		}
	}
	wg.Wait()
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	h, z := testHandler(t, reg)
	for _, q := range []query{
		{name: nameMyservice + ".", qtype: mdns.TypeA},
		{name: nameMyservice + ".", qtype: mdns.TypeA},
		{name: "nosuch.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeAAAA},
		{name: "example.org.", qtype: mdns.TypeMX},
		{name: nameMyservice + ".", qtype: 65280},
	} {
		ask(t, h, q)
	}
	got := gather(t, reg)
	for _, want := range []string{
		`l4lb_dns_queries_total{qtype="A",rcode="NOERROR"} 2`,
		`l4lb_dns_queries_total{qtype="AAAA",rcode="NXDOMAIN"} 1`,
		`l4lb_dns_queries_total{qtype="MX",rcode="REFUSED"} 1`,
		`l4lb_dns_queries_total{qtype="other",rcode="NOERROR"} 1`,
		`l4lb_dns_request_duration_seconds_count 5`,
		fmt.Sprintf(`l4lb_dns_records %d`, z.Len()),
	} {
		if !slices.Contains(got, want) {
			t.Errorf("missing %s in\n%s", want, strings.Join(got, "\n"))
		}
	}
	// A second set of metrics on the same registry is an error, not a panic.
	if _, err := NewHandler(Config{Registerer: reg}); err == nil {
		t.Error("registering twice succeeded")
	}
}

// gather renders the registry's samples as `name{labels} value` lines.
func gather(t *testing.T, reg prometheus.Gatherer) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out = append(out, fmt.Sprintf("%s %g", name, m.GetCounter().GetValue()))
			case dto.MetricType_GAUGE:
				out = append(out, fmt.Sprintf("%s %g", name, m.GetGauge().GetValue()))
			case dto.MetricType_HISTOGRAM:
				out = append(out, fmt.Sprintf("%s_count %d", name, m.GetHistogram().GetSampleCount()))
			}
		}
	}
	return out
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		err string
	}{
		{Config{Listen: []string{"127.0.0.1:53", "::1", "[fd00:198:19::1]:5353", "198.19.0.1"}, Upstreams: []string{"198.19.0.2", "[fd00:198:19::2]:53"}}, ""},
		{Config{Listen: []string{"localhost:53"}}, "not IP"},
		{Config{Upstreams: []string{"198.19.0.2:x"}}, "not IP"},
		{Config{Upstreams: []string{"0.0.0.0:53"}}, "needs an address"},
		{Config{Listen: []string{"127.0.0.1:53"}, Upstreams: []string{"127.0.0.1"}}, "loop"},
		{Config{Listen: []string{"0.0.0.0:53"}, Upstreams: []string{"127.0.0.1:53"}}, "loop"},
		{Config{Listen: []string{"0.0.0.0:53"}, Upstreams: []string{"127.0.0.1:5353"}}, ""},
		{Config{Zone: "bad..zone"}, "not a domain name"},
		{Config{UpstreamTimeout: -1}, "negative"},
	} {
		_, err := NewHandler(tc.cfg)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: error %v, want %q", tc.cfg, err, tc.err)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without listen addresses succeeded")
	}
}

// BenchmarkServeDNS measures the handler alone, for answers from the zone
// (time and allocations per query; no sockets).
func BenchmarkServeDNS(b *testing.B) {
	h, err := NewHandler(Config{})
	if err != nil {
		b.Fatal(err)
	}
	h.Publish(Records(perfState(b, 1000), ""))
	for _, bc := range []struct {
		name string
		q    query
	}{
		{"A", query{name: "svc1.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeA}},
		{"A-edns", query{name: "svc1.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeA, edns: 1232}},
		{"NODATA", query{name: "svc1.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeAAAA}},
		{"NXDOMAIN", query{name: "nosuch.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeA}},
		{"A-mixed-case", query{name: "SVC1.marathon.l4lb.thisdcos.directory.", qtype: mdns.TypeA}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := bc.q.msg()
			w := &discard{}
			b.ReportAllocs()
			for b.Loop() {
				h.ServeDNS(w, req)
			}
		})
	}
}

// discard packs answers into a reused buffer, as the UDP writer does, and
// drops them.
type discard struct {
	recorder
	buf []byte
}

func (d *discard) WriteMsg(m *mdns.Msg) error {
	if d.buf == nil {
		d.buf = make([]byte, packBufSize)
	}
	_, err := m.PackBuffer(d.buf)
	return err
}
