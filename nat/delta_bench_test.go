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
// (nat.Compiler.Update, then Apply), in a namespace holding n VIPs of 10
// backends. Every iteration changes one VIP: "count" takes one of its
// backends out of rotation or puts it back (its count goes 10 -> 9 or
// back), "same" replaces a backend by another (the count stays). Neither
// may grow with n.
// Run: go test ./nat -run '^$' -bench ApplyDelta
func BenchmarkApplyDelta(b *testing.B) {
	for _, kind := range []string{"count", "same"} {
		for _, n := range []int{1000, 10000, 50000} {
			b.Run(fmt.Sprintf("%s/vips=%d", kind, n), func(b *testing.B) {
				benchApplyDelta(b, kind, n)
			})
		}
	}
}

func benchApplyDelta(b *testing.B, kind string, n int) {
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
			v.Backends = v.Backends[:9] // the count 9 is in use throughout
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
	elems := 0
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		at := 1 + (i*7919)%(n-1)
		old := s.VIPs[at]
		nv := old
		nv.Backends = append([]vip.Backend{}, old.Backends...)
		be := &nv.Backends[3]
		switch kind {
		case "count":
			if be.State == vip.Active {
				be.State = vip.Unhealthy
			} else {
				be.State = vip.Active
			}
		default:
			if be.Port == 8080 {
				be.Port = 8081
			} else {
				be.Port = 8080
			}
		}
		s.VIPs[at] = nv
		res, err := k.Apply(ctx, c.Update(s, vip.Change{Before: []vip.VIP{old}, After: []vip.VIP{nv}}), false)
		if err != nil {
			b.Fatal(err)
		}
		if res.Elements == 0 {
			b.Fatalf("change %d changed no element", i)
		}
		elems += res.Elements
	}
	b.ReportMetric(float64(elems)/float64(b.N), "elems/op")
}
