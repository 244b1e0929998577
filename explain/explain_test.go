package explain

import (
	"bytes"
	"encoding/binary"
	"flag"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/api"
	"github.com/l4lb/l4lb/vip"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestParseTarget(t *testing.T) {
	for _, c := range []struct {
		in, proto string
		want      Target
		bad       bool
	}{
		{in: "web.marathon.l4lb.thisdcos.directory:80", want: Target{Name: "web.marathon.l4lb.thisdcos.directory", Port: 80}},
		{in: "Web.:80", proto: "udp", want: Target{Name: "web", Port: 80, Proto: vip.UDP}},
		{in: "198.18.0.1:80", proto: "TCP", want: Target{Addr: netip.MustParseAddr("198.18.0.1"), Port: 80, Proto: vip.TCP}},
		{in: "[fd00:198:18::1]:53", want: Target{Addr: netip.MustParseAddr("fd00:198:18::1"), Port: 53}},
		{in: "fd00:198:18::1:53", want: Target{Addr: netip.MustParseAddr("fd00:198:18::1"), Port: 53}},
		{in: "::ffff:198.18.0.1:80", want: Target{Addr: netip.MustParseAddr("198.18.0.1"), Port: 80}},
		{in: "web", bad: true},
		{in: ":80", bad: true},
		{in: "web:0", bad: true},
		{in: "web:65536", bad: true},
		{in: "web:80", proto: "sctp", bad: true},
		{in: "fe80::1%eth0:80", bad: true},
		{in: "a/b:80", bad: true},
	} {
		got, err := ParseTarget(c.in, c.proto)
		if c.bad {
			if err == nil {
				t.Errorf("ParseTarget(%q, %q) = %+v, want an error", c.in, c.proto, got)
			}
			continue
		}
		c.want.Text = c.in
		if err != nil || got != c.want {
			t.Errorf("ParseTarget(%q, %q) = %+v, %v; want %+v", c.in, c.proto, got, err, c.want)
		}
	}
}

var (
	webIP  = netip.MustParseAddr("198.18.0.5")
	webIP6 = netip.MustParseAddr("fd00:198:18::5")
	be1    = netip.MustParseAddrPort("198.19.0.11:8080")
	be2    = netip.MustParseAddrPort("198.19.0.12:8080")
	be3    = netip.MustParseAddrPort("198.19.0.13:8080")
	be6    = netip.MustParseAddrPort("[fd00:198:19::b]:8080")
	ipVIP  = netip.MustParseAddr("198.18.255.7")
)

// daemon is what GET /v1/vips would say.
func daemon() []api.VIP {
	web := func(ip, proto string, be ...api.Backend) api.VIP {
		return api.VIP{VIP: "web.marathon.l4lb.thisdcos.directory:80", Name: "web.marathon.l4lb.thisdcos.directory",
			Protocol: proto, IP: ip, Port: 80, App: "/web", Apps: []string{"/web"}, Backend: be}
	}
	return []api.VIP{
		web(webIP.String(), "tcp",
			api.Backend{IP: be1.Addr().String(), Port: 8080, State: "active", Task: "web.1"},
			api.Backend{IP: be2.Addr().String(), Port: 8080, State: "active", Task: "web.2"},
			api.Backend{IP: be3.Addr().String(), Port: 8080, State: "draining", Task: "web.3"}),
		web(webIP6.String(), "tcp", api.Backend{IP: be6.Addr().String(), Port: 8080, State: "active", Task: "web.6"}),
		{VIP: "drain.marathon.l4lb.thisdcos.directory:81", Name: "drain.marathon.l4lb.thisdcos.directory", Protocol: "tcp",
			IP: "198.18.0.6", Port: 81, App: "/drain", Apps: []string{"/drain"},
			Backend: []api.Backend{{IP: be1.Addr().String(), Port: 8080, State: "draining", Task: "drain.1"},
				{IP: be2.Addr().String(), Port: 8080, State: "unhealthy", Task: "drain.2"}}},
		{VIP: "empty.marathon.l4lb.thisdcos.directory:82", Name: "empty.marathon.l4lb.thisdcos.directory", Protocol: "udp",
			IP: "198.18.0.7", Port: 82, App: "/empty", Apps: []string{"/empty"}, Backend: []api.Backend{}},
		{VIP: "web.kafka.l4lb.thisdcos.directory:80", Name: "web.kafka.l4lb.thisdcos.directory", Protocol: "tcp",
			IP: "198.18.0.8", Port: 80, Apps: []string{"kafka"}},
		{VIP: "198.18.255.7:83", Protocol: "tcp", IP: ipVIP.String(), Port: 83, App: "/ipvip", Apps: []string{"/ipvip"},
			Backend: []api.Backend{{IP: be2.Addr().String(), Port: 8080, State: "active", Task: "ipvip.1"}}},
	}
}

func key(a netip.Addr, p vip.Proto, port uint16) vip.Key {
	return vip.Key{Addr: a, Proto: p, Port: port}
}

// kernel is what l4lb's table would hold for daemon().
func kernel() *nat.Snapshot {
	dnat := func(a netip.Addr, n int) string { return nat.DNATRuleText(a, n) }
	slots := func(n int, bes ...netip.AddrPort) map[int]netip.AddrPort {
		m := map[int]netip.AddrPort{}
		for i, be := range bes {
			m[nat.SlotBase(n)+i] = be
		}
		return m
	}
	return &nat.Snapshot{
		Table: "l4lb", Exists: true,
		Pools:  []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("fd00:198:18::/64")},
		IPVIPs: []netip.Addr{ipVIP},
		VIPs: map[vip.Key]nat.SnapVIP{
			key(webIP, vip.TCP, 80):                             {Set: "vips4", Comment: "web.marathon.l4lb.thisdcos.directory:80/tcp /web"},
			key(webIP6, vip.TCP, 80):                            {Set: "vips6", Comment: "web.marathon.l4lb.thisdcos.directory:80/tcp /web"},
			key(netip.MustParseAddr("198.18.0.6"), vip.TCP, 81): {Set: "vips4", Comment: "drain.marathon.l4lb.thisdcos.directory:81/tcp /drain"},
			key(netip.MustParseAddr("198.18.0.7"), vip.UDP, 82): {Set: "vips4", Comment: "empty.marathon.l4lb.thisdcos.directory:82/udp /empty"},
			key(ipVIP, vip.TCP, 83):                             {Set: "vips4", Comment: "198.18.255.7:83/tcp /ipvip"},
		},
		Slots: map[vip.Key]map[int]netip.AddrPort{
			key(webIP, vip.TCP, 80):  slots(2, be1, be2),
			key(webIP6, vip.TCP, 80): slots(1, be6),
			key(ipVIP, vip.TCP, 83):  slots(2, be2, be3), // the daemon knows only be2: drift
		},
		Chains: map[string][]nat.SnapRule{
			"nat-output": {{Handle: 5, Text: "ip daddr . meta l4proto . th dport @vips4 goto lb"}},
			"lb": {{Handle: 6, Text: dnat(webIP, 1)}, {Handle: 7, Text: dnat(webIP, 2)},
				{Handle: 8, Text: dnat(webIP6, 1)}, {Handle: 9, Text: dnat(webIP6, 2)}, {Handle: 10, Text: "goto refuse"}},
			"refuse": {{Handle: 3, Text: "meta l4proto tcp reject with tcp reset"}, {Handle: 4, Text: "reject"}},
		},
		Hooks: map[string]string{"nat-output": "output", "nat-postrouting": "postrouting"},
	}
}

