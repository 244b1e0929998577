package nat

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// BenchmarkNewConnsByCounts measures what the number K of distinct backend
// counts in use costs the data path. Chain lb has one DNAT rule per count,
// and a new connection tries the rules of smaller counts (their lookups
// miss) before its own; established connections never see the chain. One
// VIP of 30 backends (30 ports of one backend host) is measured in the
// worst place, the last rule: in a table where every VIP has 30 backends
// (K=1), and in one where 1,000 other VIPs use the counts 1..29 (K=30).
// Both tables hold the same number of VIPs; the rounds alternate in one
// run, and each reports new TCP connections per second from the agent
// (connect, read the greeting, close with a reset), one at a time.
// Run: go test ./nat -run '^$' -bench NewConnsByCounts -benchtime 1x
func BenchmarkNewConnsByCounts(b *testing.B) {
	topo := netns.TopologyForTest(b, "l4bk", 1, 1, "nft")
	agent, host := topo.Agent.NS, topo.Backends[0]
	target := vip.VIP{Name: "target.marathon.l4lb.thisdcos.directory", Addr: netip.MustParseAddr("198.18.200.1"), Port: 80, Proto: vip.TCP}
	for port := uint16(9100); port < 9130; port++ {
		srv, err := host.Serve(fmt.Sprintf("p%d", port), netip.AddrPortFrom(host.Addr4, port))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(srv.Close)
		target.Backends = append(target.Backends, vip.Backend{Addr: host.Addr4, Port: port, State: vip.Active})
	}
	// The fillers' backends are never contacted.
	state := func(k int) vip.State {
		s := vip.State{Pool4: testPool4, Pool6: testPool6, VIPs: []vip.VIP{target}}
		for i := range 1000 {
			n := 30
			if k > 1 {
				n = 1 + i%29
			}
			v := vip.VIP{Name: fmt.Sprintf("f%d.marathon.l4lb.thisdcos.directory", i), Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
				Port: 80, Proto: vip.TCP}
			for j := range n {
				v.Backends = append(v.Backends, vip.Backend{Addr: netip.AddrFrom4([4]byte{198, 19, 9, byte(1 + j)}), Port: uint16(10000 + i), State: vip.Active})
			}
			s.VIPs = append(s.VIPs, v)
		}
		return s
	}
	k := kernelFor(b, agent)
	ctx := context.Background()
	dst := netip.AddrPortFrom(target.Addr, target.Port)
	round := func(d time.Duration) (float64, error) {
		n := 0
		start := time.Now()
		err := agent.Do(func() error {
			buf := make([]byte, 64)
			for time.Since(start) < d {
				c, err := net.DialTimeout("tcp", dst.String(), time.Second)
				if err != nil {
					return err
				}
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Read(buf); err != nil {
					c.Close()
					return err
				}
				_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT: the ports are reused
				c.Close()
				n++
			}
			return nil
		})
		return float64(n) / time.Since(start).Seconds(), err
	}
	rates := map[int][]float64{}
	for i := 0; b.Loop(); i++ {
		for rep := range 5 {
			for _, kk := range []int{1, 30} {
				r := Compile(state(kk), "")
				if got := len(r.LBCounts()); got != kk {
					b.Fatalf("K=%d table has %d counts", kk, got)
				}
				if _, err := k.Apply(ctx, r, true); err != nil {
					b.Fatal(err)
				}
				if _, err := round(200 * time.Millisecond); err != nil { // warm up
					b.Fatal(err)
				}
				rate, err := round(2 * time.Second)
				if err != nil {
					b.Fatalf("K=%d round %d: %v", kk, rep, err)
				}
				rates[kk] = append(rates[kk], rate)
			}
		}
	}
	med := func(xs []float64) float64 {
		xs = slices.Clone(xs)
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	b.ReportMetric(med(rates[1]), "conns/s-K1")
	b.ReportMetric(med(rates[30]), "conns/s-K30")
	b.ReportMetric(med(rates[30])/med(rates[1]), "K30/K1")
	b.Logf("rounds: K=1 %.0f, K=30 %.0f conns/s", rates[1], rates[30])
}
