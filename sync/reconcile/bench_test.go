package reconcile

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/dns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// bigApps writes n apps of one VIP and b tasks each, as Marathon lists them.
func bigApps(n, b int) []byte {
	var sb strings.Builder
	sb.WriteString(`{"apps": [`)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"id": "/bench/svc%05d", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "svc%05d:80"}}], "tasks": [`, i, i)
		for j := range b {
			if j > 0 {
				sb.WriteByte(',')
			}
			k := i*b + j
			fmt.Fprintf(&sb, `{"id": "bench_svc%05d.t%d", "appId": "/bench/svc%05d", "host": "198.19.%d.%d", "ports": [%d], "state": "TASK_RUNNING", "version": "2026-11-22T04:00:00.000Z", "stagedAt": "2026-11-22T04:00:00.000Z"}`,
				i, j, i, k/250%250, 1+k%250, 10000+j)
		}
		sb.WriteString(`]}`)
	}
	sb.WriteString(`]}`)
	return []byte(sb.String())
}

// BenchmarkSync measures one sync of the daemon's loop from a file of n
// apps x 10 tasks, with the kernel parts faked: where the time of a change
// at scale goes, and the heap the loop keeps.
// Run: go test ./sync/reconcile -run '^$' -bench Sync -benchtime 3x
func BenchmarkSync(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprintf("apps=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			path := filepath.Join(dir, "apps.json")
			if err := os.WriteFile(path, bigApps(n, 10), 0o644); err != nil {
				b.Fatal(err)
			}
			z := &recordingDNS{}
			r := New(Config{
				Sources: []source.Source{source.NewFile(path)}, NAT: nat.NewFake(), DNS: z,
				Conntrack: conntrack.NewCleaner(conntrack.NewFake(), true, nil),
				Model:     vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/16"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")},
				StateDir:  dir,
			})
			ctx := context.Background()
			if err := r.Sync(ctx, true); err != nil {
				b.Fatal(err)
			}
			var total time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if err := r.Sync(ctx, false); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/sync")
			// What the loop keeps between syncs (the daemon's live heap
			// without the API's answers).
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
			runtime.KeepAlive(r)
			_ = dns.Records
		})
	}
}