func flows() []conntrack.Flow {
	f := func(dst, reply string) conntrack.Flow {
		return conntrack.Flow{Proto: vip.TCP, OrigSrc: netip.MustParseAddrPort("198.19.0.1:40000"),
			OrigDst: netip.MustParseAddrPort(dst), ReplySrc: netip.MustParseAddrPort(reply)}
	}
	return []conntrack.Flow{
		f("198.18.0.5:80", "198.19.0.11:8080"), f("198.18.0.5:80", "198.19.0.11:8080"),
		f("198.18.0.5:80", "198.19.0.13:8080"),                                             // draining keeps its flow
		f("198.18.255.7:83", "198.19.0.11:8080"),                                           // another VIP
		f("198.18.0.5:81", "198.19.0.12:8080"),                                             // another port
		{Proto: vip.UDP, OrigDst: netip.MustParseAddrPort("198.18.0.5:80"), ReplySrc: be2}, // another protocol
	}
}

func decide(t *testing.T, target, proto string) Report {
	t.Helper()
	tg, err := ParseTarget(target, proto)
	if err != nil {
		t.Fatal(err)
	}
	return Decide(Inputs{Target: tg, VIPs: daemon(), Kernel: kernel(), Flows: flows()})
}

func TestDecide(t *testing.T) {
	for _, c := range []struct {
		target, proto string
		verdict       Verdict
		entries       int
		reason        string
	}{
		{"web.marathon.l4lb.thisdcos.directory:80", "", Served, 2, ""},
		{"web.marathon:80", "tcp", Served, 2, ""},
		{"198.18.0.5:80", "tcp", Served, 1, ""},
		{"[fd00:198:18::5]:80", "", Served, 1, ""},
		{"web:80", "", Unknown, 0, "web is ambiguous: web.kafka.l4lb.thisdcos.directory, web.marathon.l4lb.thisdcos.directory"},
		{"web.marathon.l4lb.thisdcos.directory:80", "udp", Refused, 2, "port 80/udp is not a VIP port of 198.18.0.5 (its VIP ports: 80/tcp)"},
		{"drain.marathon.l4lb.thisdcos.directory:81", "", Refused, 1, "no active backend: 1 draining, 1 unhealthy"},
		{"empty.marathon.l4lb.thisdcos.directory:82", "", Refused, 1, "no active backend: the VIP has no backend"},
		{"web.marathon.l4lb.thisdcos.directory:9999", "tcp", Refused, 2, "port 9999/tcp is not a VIP port of 198.18.0.5 (its VIP ports: 80/tcp)"},
		{"198.18.0.5:9999", "", Refused, 2, "port 9999/tcp is not a VIP port of 198.18.0.5 (its VIP ports: 80/tcp)"},
		{"198.18.255.7:84", "tcp", Refused, 1, "port 84/tcp is not a VIP port of 198.18.255.7 (its VIP ports: 83/tcp)"},
		{"198.18.9.9:80", "tcp", Refused, 1, "no VIP has the address 198.18.9.9; l4lb refuses every port of its VIP addresses and pools"},
		{"198.18.255.7:83", "", Served, 1, ""},
		{"nope:80", "", Unknown, 0, "no VIP is named nope"},
		{"198.19.0.11:8080", "", Unknown, 0, "198.19.0.11 is not a VIP address: l4lb leaves its traffic alone"},
	} {
		r := decide(t, c.target, c.proto)
		if r.Verdict != c.verdict || len(r.Entries) != c.entries || (c.reason != "" && r.Reason != c.reason) {
			t.Errorf("%s --proto %q: %s, %d entries, %q; want %s, %d, %q", c.target, c.proto, r.Verdict, len(r.Entries), r.Reason,
				c.verdict, c.entries, c.reason)
		}
		if code := r.Verdict.ExitCode(); code != map[Verdict]int{Served: 0, Refused: 1, Unknown: 2}[c.verdict] {
			t.Errorf("exit code %d for %s", code, r.Verdict)
		}
	}
}

