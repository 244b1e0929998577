package cluster_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/cluster/controller"
	"github.com/l4lb/l4lb/internal/etcdtest"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/reconcile"
	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// fanoutState is n named VIPs with 10 backends each, as the controller
// computes them.
func fanoutState(n int) vip.State {
	st := vip.State{Pool4: netip.MustParsePrefix("198.18.0.0/16"), Pool6: netip.MustParsePrefix("fd00:198:18::/64"),
		Allocations: vip.Allocations{V4: map[string]netip.Addr{}, V6: map[string]netip.Addr{}}}
	base := netip.MustParseAddr("198.18.0.1")
	for i := range n {
		b := base.As4()
		off := uint32(b[2])<<8 | uint32(b[3]) + uint32(i)
		addr := netip.AddrFrom4([4]byte{198, 18, byte(off >> 8), byte(off)})
		name := fmt.Sprintf("svc%05d.marathon.l4lb.thisdcos.directory", i)
		v := vip.VIP{Name: name, Addr: addr, Port: 80, Proto: vip.TCP, Apps: []string{fmt.Sprintf("/bench/svc%05d", i)}}
		for j := range 10 {
			k := i*10 + j
			v.Backends = append(v.Backends, vip.Backend{Addr: netip.AddrFrom4([4]byte{198, 19, byte(k / 250 % 250), byte(1 + k%250)}),
				Port: uint16(10000 + j), Task: fmt.Sprintf("bench_svc%05d.t%d", i, j), App: v.Apps[0]})
		}
		st.VIPs = append(st.VIPs, v)
		st.Allocations.V4[name] = addr
	}
	return st
}

// appliedNAT is the in-memory kernel of a simulated agent: it records when
// an Apply last changed something.
type appliedNAT struct {
	*nat.Fake
	last atomic.Int64 // unix nanoseconds
}

func (a *appliedNAT) Apply(ctx context.Context, r *nat.Ruleset, full bool) (nat.Result, error) {
	res, err := a.Fake.Apply(ctx, r, full)
	if err == nil && res.Elements > 0 {
		a.last.Store(time.Now().UnixNano())
	}
	return res, err
}

