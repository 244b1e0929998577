package conntrack

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// Table of the benchmark: 90,000 IPv4 flows over 30 backends (about 3,000
// each, TCP and UDP) and 10,000 IPv6 flows over 10.
const (
	benchFlows4 = 90_000
	benchFlows6 = 10_000
)

// BenchmarkCleanup measures one cleanup pass after a backend's task went
// away, with 100,000 DNATed entries in the namespace's table: "suspects" is
// the pass the sync loop runs after such a change (Lost names the backend),
// "suspects-batch1" the same with one delete request per round trip, and
// "full" the pass it runs at start and on resync. Each iteration removes the
// next IPv4 backend in turn (about 3,000 entries each); the table is
// refilled to 100,000 entries between iterations, off the clock. Figures: dump, select and delete time per
// pass, entries deleted per pass.
//
//	go test ./conntrack -run '^$' -bench Cleanup -benchtime 10x
func BenchmarkCleanup(b *testing.B) {
	sy := newSynth(b, 30, 10)
	limit, err := sy.ns.Run("sysctl", "-n", "net.netfilter.nf_conntrack_max")
	if n, _ := strconv.Atoi(strings.TrimSpace(limit)); err != nil || n < 2*(benchFlows4+benchFlows6) {
		// The limit can only be raised in the root namespace, which the
		// tests never touch.
		b.Skipf("nf_conntrack_max is %q (%v): too small for %d entries", strings.TrimSpace(limit), err, benchFlows4+benchFlows6)
	}
	var v4, v6 int
	fill := func() {
		for v4 < benchFlows4 || v6 < benchFlows6 {
			n4, n6 := benchFlows4-v4, benchFlows6-v6
			sy.send(b, vip.TCP, sy.vip4[vip.TCP], n4/2)
			sy.send(b, vip.UDP, sy.vip4[vip.UDP], n4-n4/2)
			sy.send(b, vip.TCP, sy.vip6[vip.TCP], n6)
			v4, v6 = benchFlows4, benchFlows6
		}
	}
	fill()
	next := 0 // the next backend to remove, across runs and sub-benchmarks
	if n := sy.count(b); n < benchFlows4+benchFlows6 {
		b.Fatalf("table holds %d entries, want %d", n, benchFlows4+benchFlows6)
	}

	for _, bc := range []struct {
		name  string
		full  bool
		batch int
	}{{"suspects", false, 256}, {"suspects-batch1", false, 1}, {"full", true, 256}} {
		b.Run(bc.name, func(b *testing.B) {
			k := kernelFor(b, sy.ns, WithDeleteBatch(bc.batch))
			var dump, sel, del time.Duration
			var deleted, listed int
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				fill()
				victim := sy.backends[next%30]
				next++
				s := stateOf(b, sy.apps(victim), sy.state)
				opts := Options{FlushUnhealthy: true}
				if !bc.full {
					sus, _ := Lost(sy.state, s, true)
					opts.Suspects = sus
				}
				c, cancel := context.WithTimeout(context.Background(), time.Minute)
				b.StartTimer()
				r, err := Cleanup(c, k, s, opts)
				b.StopTimer()
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				if r.Deleted < 500 || (bc.full && r.Flows != benchFlows4+benchFlows6) {
					b.Fatalf("pass over %d flows deleted %d entries of %s: %+v", r.Flows, r.Deleted, victim, r)
				}
				dump, sel, del = dump+r.Dump, sel+r.Select, del+r.Delete
				deleted, listed = deleted+r.Deleted, listed+r.Flows
				v4 -= r.Deleted
				b.StartTimer()
			}
			n := float64(b.N)
			b.ReportMetric(float64(dump.Microseconds())/1000/n, "dump-ms/op")
			b.ReportMetric(float64(sel.Microseconds())/1000/n, "select-ms/op")
			b.ReportMetric(float64(del.Microseconds())/1000/n, "delete-ms/op")
			b.ReportMetric(float64(deleted)/n, "deleted/op")
			b.ReportMetric(float64(listed)/n, "listed/op")
		})
	}
}
