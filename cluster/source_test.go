package cluster_test

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/internal/etcdtest"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// fakeSink holds what a source delivered, as the pipeline would.
type fakeSink struct {
	mu       sync.Mutex
	groups   map[source.Key]source.Group
	replaces int
	updates  int
	stale    error
	listed   bool
}

func newFakeSink() *fakeSink { return &fakeSink{groups: map[source.Key]source.Group{}} }

func (f *fakeSink) Replace(groups []source.Group) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replaces++
	f.listed = true
	f.groups = map[source.Key]source.Group{}
	for _, g := range groups {
		f.groups[g.Key] = g
	}
}

func (f *fakeSink) Update(changed []source.Group, gone []source.Key) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates++
	for _, g := range changed {
		f.groups[g.Key] = g
	}
	for _, k := range gone {
		delete(f.groups, k)
	}
}

func (f *fakeSink) Stale(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stale = err
}

// summary is "key=backend-ip..." per group, sorted, problems as "key!".
func (f *fakeSink) summary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k, g := range f.groups {
		s := string(k) + "="
		for _, d := range g.Decls {
			for _, b := range d.Backends {
				s += b.Addr.String()
			}
		}
		if len(g.Problems) > 0 {
			s += "!"
		}
		out = append(out, strings.TrimPrefix(s, "/l4lb/v1/vips/"))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

func (f *fakeSink) isStale() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stale != nil
}

func (f *fakeSink) counts() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.replaces, f.updates
}

func vipValue(ip string, port uint16, backend string) (string, string) {
	v := vip.VIP{Name: fmt.Sprintf("s%d.marathon.l4lb.thisdcos.directory", port), Addr: netip.MustParseAddr(ip), Port: port, Proto: vip.TCP,
		Apps: []string{"/s"}, Backends: []vip.Backend{{Addr: netip.MustParseAddr(backend), Port: 31000, Task: "s.1", App: "/s"}}}
	l, _ := cluster.NewLayout("/l4lb")
	return l.VIPKey(v.Key()), string(cluster.EncodeVIP(v))
}

func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type agent struct {
	src    *cluster.Source
	sink   *fakeSink
	link   *etcdtest.Link
	m      *cluster.SourceMetrics
	cancel context.CancelFunc
	done   chan struct{}
}

func startAgent(t *testing.T, srv *etcdtest.Server, pageSize int) *agent {
	return startAgentProbe(t, srv, pageSize, 300*time.Millisecond)
}

func startAgentProbe(t *testing.T, srv *etcdtest.Server, pageSize int, probe time.Duration) *agent {
	return startAgentOpts(t, srv, cluster.SourceOptions{PageSize: pageSize, Probe: probe, MinRelist: time.Millisecond})
}

func startAgentOpts(t *testing.T, srv *etcdtest.Server, opts cluster.SourceOptions) *agent {
	t.Helper()
	link := srv.Link()
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{srv.Endpoint()}, Dial: link.Dial, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l, _ := cluster.NewLayout("/l4lb")
	m := cluster.NewSourceMetrics(prometheus.NewRegistry())
	a := &agent{link: link, sink: newFakeSink(), m: m, done: make(chan struct{})}
	opts.Metrics = m
	a.src = cluster.NewSource(cli, l, "etcd:"+srv.Endpoint(), opts)
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { defer close(a.done); a.src.Run(ctx, vip.Config{}, a.sink) }()
	t.Cleanup(func() { cancel(); <-a.done; cli.Close() })
	return a
}