func ints(env string, def []int) []int {
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// BenchmarkFanout: etcd, a controller's writer, and M simulated agents
// (each the real etcd: source and sync loop, with an in-memory nat; many
// share one process and one client per 50). Reports the controller's time
// to write the full state, one agent's initial list and first sync, etcd's
// RSS and database size, and for one backend change the time until every
// agent applied it (p50, p99 over rounds). Sizes: L4LB_FANOUT_VIPS
// (default 1000,10000,50000), L4LB_FANOUT_AGENTS (default 100,1000);
// the whole sync loop per agent takes about 16 MB per 1,000 VIPs of heap, so
// combinations above L4LB_FANOUT_MAX_VIPS_X_AGENTS (default 100,000 VIPs x
// agents) run index-only agents (the real etcd source into vip.Index, no
// nat), up to ten times that, and above it measure the writes and the
// initial list only.
// Run: go test ./cluster -run '^$' -bench Fanout -benchtime 1x -timeout 60m
func BenchmarkFanout(b *testing.B) {
	limit := 100_000
	if l := ints("L4LB_FANOUT_MAX_VIPS_X_AGENTS", nil); len(l) == 1 {
		limit = l[0]
	}
	for _, n := range ints("L4LB_FANOUT_VIPS", []int{1000, 10000, 50000}) {
		b.Run(fmt.Sprintf("vips=%d", n), func(b *testing.B) {
			for range b.N {
				fanout(b, n, ints("L4LB_FANOUT_AGENTS", []int{100, 1000}), limit)
			}
		})
	}
}

func fanout(b *testing.B, n int, agentCounts []int, limit int) {
	srv := etcdtest.Start(b, etcdtest.Options{})
	newClient := func() *clientv3.Client {
		cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{srv.Endpoint()}, Dial: srv.Dial})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cli.Close() })
		return cli
	}
	cli := newClient()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	l, _ := cluster.NewLayout("/l4lb")
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	e := concurrency.NewElection(s, l.Leader())
	if err := e.Campaign(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	w := controller.NewWriter(cli, l, e.Key(), e.Rev(), nil)
	state := fanoutState(n)
	conf := cluster.Config{Pool4: state.Pool4, Pool6: state.Pool6, Domain: vip.DefaultDomain}
	start := time.Now()
	stats, err := w.Write(ctx, l.Desired(conf, state))
	if err != nil {
		b.Fatal(err)
	}
	write := time.Since(start)
	b.ReportMetric(write.Seconds(), "controller-write-s")
	b.Logf("vips=%d: controller wrote %d keys in %d transactions in %s", n, stats.Puts, stats.Txns, write.Round(time.Millisecond))

	// One agent's initial list, and its first sync into the in-memory nat.
	sink := newFakeSink()
	src := cluster.NewSource(cli, l, "etcd", cluster.SourceOptions{})
	lctx, lcancel := context.WithCancel(ctx)
	start = time.Now()
	go src.Run(lctx, vip.Config{}, sink)
	for !func() bool { sink.mu.Lock(); defer sink.mu.Unlock(); return sink.listed }() {
		time.Sleep(time.Millisecond)
	}
	list := time.Since(start)
	lcancel()
	b.ReportMetric(list.Seconds(), "initial-list-s")
	one := newAgent(newClient(), l, conf)
	octx, ocancel := context.WithCancel(ctx)
	one.cancel = ocancel
	start = time.Now()
	go one.rec.Run(octx, runner.Options{Resync: time.Hour, BackoffMin: 100 * time.Millisecond})
	for !one.rec.Status().Synced {
		time.Sleep(time.Millisecond)
	}
	first := time.Since(start)
	b.ReportMetric(first.Seconds(), "initial-sync-s")
	b.Logf("vips=%d: one agent listed in %s, listed and synced in %s", n, list.Round(time.Millisecond), first.Round(time.Millisecond))
	one.cancel()

	st, err := cli.Status(ctx, srv.Endpoint())
	if err != nil {
		b.Fatal(err)
	}
	rss := procRSS(srv.Pid())
	b.ReportMetric(float64(st.DbSize)/(1<<20), "etcd-db-MiB")
	b.ReportMetric(float64(rss)/(1<<20), "etcd-rss-MiB")
	b.Logf("vips=%d: etcd database %.1f MiB (in use %.1f MiB), RSS %.1f MiB", n, float64(st.DbSize)/(1<<20), float64(st.DbSizeInUse)/(1<<20), float64(rss)/(1<<20))

	for _, m := range agentCounts {
		switch {
		case n*m <= limit:
			fanoutRounds(b, ctx, newClient, w, l, conf, state, n, m, false)
		case n*m <= 10*limit:
			fanoutRounds(b, ctx, newClient, w, l, conf, state, n, m, true)
		default:
			b.Logf("vips=%d agents=%d: skipped (VIPs x agents above %d; set L4LB_FANOUT_MAX_VIPS_X_AGENTS)", n, m, 10*limit)
		}
	}
}

type simAgent struct {
	rec    *reconcile.Reconciler
	nat    *appliedNAT
	cancel context.CancelFunc
}

// indexAgent is a lighter simulated agent for runs that would not fit in
// memory with the whole sync loop per agent: the real etcd source feeding
// the loop's desired state (vip.Index), committed at every delivery; the
// time of the last commit that changed a VIP stands for the apply.
type indexAgent struct {
	mu     sync.Mutex
	index  *vip.Index
	listed bool
	last   atomic.Int64
}

func (a *indexAgent) Replace(groups []source.Group) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := make(map[string]bool, len(groups))
	for _, g := range groups {
		seen[string(g.Key)] = true
		a.index.Set(string(g.Key), g.Decls, g.Problems)
	}
	for _, k := range a.index.Keys() {
		if !seen[k] {
			a.index.Delete(k)
		}
	}
	a.commit()
	a.listed = true
}

func (a *indexAgent) Update(changed []source.Group, gone []source.Key) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, g := range changed {
		a.index.Set(string(g.Key), g.Decls, g.Problems)
	}
	for _, k := range gone {
		a.index.Delete(string(k))
	}
	a.commit()
}

func (a *indexAgent) commit() {
	if ch := a.index.Commit(); len(ch.After)+len(ch.Before) > 0 {
		a.last.Store(time.Now().UnixNano())
	}
}

func (a *indexAgent) Stale(error) {}

func (a *indexAgent) synced() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.listed
}