// An address whose IP VIP label was refused is left alone, and explain
// says which label asked for it and why it was refused.
func TestDecideRefusedIPVIP(t *testing.T) {
	tg, err := ParseTarget("127.0.0.1:22", "")
	if err != nil {
		t.Fatal(err)
	}
	r := Decide(Inputs{Target: tg, VIPs: daemon(), Kernel: kernel(), Problems: []vip.Problem{
		{App: "/hijack", Label: "VIP_0", Refused: "127.0.0.1", Reason: "IP VIP address 127.0.0.1 refused: loopback address"},
		{App: "/other", Label: "VIP_1", Refused: "169.254.169.254", Reason: "IP VIP address 169.254.169.254 refused: link-local address"},
		{App: "/bad", Label: "VIP_2", Reason: "port out of range"},
	}})
	want := "127.0.0.1 is not a VIP address: l4lb leaves its traffic alone; app /hijack label VIP_0: IP VIP address 127.0.0.1 refused: loopback address"
	if r.Verdict != Unknown || len(r.Entries) != 0 || r.Reason != want {
		t.Errorf("%s, %d entries, %q; want unknown, 0, %q", r.Verdict, len(r.Entries), r.Reason, want)
	}
}

func TestDecideDetails(t *testing.T) {
	r := decide(t, "198.18.0.5:80", "tcp")
	e := r.Entries[0]
	if e.Element == nil || e.Element.Text != "198.18.0.5 . tcp . 80" || e.Element.Set != "vips4" || e.Chain != "lb" || e.Count != 2 ||
		len(e.Rules) != 1 || e.Rules[0] != "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 offset 1 map @be4" {
		t.Fatalf("entry %+v", e)
	}
	want := []struct {
		slot      int // -1: none
		state     string
		conntrack int
	}{{1, "active", 2}, {2, "active", 0}, {-1, "draining", 1}}
	for i, w := range want {
		b := e.Backends[i]
		if (w.slot < 0) != (b.Slot == nil) || (b.Slot != nil && (*b.Slot != w.slot || b.Map != "be4")) ||
			b.State != w.state || b.Conntrack != w.conntrack {
			t.Errorf("backend %d = %+v, want %+v", i, b, w)
		}
	}
	if len(e.Warnings) != 0 {
		t.Errorf("warnings %v", e.Warnings)
	}

	// The kernel has a slot the daemon does not know: shown and warned.
	r = decide(t, "198.18.255.7:83", "")
	e = r.Entries[0]
	if len(e.Backends) != 2 || e.Backends[1].State != "kernel only" || len(e.Warnings) != 2 {
		t.Errorf("drift: backends %+v warnings %q", e.Backends, e.Warnings)
	}

	// Chain lb lacks the rule for the VIP's count: refused, and said why.
	k := kernel()
	k.Chains["lb"] = slices.DeleteFunc(k.Chains["lb"], func(r nat.SnapRule) bool { return r.Handle == 7 })
	tg, _ := ParseTarget("198.18.0.5:80", "tcp")
	r = Decide(Inputs{Target: tg, VIPs: daemon(), Kernel: k})
	if e := r.Entries[0]; r.Verdict != Refused || e.Reason != "chain lb has no rule for 2 backends: new connections fall through to refuse" ||
		len(e.Rules) != 4 || len(e.Warnings) != 1 {
		t.Errorf("lb rule missing: %+v", r)
	}
	// A slot outside the VIP's range (left by a change that failed
	// halfway): shown, and warned about.
	k = kernel()
	k.Slots[key(webIP, vip.TCP, 80)] = map[int]netip.AddrPort{1: be1, 2: be2, 3: be3}
	r = Decide(Inputs{Target: tg, VIPs: daemon(), Kernel: k})
	if e := r.Entries[0]; r.Verdict != Served || e.Count != 2 || len(e.Warnings) != 1 || !strings.Contains(e.Warnings[0], "slot 3 of be4 holds 198.19.0.13:8080, outside the slots of 2 backends (1..2)") ||
		e.Backends[2].Slot == nil || *e.Backends[2].Slot != 3 {
		t.Errorf("stray slot: %+v", r)
	}
	// A hole in the VIP's range.
	k.Slots[key(webIP, vip.TCP, 80)] = map[int]netip.AddrPort{1: be1}
	r = Decide(Inputs{Target: tg, VIPs: daemon(), Kernel: k})
	if e := r.Entries[0]; r.Verdict != Served || e.Count != 2 || len(e.Warnings) != 2 ||
		e.Warnings[1] != "the rule for 2 picks among slots 1..2 but 1 of them are empty in be4: those picks are refused" {
		t.Errorf("hole: %+v", r)
	}

	// The daemon lists a VIP the kernel lacks.
	k = kernel()
	delete(k.VIPs, key(webIP, vip.TCP, 80))
	r = Decide(Inputs{Target: tg, VIPs: daemon(), Kernel: k})
	if r.Verdict != Refused || len(r.Entries[0].Warnings) == 0 || r.Entries[0].Refusal != "ip daddr 198.18.0.0/16 goto refuse" {
		t.Errorf("VIP missing from the kernel: %+v", r)
	}
	// No table at all: nothing refuses, so nothing is known.
	r = Decide(Inputs{Target: tg, VIPs: daemon(), Kernel: &nat.Snapshot{Table: "l4lb"}})
	if r.Verdict != Unknown {
		t.Errorf("without a table: %+v", r)
	}
}

