package nat

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// syntheticRuleset has n VIPs in 198.18.0.0/16, each with b backends in
// 198.19.0.0/16, the shape of a large cluster.
func syntheticRuleset(n, b int) *Ruleset {
	r := &Ruleset{Table: DefaultTable, Pool4: testPool4, Pool6: testPool6}
	base := netip.MustParseAddr("198.18.0.1")
	hairpin := map[netip.Addr]bool{}
	a := base
	for i := range n {
		e := VIPElem{Key: vip.Key{Addr: a, Proto: vip.TCP, Port: 80}, Comment: fmt.Sprintf("svc%d.marathon.l4lb.thisdcos.directory:80/tcp /svc%d", i, i)}
		for j := range b {
			be := netip.AddrFrom4([4]byte{198, 19, byte((i*b + j) / 250 % 250), byte(1 + (i*b+j)%250)})
			e.Backends = append(e.Backends, netip.AddrPortFrom(be, uint16(10000+j)))
			hairpin[be] = true
		}
		r.VIPs = append(r.VIPs, e)
		a = a.Next()
	}
	r.Hairpin = sortedAddrs(hairpin)
	r.Sort()
	return r
}

// BenchmarkApply measures programming over netlink inside a namespace: a
// cold load of n VIPs x 10 backends, and one backend change at that size.
// Run: go test ./nat -run '^$' -bench Apply -benchtime 3x
// The figures to read are ms/cold and ms/change (and heap-MB, the memory
// the Kernel keeps for its view of the table).
func BenchmarkApply(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("vips=%d", n), func(b *testing.B) {
			ns := netns.ForTest(b, "l4bn", "nft")
			f, err := ns.Open()
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			r := syntheticRuleset(n, 10)
			changed := syntheticRuleset(n, 10)
			mid := &changed.VIPs[n/2]
			mid.Backends = append([]netip.AddrPort{}, mid.Backends...)
			mid.Backends[3] = netip.MustParseAddrPort("198.19.255.254:1")
			changed.Sort()
			ctx := context.Background()

			var cold, change time.Duration
			var batches, elements int
			var heap uint64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := ns.Run("nft", "delete", "table", "inet", DefaultTable); err != nil && i > 0 {
					b.Fatal(err)
				}
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				k, err := New(DefaultTable, WithNetNS(int(f.Fd())), WithoutRoutes())
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				res, err := k.Apply(ctx, r, false)
				cold += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				batches += res.Batches
				start = time.Now()
				res2, err := k.Apply(ctx, changed, false)
				change += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				elements += res2.Elements
				b.StopTimer()
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				if after.HeapAlloc > before.HeapAlloc {
					heap += after.HeapAlloc - before.HeapAlloc
				}
				runtime.KeepAlive(k)
				k.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(cold.Milliseconds())/float64(b.N), "ms/cold")
			b.ReportMetric(float64(change.Microseconds())/1000/float64(b.N), "ms/change")
			b.ReportMetric(float64(batches)/float64(b.N), "batches/cold")
			b.ReportMetric(float64(elements)/float64(b.N), "elems/change")
			b.ReportMetric(float64(heap)/float64(b.N)/(1<<20), "heap-MB")
		})
	}
}