func newAgent(cli *clientv3.Client, l cluster.Layout, conf cluster.Config) *simAgent {
	src := cluster.NewSource(cli, l, "etcd", cluster.SourceOptions{})
	a := &simAgent{nat: &appliedNAT{Fake: nat.NewFake()}}
	a.rec = reconcile.New(reconcile.Config{Sources: []source.Source{src}, NAT: a.nat,
		Model: vip.Config{Pool4: conf.Pool4, Pool6: conf.Pool6, Domain: conf.Domain}})
	return a
}

func fanoutRounds(b *testing.B, ctx context.Context, newClient func() *clientv3.Client, w *controller.Writer, l cluster.Layout,
	conf cluster.Config, state vip.State, n, m int, light bool) {
	actx, acancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { acancel(); wg.Wait() }()
	// Each agent: whether it has synced, and when it last applied a change.
	var synced []func() bool
	var applied []*atomic.Int64
	var cli *clientv3.Client
	kind := "sync loop"
	if light {
		kind = "index only"
	}
	start := time.Now()
	for i := range m {
		if i%50 == 0 {
			cli = newClient()
		}
		if light {
			a := &indexAgent{index: vip.NewIndex(vip.Config{Pool4: conf.Pool4, Pool6: conf.Pool6, Domain: conf.Domain})}
			src := cluster.NewSource(cli, l, "etcd", cluster.SourceOptions{})
			synced, applied = append(synced, a.synced), append(applied, &a.last)
			wg.Add(1)
			go func() { defer wg.Done(); src.Run(actx, vip.Config{}, a) }()
			continue
		}
		a := newAgent(cli, l, conf)
		synced = append(synced, func() bool { return a.rec.Status().Synced })
		applied = append(applied, &a.nat.last)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.rec.Run(actx, runner.Options{Resync: time.Hour, BackoffMin: 100 * time.Millisecond})
		}()
	}
	for _, ok := range synced {
		for !ok() {
			time.Sleep(5 * time.Millisecond)
		}
	}
	b.Logf("vips=%d agents=%d (%s): all listed and synced in %s", n, m, kind, time.Since(start).Round(time.Millisecond))

	// Rounds: one backend of one VIP changes state; time until every agent
	// applied it.
	var p50s, p99s, maxs []time.Duration
	const rounds = 10
	for r := range rounds {
		i := (r*7919 + m*104729) % len(state.VIPs)
		v := state.VIPs[i]
		v.Backends = slices.Clone(v.Backends)
		j := slices.IndexFunc(v.Backends, func(b vip.Backend) bool { return b.State == vip.Active })
		v.Backends[j].State = vip.Unhealthy // an active backend goes unhealthy
		state.VIPs[i] = v
		t0 := time.Now()
		if _, err := w.Apply(ctx, []controller.Op{{Key: l.VIPKey(v.Key()), Value: string(cluster.EncodeVIP(v))}}); err != nil {
			b.Fatal(err)
		}
		var lat []time.Duration
		deadline := time.Now().Add(60 * time.Second)
		for _, last := range applied {
			for last.Load() < t0.UnixNano() {
				if time.Now().After(deadline) {
					b.Fatalf("round %d: an agent did not apply the change within 60s", r)
				}
				time.Sleep(time.Millisecond)
			}
			lat = append(lat, time.Duration(last.Load()-t0.UnixNano()))
		}
		p50s, p99s = append(p50s, percentile(lat, 0.5)), append(p99s, percentile(lat, 0.99))
		maxs = append(maxs, slices.Max(lat))
		time.Sleep(200 * time.Millisecond)
	}
	p50, p99 := percentile(p50s, 0.5), percentile(p99s, 0.5)
	b.ReportMetric(p50.Seconds()*1000, fmt.Sprintf("agents=%d-p50-ms", m))
	b.ReportMetric(p99.Seconds()*1000, fmt.Sprintf("agents=%d-p99-ms", m))
	b.Logf("vips=%d agents=%d (%s): one backend change applied by every agent: p50 %s, p99 %s (median of %d rounds), worst round max %s",
		n, m, kind, p50.Round(time.Millisecond), p99.Round(time.Millisecond), rounds, slices.Max(maxs).Round(time.Millisecond))
}

// procRSS is a process's resident set in bytes, 0 if unknown.
func procRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return kb << 10
			}
		}
	}
	return 0
}
