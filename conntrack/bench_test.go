package conntrack

import (
	"context"
	"net/netip"
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
// away, with 100,000 DNATed entries in the namespace's table (90,000 IPv4
// over 30 backends, TCP and UDP, about 3,000 each; 10,000 IPv6 over 10):
// "suspects" is the pass the sync loop runs after such a change (Lost names
// the backend: a filtered dump, then one ti-mo delete per entry), "full"
// the pass it runs at start and on resync (a ti-mo dump of the whole
// table). Each iteration removes the next IPv4 backend in turn; between
// iterations, off the clock, the entries deleted are put back, all to the
// backend just emptied, so that every pass finds about 3,000. Figures:
// dump, select and delete time per pass, delete time per entry, entries
// deleted and listed per pass.
//
// "list/ti-mo" and "list/hand-written" compare the two ways of listing
// every DNATed flow of that table: Flows (ti-mo's dump, every attribute
// decoded) and FlowsFrom with every backend address (the hand-written
// dump of each family, tuples only).
//
//	go test ./conntrack -run '^$' -bench Cleanup -benchtime 10x -benchmem
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
	if n := sy.count(b); n < benchFlows4+benchFlows6 {
		b.Fatalf("table holds %d entries, want %d", n, benchFlows4+benchFlows6)
	}
	// refill puts n IPv4 entries back, all to backend to: for the time of
	// the refill, the ruleset sends new flows to it alone.
	refill := func(to netip.Addr, n int) {
		var others []netip.Addr
		for _, a := range sy.backends[:30] {
			if a != to {
				others = append(others, a)
			}
		}
		sy.dp.apply(b, stateOf(b, sy.apps(others...), sy.state))
		sy.send(b, vip.TCP, sy.vip4[vip.TCP], n/2)
		sy.send(b, vip.UDP, sy.vip4[vip.UDP], n-n/2)
		sy.dp.apply(b, sy.state)
	}
	next := 0 // the next backend to remove, across runs and sub-benchmarks

	for _, bc := range []struct {
		name string
		full bool
	}{{"suspects", false}, {"full", true}} {
		b.Run(bc.name, func(b *testing.B) {
			k := kernelFor(b, sy.ns)
			var dump, sel, del time.Duration
			var deleted, listed int
			for i := 0; i < b.N; i++ {
				b.StopTimer()
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
				if r.Deleted < 2000 || (bc.full && r.Flows != benchFlows4+benchFlows6) {
					b.Fatalf("pass over %d flows deleted %d entries of %s: %+v", r.Flows, r.Deleted, victim, r)
				}
				dump, sel, del = dump+r.Dump, sel+r.Select, del+r.Delete
				deleted, listed = deleted+r.Deleted, listed+r.Flows
				refill(victim, r.Deleted)
				b.StartTimer()
			}
			n := float64(b.N)
			b.ReportMetric(float64(dump.Microseconds())/1000/n, "dump-ms/op")
			b.ReportMetric(float64(sel.Microseconds())/1000/n, "select-ms/op")
			b.ReportMetric(float64(del.Microseconds())/1000/n, "delete-ms/op")
			b.ReportMetric(float64(del.Nanoseconds())/1000/float64(deleted), "delete-µs/entry")
			b.ReportMetric(float64(deleted)/n, "deleted/op")
			b.ReportMetric(float64(listed)/n, "listed/op")
		})
	}

	for _, lc := range []struct {
		name string
		list func(context.Context, *Kernel) ([]Flow, error)
	}{
		{"list/ti-mo", func(c context.Context, k *Kernel) ([]Flow, error) { return k.Flows(c) }},
		{"list/hand-written", func(c context.Context, k *Kernel) ([]Flow, error) { return k.FlowsFrom(c, sy.backends) }},
	} {
		b.Run(lc.name, func(b *testing.B) {
			k := kernelFor(b, sy.ns)
			for i := 0; i < b.N; i++ {
				c, cancel := context.WithTimeout(context.Background(), time.Minute)
				flows, err := lc.list(c, k)
				cancel()
				if err != nil || len(flows) != benchFlows4+benchFlows6 {
					b.Fatalf("listed %d flows, %v; want %d", len(flows), err, benchFlows4+benchFlows6)
				}
			}
		})
	}
}
