package load

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestListeners(t *testing.T) {
	ls, err := ParseListeners("198.19.0.11:8080=A, 198.19.0.12:8081=B")
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || ls[1].Addr != netip.MustParseAddrPort("198.19.0.12:8081") || ls[1].Mark != 'B' {
		t.Fatalf("parsed %+v", ls)
	}
	if got := FormatListeners(ls); got != "198.19.0.11:8080=A,198.19.0.12:8081=B" {
		t.Errorf("format: %s", got)
	}
	for _, bad := range []string{"", "198.19.0.11:8080", "198.19.0.11:8080=AB", "nohost=A"} {
		if _, err := ParseListeners(bad); err == nil {
			t.Errorf("ParseListeners(%q) accepted", bad)
		}
	}
}

// serveLoopback serves marks on fresh loopback ports and returns their
// addresses.
func serveLoopback(t *testing.T, marks ...byte) []netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var lns []net.Listener
	var addrs []netip.AddrPort
	for range marks {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, netip.MustParseAddrPort(ln.Addr().String()))
	}
	done := make(chan struct{})
	go func() { ServeOn(ctx, lns, marks); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return addrs
}

func TestClientServer(t *testing.T) {
	addrs := serveLoopback(t, 'A', 'B')
	res, err := RunClient(context.Background(), ClientConfig{Targets: addrs, Workers: 2, Duration: 200 * time.Millisecond, Hold: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.Conns == 0 || res.Errors != 0 {
		t.Fatalf("conns %d errors %d (%s)", res.Conns, res.Errors, res.FirstErr)
	}
	if res.ByMark["A"] == 0 || res.ByMark["B"] == 0 || res.ByMark["A"]+res.ByMark["B"] != res.Conns {
		t.Errorf("by mark %v of %d", res.ByMark, res.Conns)
	}
	if res.Held["A"]+res.Held["B"] != 3 {
		t.Errorf("held %v, want 3", res.Held)
	}
	if !(res.P50us > 0 && res.P99us >= res.P50us) {
		t.Errorf("latencies p50 %v p99 %v", res.P50us, res.P99us)
	}
	if res.Rate <= 0 || res.Elapsed < 0.2 {
		t.Errorf("rate %v over %vs", res.Rate, res.Elapsed)
	}
	if res.LastNanos["A"] < res.FirstNanos["A"] || res.FirstNanos["A"] < res.StartNs {
		t.Errorf("first %v last %v start %v", res.FirstNanos, res.LastNanos, res.StartNs)
	}
}

func TestClientUntilMark(t *testing.T) {
	addrs := serveLoopback(t, 'A', 'K')
	start := time.Now()
	res, err := RunClient(context.Background(), ClientConfig{Targets: addrs, Workers: 1, Duration: 10 * time.Second, UntilMark: 'K'})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("run did not stop at the mark: %s", time.Since(start))
	}
	if _, ok := res.FirstNanos["K"]; !ok {
		t.Errorf("no first time for K: %+v", res)
	}
}

func TestClientRefused(t *testing.T) {
	// A port nobody listens on: errors counted, no connections, no spin.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	res, err := RunClient(context.Background(), ClientConfig{Targets: []netip.AddrPort{addr}, Workers: 1, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Conns != 0 || res.Errors == 0 || res.FirstErr == "" {
		t.Errorf("refused: %+v", res)
	}
	if res.Errors > 200 {
		t.Errorf("%d errors in 100ms: the worker spins on a refusing target", res.Errors)
	}
}

func TestParseIperf(t *testing.T) {
	ok := []byte(`{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":1.25e10,"retransmits":3},
		"sum_received":{"seconds":1.0,"bits_per_second":1.2e10}}}`)
	_, bps, err := ParseIperf(ok)
	if err != nil || bps != 1.2e10 {
		t.Errorf("ParseIperf: %v, %v", bps, err)
	}
	if _, _, err := ParseIperf([]byte(`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`)); err == nil {
		t.Error("iperf3 error accepted")
	}
	if _, _, err := ParseIperf([]byte(`not json`)); err == nil {
		t.Error("garbage accepted")
	}
	if _, _, err := ParseIperf([]byte(`{"end":{}}`)); err == nil {
		t.Error("no throughput accepted")
	}
}

func TestRunRounds(t *testing.T) {
	addrs := serveLoopback(t, 'A', 'B', 'C')
	sets := [][]netip.AddrPort{addrs[:1], addrs[1:2], addrs[2:]}
	res, err := RunRounds(context.Background(), RoundsConfig{Sets: sets, Workers: 2, Rounds: 3, Slice: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Sets) != 3 {
		t.Fatalf("%d sets", len(res.Sets))
	}
	for k, mark := range []string{"A", "B", "C"} {
		if len(res.Sets[k]) != 3 {
			t.Fatalf("set %d has %d rounds", k, len(res.Sets[k]))
		}
		for i, r := range res.Sets[k] {
			if r.ByMark[mark] == 0 || r.ByMark[mark] != r.Conns {
				t.Errorf("set %d round %d reached %v", k, i, r.ByMark)
			}
		}
	}
	// Round 0 runs A, B, C; round 1 runs C, B, A.
	if !(res.Sets[0][0].StartNs < res.Sets[1][0].StartNs && res.Sets[1][0].StartNs < res.Sets[2][0].StartNs) {
		t.Error("round 0 not in order")
	}
	if !(res.Sets[2][1].StartNs < res.Sets[1][1].StartNs && res.Sets[1][1].StartNs < res.Sets[0][1].StartNs) {
		t.Error("round 1 not in reverse order")
	}
	if _, err := RunRounds(context.Background(), RoundsConfig{Sets: [][]netip.AddrPort{addrs, nil}, Workers: 1, Rounds: 1, Slice: time.Millisecond}); err == nil {
		t.Error("an empty set accepted")
	}
}
