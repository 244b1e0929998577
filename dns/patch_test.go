package dns

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

// TestPatchEqualsRecords changes random names one batch at a time, through
// Patch, and checks that the zone answers as the zone Records builds from
// the same state.
func TestPatchEqualsRecords(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cur := map[string][]netip.Addr{}
	z := Records(vip.State{}, "")
	for step := 0; step < 300; step++ {
		change := map[string][]netip.Addr{}
		for n := 1 + r.IntN(20); n > 0; n-- {
			name := fmt.Sprintf("s%d.marathon.l4lb.thisdcos.directory", r.IntN(150))
			var as []netip.Addr
			if r.IntN(3) > 0 {
				as = append(as, netip.AddrFrom4([4]byte{198, 18, byte(r.IntN(4)), byte(1 + r.IntN(200))}))
			}
			if r.IntN(4) == 0 {
				as = append(as, netip.MustParseAddr(fmt.Sprintf("fd00:198:18::%x", 1+r.IntN(999))))
			}
			change[name] = as
			cur[name] = as
		}
		z = z.Patch(change)
		var s vip.State
		for name, as := range cur {
			for _, a := range as {
				s.VIPs = append(s.VIPs, vip.VIP{Name: name, Addr: a, Port: 80, Proto: vip.TCP})
			}
		}
		want := Records(s, "")
		if !slices.Equal(z.Names(), want.Names()) || z.Len() != want.Len() {
			t.Fatalf("step %d: names %d (%d records), want %d (%d)", step, len(z.Names()), z.Len(), len(want.Names()), want.Len())
		}
		for _, name := range want.Names() {
			a4, a6, _ := z.Lookup(name)
			w4, w6, _ := want.Lookup(name)
			if !slices.Equal(a4, w4) || !slices.Equal(a6, w6) {
				t.Fatalf("step %d: %s: %v %v, want %v %v", step, name, a4, a6, w4, w6)
			}
		}
		if z.node("marathon.l4lb.thisdcos.directory.") == nil && len(want.Names()) > 0 {
			t.Fatalf("step %d: the empty non-terminal is missing", step)
		}
	}
}