// TestFormatGolden prints reports with traces; run with -update to
// rewrite testdata/*.txt after a deliberate change.
func TestFormatGolden(t *testing.T) {
	served := decide(t, "web.marathon.l4lb.thisdcos.directory:80", "tcp")
	tr := &Trace{Probe: "chain explain-trace-1-1 { ... }", Src: "198.19.0.1:40000", Result: "connected to 198.18.0.5:80",
		probeChain: "explain-trace-1-1", probeRule: "ip daddr 198.18.0.5 tcp dport 80 tcp sport 40000 meta nftrace set 1"}
	tr.Events = []TraceEvent{
		{ID: 1, Type: "rule", Table: "l4lb", Chain: "explain-trace-1-1", Handle: 20, Verdict: "continue", Packet: "tcp 198.19.0.1:40000 -> 198.18.0.5:80",
			dst: netip.MustParseAddrPort("198.18.0.5:80")},
		{ID: 1, Type: "policy", Table: "l4lb", Chain: "explain-trace-1-1", Verdict: "accept"},
		{ID: 1, Type: "rule", Table: "l4lb", Chain: "nat-output", Handle: 5, Verdict: "goto lb"},
		{ID: 1, Type: "rule", Table: "l4lb", Chain: "lb", Handle: 7, Verdict: "accept"},
		{ID: 1, Type: "policy", Table: "l4lb", Chain: "nat-postrouting", Verdict: "accept", Packet: "tcp 198.19.0.1:40000 -> 198.19.0.12:8080",
			dst: netip.MustParseAddrPort("198.19.0.12:8080")},
	}
	tr.Annotate(kernel(), "l4lb", netip.MustParseAddrPort("198.18.0.5:80"))
	if tr.DNAT != "198.19.0.12:8080" || tr.Events[3].Hook != "output" || tr.Events[4].Hook != "postrouting" ||
		tr.Events[2].Rule != "ip daddr . meta l4proto . th dport @vips4 goto lb" ||
		tr.Events[3].Rule != "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 offset 1 map @be4" || tr.Events[0].Rule != tr.probeRule {
		t.Errorf("annotated trace %+v", tr)
	}
	served.Entries[0].Trace = tr
	for name, r := range map[string]Report{
		"served":  served,
		"drain":   decide(t, "drain.marathon.l4lb.thisdcos.directory:81", ""),
		"port":    decide(t, "198.18.255.7:84", "tcp"),
		"unknown": decide(t, "nope:80", ""),
	} {
		var b bytes.Buffer
		if err := r.Write(&b); err != nil {
			t.Fatal(err)
		}
		golden := "testdata/" + name + ".txt"
		if *update {
			if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if b.String() != string(want) {
			t.Errorf("%s:\n%s\nwant:\n%s", name, b.String(), want)
		}
	}
}

// traceMsg encodes a trace event as the kernel sends it.
func traceMsg(t *testing.T, id uint32, typ uint32, chain string, handle uint64, code int32, target string, nh, th []byte) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TRACE_TABLE, "l4lb")
	ae.String(unix.NFTA_TRACE_CHAIN, chain)
	if handle != 0 {
		ae.Uint64(unix.NFTA_TRACE_RULE_HANDLE, handle)
	}
	ae.Uint32(unix.NFTA_TRACE_TYPE, typ)
	if typ == unix.NFT_TRACETYPE_POLICY {
		ae.Uint32(unix.NFTA_TRACE_POLICY, uint32(code))
	} else {
		ae.Nested(unix.NFTA_TRACE_VERDICT, func(nae *netlink.AttributeEncoder) error {
			nae.Uint32(unix.NFTA_VERDICT_CODE, uint32(code))
			if target != "" {
				nae.String(unix.NFTA_VERDICT_CHAIN, target)
			}
			return nil
		})
	}
	ae.Uint32(unix.NFTA_TRACE_ID, id)
	ae.Uint32(unix.NFTA_TRACE_NFPROTO, unix.NFPROTO_IPV4)
	if nh != nil {
		ae.Bytes(unix.NFTA_TRACE_NETWORK_HEADER, nh)
		ae.Bytes(unix.NFTA_TRACE_TRANSPORT_HEADER, th)
	}
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{unix.NFPROTO_INET, 0, 0, 0}, b...)
}