// An agent lists every VIP key (page by page, at one revision), then
// receives each change as a delta; a bad value is a problem for its key
// alone; the config is read with the list.
func TestSourceListAndWatch(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, _ := cluster.NewLayout("/l4lb")
	put := func(k, v string) {
		t.Helper()
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	put(l.Config(), string(cluster.EncodeConfig(cluster.Config{Pool4: netip.MustParsePrefix("198.18.0.0/24"),
		Pool6: netip.MustParsePrefix("fd00:198:18::/64"), Domain: "l4lb.thisdcos.directory"})))
	for i := 1; i <= 5; i++ {
		put(vipValue(fmt.Sprintf("198.18.0.%d", i), 80, "198.19.0.11"))
	}
	put(l.VIPs()+"198.18.0.9/tcp/80", `{"vip":`)                                 // invalid JSON
	put(l.VIPs()+"198.18.0.9/tcp", `{}`)                                         // wrong key shape
	put(l.Alloc("s80.marathon.l4lb.thisdcos.directory"), `{"ip4":"198.18.0.1"}`) // not a VIP
	a := startAgent(t, srv, 2)
	want := "198.18.0.1/tcp/80=198.19.0.11 198.18.0.2/tcp/80=198.19.0.11 198.18.0.3/tcp/80=198.19.0.11 198.18.0.4/tcp/80=198.19.0.11 " +
		"198.18.0.5/tcp/80=198.19.0.11 198.18.0.9/tcp/80=! 198.18.0.9/tcp=!"
	waitUntil(t, "the list", 5*time.Second, func() bool { return a.sink.summary() == want })
	if c, ok := a.src.Config(); !ok || c.Pool4.String() != "198.18.0.0/24" {
		t.Fatalf("config %v %v", c, ok)
	}
	// Deltas: a change, a delete, a new key, the bad key fixed.
	put(vipValue("198.18.0.2", 80, "198.19.0.12"))
	if _, err := cli.Delete(ctx, l.VIPs()+"198.18.0.3/tcp/80"); err != nil {
		t.Fatal(err)
	}
	put(vipValue("198.18.0.6", 80, "198.19.0.13"))
	k, v := vipValue("198.18.0.9", 80, "198.19.0.14")
	put(k, v)
	want = "198.18.0.1/tcp/80=198.19.0.11 198.18.0.2/tcp/80=198.19.0.12 198.18.0.4/tcp/80=198.19.0.11 198.18.0.5/tcp/80=198.19.0.11 " +
		"198.18.0.6/tcp/80=198.19.0.13 198.18.0.9/tcp/80=198.19.0.14 198.18.0.9/tcp=!"
	waitUntil(t, "the deltas", 5*time.Second, func() bool { return a.sink.summary() == want })
	if r, u := a.sink.counts(); r != 1 || u < 1 {
		t.Fatalf("%d lists, %d updates: the deltas should not list again", r, u)
	}
	// Relist on request.
	a.src.Relist()
	waitUntil(t, "a relist", 5*time.Second, func() bool { r, _ := a.sink.counts(); return r == 2 })
	if a.sink.summary() != want {
		t.Fatalf("after relist: %s", a.sink.summary())
	}
}

// Cut from etcd, an agent keeps its groups and says it is stale; changes
// made meanwhile (deletions too), then a compaction past its revision:
// after healing it lists again and holds exactly what etcd holds.
func TestSourceCutCompactHeal(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, _ := cluster.NewLayout("/l4lb")
	for i := 1; i <= 3; i++ {
		k, v := vipValue(fmt.Sprintf("198.18.0.%d", i), 80, "198.19.0.11")
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	a := startAgent(t, srv, 0)
	before := "198.18.0.1/tcp/80=198.19.0.11 198.18.0.2/tcp/80=198.19.0.11 198.18.0.3/tcp/80=198.19.0.11"
	waitUntil(t, "the list", 5*time.Second, func() bool { return a.sink.summary() == before })

	a.link.Cut()
	// The probe runs every 5 s and waits for its own timeout: the bound
	// only tells a source that never notices from a slow one.
	waitUntil(t, "stale", 20*time.Second, a.sink.isStale)
	if got := testutil.ToFloat64(a.m.StaleForTest()); got != 1 {
		t.Fatalf("l4lb_etcd_stale %v", got)
	}
	if a.sink.summary() != before {
		t.Fatal("a stale source lost its groups")
	}
	if _, err := cli.Delete(ctx, l.VIPs()+"198.18.0.1/tcp/80"); err != nil {
		t.Fatal(err)
	}
	k, v := vipValue("198.18.0.2", 80, "198.19.0.12")
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	a.link.Heal()
	after := "198.18.0.2/tcp/80=198.19.0.12 198.18.0.3/tcp/80=198.19.0.11"
	waitUntil(t, "healed", 10*time.Second, func() bool { return a.sink.summary() == after && !a.sink.isStale() })
	if r, _ := a.sink.counts(); r != 2 {
		t.Fatalf("%d lists, want a second after the compaction", r)
	}
	if got := testutil.ToFloat64(a.m.RestartsForTest("reconnected")) + testutil.ToFloat64(a.m.RestartsForTest("compacted")); got != 1 {
		t.Fatalf("restarts after the heal: %v", got)
	}
}

// A watch that resumes past a compaction (a short break the probe did not
// see) is told so by etcd, and the source lists again.
func TestSourceCompacted(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, _ := cluster.NewLayout("/l4lb")
	k, v := vipValue("198.18.0.1", 80, "198.19.0.11")
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatal(err)
	}
	a := startAgentProbe(t, srv, 0, time.Hour)
	waitUntil(t, "the list", 5*time.Second, func() bool { return a.sink.summary() == "198.18.0.1/tcp/80=198.19.0.11" })
	a.link.Cut()
	if _, err := cli.Delete(ctx, l.VIPs()+"198.18.0.1/tcp/80"); err != nil {
		t.Fatal(err)
	}
	k, v = vipValue("198.18.0.2", 80, "198.19.0.12")
	resp, err := cli.Put(ctx, k, v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	a.link.Heal()
	waitUntil(t, "listed again", 15*time.Second, func() bool { return a.sink.summary() == "198.18.0.2/tcp/80=198.19.0.12" })
	if got := testutil.ToFloat64(a.m.RestartsForTest("compacted")); got != 1 {
		t.Fatalf("compacted restarts %v", got)
	}
}

// A restart of etcd loses nothing: the watch resumes, and changes made
// after the restart arrive.
func TestSourceEtcdRestart(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	k, v := vipValue("198.18.0.1", 80, "198.19.0.11")
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, srv, 0)
	waitUntil(t, "the list", 5*time.Second, func() bool { return a.sink.summary() == "198.18.0.1/tcp/80=198.19.0.11" })
	srv.Stop()
	// The probe runs every 5 s and waits for its own timeout: the bound
	// only tells a source that never notices from a slow one.
	waitUntil(t, "stale", 20*time.Second, a.sink.isStale)
	if a.sink.summary() != "198.18.0.1/tcp/80=198.19.0.11" {
		t.Fatal("groups lost while etcd is down")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	k, v = vipValue("198.18.0.1", 80, "198.19.0.12")
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the change after the restart", 15*time.Second, func() bool {
		return a.sink.summary() == "198.18.0.1/tcp/80=198.19.0.12" && !a.sink.isStale()
	})
}

func client(t *testing.T, srv *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{srv.Endpoint()}, Dial: srv.Dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// The pipeline's --resync asks for a relist; within MinRelist of the last
// list it is ignored (the watch is reliable; agents relisting every resync
// would load etcd).
func TestSourceRelistBounded(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	k, v := vipValue("198.18.0.1", 80, "198.19.0.11")
	if _, err := cli.Put(context.Background(), k, v); err != nil {
		t.Fatal(err)
	}
	a := startAgentOpts(t, srv, cluster.SourceOptions{MinRelist: time.Hour})
	waitUntil(t, "the list", 5*time.Second, func() bool { r, _ := a.sink.counts(); return r == 1 })
	a.src.Relist()
	time.Sleep(500 * time.Millisecond)
	if r, _ := a.sink.counts(); r != 1 {
		t.Fatalf("%d lists after a Relist within MinRelist", r)
	}
}
