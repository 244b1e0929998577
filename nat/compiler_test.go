package nat

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

// randomDecls declares a few named and IP VIPs with random backends.
func randomDecls(r *rand.Rand, app string) []vip.Decl {
	var out []vip.Decl
	for n := r.IntN(3); n > 0; n-- {
		d := vip.Decl{Proto: []vip.Proto{vip.TCP, vip.UDP}[r.IntN(2)], App: app, Label: "VIP_0"}
		if r.IntN(4) == 0 {
			d.Spec = vip.Spec{IP: netip.MustParseAddr(fmt.Sprintf("198.18.255.%d", 1+r.IntN(3))), Port: 80}
		} else {
			d.Spec = vip.Spec{Name: fmt.Sprintf("%c.marathon.l4lb.thisdcos.directory", 'a'+r.IntN(6)), Port: uint16(80 + r.IntN(2))}
		}
		for b := r.IntN(5); b > 0; b-- {
			d.Backends = append(d.Backends, vip.Backend{
				Addr:  netip.MustParseAddr(fmt.Sprintf("198.19.0.%d", 1+r.IntN(6))),
				Port:  uint16(31000 + r.IntN(3)),
				State: vip.BackendStates[r.IntN(len(vip.BackendStates))],
				Task:  fmt.Sprintf("%s.t%d", app, b), App: app,
			})
		}
		out = append(out, d)
	}
	return out
}

// cloneObserved copies what apply changes in place.
func cloneObserved(o *observed) *observed {
	c := *o
	c.vips = slices.Clone(o.vips)
	c.ipvips, c.hairpin = slices.Clone(o.ipvips), slices.Clone(o.hairpin)
	c.sets = maps.Clone(o.sets)
	c.chains = maps.Clone(o.chains)
	return &c
}

// TestCompilerDeltaEqualsFull applies random changes through vip.Index and
// Compiler.Update and checks that the ruleset is Compile of the whole
// state (same text), and that the delta plan leaves the kernel's table as
// the full plan would.
func TestCompilerDeltaEqualsFull(t *testing.T) {
	for seed := uint64(1); seed <= 100; seed++ {
		r := rand.New(rand.NewPCG(seed, 3))
		cfg := vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/24"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")}
		x := vip.NewIndex(cfg)
		c := NewCompiler("")
		var rs *Ruleset
		obs := newObserved()
		gen := uint64(0)
		for step := 0; step < 25; step++ {
			for n := 1 + r.IntN(3); n > 0; n-- {
				app := fmt.Sprintf("/app%d", r.IntN(6))
				if r.IntN(5) == 0 {
					x.Delete(app)
				} else {
					x.Set(app, randomDecls(r, app), nil)
				}
			}
			ch := x.Commit()
			if step == 0 {
				rs = c.Full(x.State())
			} else {
				rs = c.Update(x.State(), ch)
			}
			want := Compile(x.State(), "")
			if got, w := rs.Text(), want.Text(); got != w {
				t.Fatalf("seed %d step %d: delta ruleset\n%s\nfull\n%s", seed, step, got, w)
			}
			if !slices.Equal(rs.LBCounts(), want.LBCounts()) {
				t.Fatalf("seed %d step %d: lb counts %v, want %v", seed, step, rs.LBCounts(), want.LBCounts())
			}
			var p *plan
			full := makePlan(cloneObserved(obs), rs)
			if rs.delta != nil && rs.delta.base == gen && gen != 0 {
				p = makeDeltaPlan(cloneObserved(obs), rs)
			} else {
				p = full
			}
			viaFull := cloneObserved(obs).apply(full, rs)
			obs = obs.apply(p, rs)
			gen = rs.gen
			// A delta plan keeps the lb rules of counts no longer used
			// (the next full plan drops them): every chain the full plan
			// has, it has too, and lb with at least the counts in use.
			chainsOK := maps.Equal(obs.chains, viaFull.chains) && slices.Equal(viaFull.lb, rs.LBCounts()) &&
				slices.Equal(unionCounts(obs.lb, viaFull.lb), obs.lb)
			if !reflect.DeepEqual(obs.vips, viaFull.vips) || !slices.Equal(obs.ipvips, viaFull.ipvips) ||
				!slices.Equal(obs.hairpin, viaFull.hairpin) || !chainsOK {
				t.Fatalf("seed %d step %d: the delta plan leaves another table than the full plan", seed, step)
			}
			if p != full && p.elements() != full.elements() {
				t.Fatalf("seed %d step %d: delta plan changes %d elements, full plan %d", seed, step, p.elements(), full.elements())
			}
		}
	}
}
