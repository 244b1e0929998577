package vip

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// TestPinnedAddresses: declarations that pin addresses (VIPs read from
// etcd) give their names exactly those addresses, in the families pinned
// only, in Build and in an Index after any sequence of changes; and the
// allocator never hands a pinned address to an unpinned name.
func TestPinnedAddresses(t *testing.T) {
	cfg := Config{Pool4: netip.MustParsePrefix("198.18.0.0/28"), Pool6: netip.MustParsePrefix("fd00:198:18::/124")}
	names := []string{"a", "b", "c", "d"}
	// The controller's allocations: far from the hash of each name.
	pins4 := map[string]netip.Addr{}
	pins6 := map[string]netip.Addr{}
	for i, n := range names {
		pins4[n+".marathon.l4lb.thisdcos.directory"] = netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", 14-i))
		pins6[n+".marathon.l4lb.thisdcos.directory"] = netip.MustParseAddr(fmt.Sprintf("fd00:198:18::%x", 14-i))
	}
	for seed := uint64(1); seed <= 100; seed++ {
		r := rand.New(rand.NewPCG(seed, 9))
		x := NewIndex(cfg)
		held := map[string][]Decl{}
		for step := 0; step < 20; step++ {
			key := fmt.Sprintf("k%d", r.IntN(6))
			if r.IntN(4) == 0 {
				x.Delete(key)
				delete(held, key)
			} else {
				name := names[r.IntN(len(names))] + ".marathon.l4lb.thisdcos.directory"
				d := Decl{Spec: Spec{Name: name, Port: uint16(80 + r.IntN(2))}, Proto: TCP, App: "/" + key, Label: "etcd"}
				if r.IntN(2) == 0 {
					d.Addr = pins4[name]
					d.Backends = []Backend{{Addr: netip.MustParseAddr("198.19.0.1"), Port: 31000, App: "/" + key, Task: key + ".1"}}
				} else {
					d.Addr = pins6[name]
					d.Backends = []Backend{{Addr: netip.MustParseAddr("fd00:198:19::1"), Port: 31000, App: "/" + key, Task: key + ".1"}}
				}
				if r.IntN(5) == 0 { // an unpinned name next to pinned ones
					d.Spec.Name, d.Addr = "free.marathon.l4lb.thisdcos.directory", netip.Addr{}
				}
				held[key] = []Decl{d}
				x.Set(key, held[key], nil)
			}
			x.Commit()
			got := x.State()
			var all []Decl
			for k := 0; k < 6; k++ {
				all = append(all, held[fmt.Sprintf("k%d", k)]...)
			}
			full := cfg
			full.Previous = got.Allocations
			want, _ := Build(all, full)
			if !reflect.DeepEqual(nonNil(got.VIPs), nonNil(want.VIPs)) {
				t.Fatalf("seed %d step %d: index\n%s\nbuild\n%s", seed, step, strings.Join(summary(got), "\n"), strings.Join(summary(want), "\n")+fmt.Sprintf("\n%d %d %v %v", len(got.VIPs), len(want.VIPs), got.VIPs == nil, want.VIPs == nil))
			}
			for _, v := range got.VIPs {
				pin := pins4[v.Name]
				if v.Addr.Is6() {
					pin = pins6[v.Name]
				}
				if v.Name == "free.marathon.l4lb.thisdcos.directory" {
					for n, p := range pins4 {
						if held := got.Allocations.V4[n]; held.IsValid() && p == v.Addr {
							t.Fatalf("seed %d step %d: unpinned name got %s, pinned for %s", seed, step, v.Addr, n)
						}
					}
					continue
				}
				if v.Addr != pin {
					t.Fatalf("seed %d step %d: %s at %s, pinned at %s", seed, step, v, v.Addr, pin)
				}
			}
		}
	}
}
