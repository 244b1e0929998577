package reconcile

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// benchApp is app i of a cluster: one VIP, b tasks with a health check;
// bad makes task 0 fail its check, extra adds a task.
func benchApp(i, b int, bad, extra bool) vip.App {
	app := vip.App{ID: fmt.Sprintf("/bench/svc%05d", i),
		PortDefinitions: []vip.Port{{Protocol: "tcp", Labels: map[string]string{"VIP_0": fmt.Sprintf("svc%05d:80", i)}}},
		HealthChecks:    make([]vip.HealthCheck, 1)}
	n := b
	if extra {
		n++
	}
	for j := range n {
		k := i*(b+1) + j
		app.Tasks = append(app.Tasks, vip.Task{ID: fmt.Sprintf("bench_svc%05d.t%d", i, j), Host: fmt.Sprintf("198.19.%d.%d", k/250%250, 1+k%250),
			Ports: []int{10000 + j}, State: "TASK_RUNNING", HealthCheckResults: []vip.HealthCheckResult{{Alive: !(bad && j == 0)}}})
	}
	return app
}

// benchReconciler is a reconciler over n apps x 10 tasks, synced once,
// with the kernel faked (nat, conntrack) and DNS recorded.
func benchReconciler(b *testing.B, n int) (*Reconciler, source.Sink, vip.Config) {
	cfg := vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/15"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")}
	r := New(Config{
		Sources: []source.Source{&fakeSource{}}, NAT: nat.NewFake(), DNS: &recordingDNS{},
		Conntrack: conntrack.NewCleaner(conntrack.NewFake(), true, nil), Model: cfg,
	})
	apps := make([]vip.App, n)
	for i := range apps {
		apps[i] = benchApp(i, 10, false, false)
	}
	sink := r.Sink(0)
	sink.Replace(source.AppGroups(apps, nil, cfg))
	if err := r.Sync(context.Background(), true); err != nil {
		b.Fatal(err)
	}
	return r, sink, cfg
}

// BenchmarkChange measures what one change costs the pipeline, from the
// delta a source delivers to the kernel, conntrack and DNS: a task's
// health turning bad and back (health), a task added and removed (task).
// The per-change time and allocations must stay flat from 1k to 50k VIPs.
// Run: go test ./sync/reconcile -run '^$' -bench Change -benchmem
func BenchmarkChange(b *testing.B) {
	for _, kind := range []string{"health", "task"} {
		for _, n := range []int{1000, 10000, 50000} {
			b.Run(fmt.Sprintf("%s/vips=%d", kind, n), func(b *testing.B) {
				r, sink, cfg := benchReconciler(b, n)
				ctx := context.Background()
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					id := (i * 7919) % n
					on := i%2 == 0
					app := benchApp(id, 10, kind == "health" && on, kind == "task" && on)
					d, p, _ := vip.DeclareApp(app, cfg, nil)
					sink.Update([]source.Group{{Key: source.Key(app.ID), Decls: d, Problems: p, Hosts: vip.AppHosts(app, d, nil)}}, nil)
					if err := r.Sync(ctx, false); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if got := len(r.Status().State.VIPs); got != n {
					b.Fatalf("%d VIPs, want %d", got, n)
				}
			})
		}
	}
}

// BenchmarkFullSync measures a full sync (the resync: compile everything,
// plan against the whole table) and the heap the loop keeps, for
// comparison with BenchmarkChange.
// Run: go test ./sync/reconcile -run '^$' -bench FullSync -benchtime 3x
func BenchmarkFullSync(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("vips=%d", n), func(b *testing.B) {
			r, _, _ := benchReconciler(b, n)
			ctx := context.Background()
			var total time.Duration
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				if err := r.Sync(ctx, true); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			b.StopTimer()
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
			runtime.KeepAlive(r)
		})
	}
}
