package nat

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// BenchmarkApplyDelta measures one change applied to the kernel as a delta
// (nat.Compiler.Update, then Apply): a VIP's backend replaced and put
// back, in a namespace holding n VIPs of 10 backends. It must not grow
// with n.
// Run: go test ./nat -run '^$' -bench ApplyDelta
func BenchmarkApplyDelta(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("vips=%d", n), func(b *testing.B) {
			ns := netns.ForTest(b, "l4bd", "nft")
			f, err := ns.Open()
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			s := vip.State{Pool4: netip.MustParsePrefix("198.18.0.0/15")}
			for i := range n {
				v := vip.VIP{Name: fmt.Sprintf("s%d.marathon.l4lb.thisdcos.directory", i), Addr: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
					Port: 80, Proto: vip.TCP, Apps: []string{fmt.Sprintf("/s%d", i)}}
				for j := range 10 {
					v.Backends = append(v.Backends, vip.Backend{Addr: netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i % 250)}), Port: 8080, State: vip.Active})
				}
				if i == 0 {
					v.Backends = v.Backends[:9] // lb9 exists throughout
				}
				s.VIPs = append(s.VIPs, v)
			}
			k, err := New(DefaultTable, WithNetNS(int(f.Fd())), WithoutRoutes())
			if err != nil {
				b.Fatal(err)
			}
			defer k.Close()
			c := NewCompiler("")
			ctx := context.Background()
			if _, err := k.Apply(ctx, c.Full(s), true); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				at := 1 + (i*7919)%(n-1)
				old := s.VIPs[at]
				nv := old
				nv.Backends = append([]vip.Backend{}, old.Backends...)
				if i%2 == 0 {
					nv.Backends[3].State = vip.Unhealthy
				}
				s.VIPs[at] = nv
				if _, err := k.Apply(ctx, c.Update(s, vip.Change{Before: []vip.VIP{old}, After: []vip.VIP{nv}}), false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
