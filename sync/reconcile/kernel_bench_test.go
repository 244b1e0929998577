package reconcile

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// BenchmarkChangeKernel is BenchmarkChange with the real nat.Kernel in a
// test namespace: what one change costs down to the kernel.
// Run: go test ./sync/reconcile -run '^$' -bench ChangeKernel
func BenchmarkChangeKernel(b *testing.B) {
	for _, kind := range []string{"health", "task"} {
		for _, n := range []int{1000, 10000, 50000} {
			b.Run(fmt.Sprintf("%s/vips=%d", kind, n), func(b *testing.B) {
				ns := netns.ForTest(b, "l4rk", "nft")
				f, err := ns.Open()
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				k, err := nat.New("", nat.WithNetNS(int(f.Fd())), nat.WithoutRoutes())
				if err != nil {
					b.Fatal(err)
				}
				defer k.Close()
				cfg := vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/15"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")}
				r := New(Config{Sources: []source.Source{&fakeSource{}}, NAT: k,
					Conntrack: conntrack.NewCleaner(conntrack.NewFake(), true, nil), Model: cfg})
				apps := make([]vip.App, n)
				for i := range apps {
					apps[i] = benchApp(i, 10, false, false)
				}
				sink := r.Sink(0)
				sink.Replace(source.AppGroups(apps, nil, cfg))
				ctx := context.Background()
				if err := r.Sync(ctx, true); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					id := (i * 7919) % n
					on := i%2 == 0
					app := benchApp(id, 10, kind == "health" && on, kind == "task" && on)
					d, p, _ := vip.DeclareApp(app, cfg, nil)
					sink.Update([]source.Group{{Key: source.Key(app.ID), Decls: d, Problems: p}}, nil)
					if err := r.Sync(ctx, false); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