func ipv4Header(src, dst string) []byte {
	h := make([]byte, 20)
	h[0], h[9] = 0x45, unix.IPPROTO_TCP
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return h
}

func ports(s, d uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, s), d)
}

func TestDecodeTraceEvents(t *testing.T) {
	const probe = "explain-trace-1-1"
	raw := [][]byte{
		traceMsg(t, 9, unix.NFT_TRACETYPE_RULE, "other", 1, -1, "", nil, nil), // another packet
		traceMsg(t, 7, unix.NFT_TRACETYPE_RULE, probe, 20, unix.NFT_CONTINUE, "", ipv4Header("198.19.0.1", "198.18.0.5"), ports(40000, 80)),
		traceMsg(t, 7, unix.NFT_TRACETYPE_RULE, probe, 0, unix.NFT_CONTINUE, "", nil, nil),
		traceMsg(t, 7, unix.NFT_TRACETYPE_POLICY, probe, 0, 1, "", nil, nil),
		traceMsg(t, 7, unix.NFT_TRACETYPE_RULE, "nat-output", 5, unix.NFT_GOTO, "refuse", ipv4Header("198.19.0.1", "198.18.0.5"), ports(40000, 80)),
		traceMsg(t, 7, unix.NFT_TRACETYPE_RULE, "refuse", 3, 0, "", nil, nil),
		traceMsg(t, 7, unix.NFT_TRACETYPE_RULE, probe, 20, unix.NFT_CONTINUE, "", nil, nil), // the next packet of the probe
	}
	var all []TraceEvent
	for _, b := range raw {
		ev, err := DecodeTraceEvent(b)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ev)
	}
	if ev := all[1]; ev.ID != 7 || ev.Table != "l4lb" || ev.Handle != 20 || ev.Family != "ip" || ev.Verdict != "continue" ||
		ev.Packet != "tcp 198.19.0.1:40000 -> 198.18.0.5:80" {
		t.Errorf("decoded %+v", ev)
	}
	got := ProbeEvents(all, "l4lb", probe)
	var lines []string
	for _, ev := range got {
		lines = append(lines, ev.Chain+" "+ev.Type+" "+ev.Verdict)
	}
	want := "explain-trace-1-1 rule continue|explain-trace-1-1 policy accept|nat-output rule goto refuse|refuse rule drop"
	if strings.Join(lines, "|") != want {
		t.Errorf("probe events %q, want %q", strings.Join(lines, "|"), want)
	}
	if ProbeEvents(all, "l4lb", "explain-trace-2-1") != nil {
		t.Error("events of another probe")
	}
	for _, bad := range [][]byte{nil, {1, 2}, {2, 0, 0, 0, 9, 0}} {
		if _, err := DecodeTraceEvent(bad); err == nil {
			t.Errorf("DecodeTraceEvent(%x) succeeded", bad)
		}
	}
}
