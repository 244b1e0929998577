package controller_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/cluster/controller"
	"github.com/l4lb/l4lb/internal/etcdtest"
	"github.com/l4lb/l4lb/sync/runner"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

func client(t *testing.T, srv *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{srv.Endpoint()}, Dial: srv.Dial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func layout(t *testing.T) cluster.Layout {
	l, err := cluster.NewLayout("/l4lb")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// appsJSON is a Marathon app list: app i declares name<i>:80 with one task
// at backend.
func appsJSON(n int, backend string) string {
	var apps []string
	for i := range n {
		apps = append(apps, fmt.Sprintf(`{"id":"/app%d","portDefinitions":[{"port":0,"protocol":"tcp","labels":{"VIP_0":"name%d:80"}}],
"tasks":[{"id":"app%d.t1","host":%q,"ports":[31000],"state":"TASK_RUNNING"}]}`, i, i, i, backend))
	}
	return `{"apps":[` + strings.Join(apps, ",") + `]}`
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// vips reads the VIP keys from etcd.
func vips(t *testing.T, cli *clientv3.Client, l cluster.Layout) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kvs, _, err := cluster.List(ctx, cli, l.VIPs(), 7)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// The writer sends only what changed, in bounded transactions, and a
// writer whose election key is gone (its lease expired: the process was
// stopped) cannot write at all.
func TestWriterGuard(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	l := layout(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(s, l.Leader())
	if err := e.Campaign(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := controller.NewMetrics(reg)
	w := controller.NewWriter(cli, l, e.Key(), e.Rev(), m)
	desired := map[string]string{}
	for i := range 300 {
		desired[fmt.Sprintf("%s198.18.%d.%d/tcp/80", l.VIPs(), i/250, i%250+1)] = fmt.Sprintf(`{"n":%d}`, i)
	}
	desired[l.Config()] = "c"
	st, err := w.Write(ctx, desired)
	if err != nil || st.Puts != 301 || st.Txns != 3 {
		t.Fatalf("first write: %+v %v", st, err)
	}
	if got := vips(t, cli, l); len(got) != 300 {
		t.Fatalf("%d VIP keys in etcd", len(got))
	}
	// One change, one put.
	desired[l.VIPs()+"198.18.0.1/tcp/80"] = `{"n":"changed"}`
	delete(desired, l.VIPs()+"198.18.0.2/tcp/80")
	if st, err = w.Write(ctx, desired); err != nil || st.Puts != 1 || st.Deletes != 1 || st.Txns != 1 {
		t.Fatalf("second write: %+v %v", st, err)
	}
	// A new writer learns what etcd holds and writes nothing.
	w2 := controller.NewWriter(cli, l, e.Key(), e.Rev(), nil)
	if st, err = w2.Write(ctx, desired); err != nil || st.Txns != 0 {
		t.Fatalf("write of an unchanged state: %+v %v", st, err)
	}

	// The lease expires (as for a stopped process): the election key is
	// gone, every write is refused and etcd is untouched.
	if _, err := cli.Revoke(ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	before := vips(t, cli, l)
	desired[l.VIPs()+"198.18.0.3/tcp/80"] = `{"n":"deposed"}`
	if _, err := w.Write(ctx, desired); !errors.Is(err, controller.ErrNotLeader) {
		t.Fatalf("write after the lease expired: %v", err)
	}
	if after := vips(t, cli, l); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("a deposed writer changed etcd")
	}
	if n := testutil.ToFloat64(m.TxnsForTest("not_leader")); n != 1 {
		t.Fatalf("not_leader txns %v", n)
	}
	// Another controller elected meanwhile: the old key's revision does not
	// come back.
	s2, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := concurrency.NewElection(s2, l.Leader()).Campaign(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(ctx, desired); !errors.Is(err, controller.ErrNotLeader) {
		t.Fatalf("write under another leader: %v", err)
	}
}

type instance struct {
	c      *controller.Controller
	link   *etcdtest.Link
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}
}

func startController(t *testing.T, srv *etcdtest.Server, name, appsFile string, ttl time.Duration) *instance {
	return startControllerWith(t, srv, name, appsFile, ttl, nil)
}

func startControllerWith(t *testing.T, srv *etcdtest.Server, name, appsFile string, ttl time.Duration, m *controller.Metrics) *instance {
	t.Helper()
	link := srv.Link()
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{srv.Endpoint()}, Dial: link.Dial})
	if err != nil {
		t.Fatal(err)
	}
	f := source.NewFile(appsFile)
	f.Poll = 20 * time.Millisecond
	c := controller.New(controller.Config{
		Client: cli, Layout: layout(t), TTL: ttl, Name: name, Metrics: m,
		Sources: []source.Source{f},
		Model:   vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/29"), Pool6: netip.MustParsePrefix("fd00:198:18::/120")},
		Runner:  runner.Options{BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond},
	})
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{c: c, link: link, cli: cli, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(in.done); c.Run(ctx) }()
	t.Cleanup(in.stop)
	return in
}

func (in *instance) stop() {
	in.cancel()
	<-in.done
	in.cli.Close()
}

// Two controllers: one leads and writes; the other waits. When the leader
// dies without stepping down (its client is cut, as by kill -9), the other
// leads within 2 x TTL and keeps the addresses the first allocated, even
// for names that collide in a small pool.
func TestTwoControllersFailover(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	l := layout(t)
	dir := t.TempDir()
	apps := filepath.Join(dir, "apps.json")
	writeFile(t, apps, appsJSON(5, "198.19.0.11"))
	const ttl = 2 * time.Second
	a := startController(t, srv, "a", apps, ttl)
	waitFor(t, "a leads", 10*time.Second, func() bool { return a.c.Status().Leader && a.c.Status().Written })
	b := startController(t, srv, "b", apps, ttl)
	waitFor(t, "b campaigns", 10*time.Second, func() bool { return b.c.Status().Session })
	first := vips(t, cli, l)
	if len(first) != 5 {
		t.Fatalf("VIPs in etcd: %v", first)
	}
	time.Sleep(300 * time.Millisecond)
	if b.c.Status().Leader {
		t.Fatal("two leaders")
	}

	// kill -9 of the leader: its connections go, its lease stays until
	// the TTL runs out.
	killed := time.Now()
	a.link.Cut()
	took := waitFor(t, "b leads", 2*ttl+time.Second, func() bool { return b.c.Status().Leader })
	t.Logf("the other controller leads %s after the leader died (ttl %s)", took, ttl)
	if since := time.Since(killed); since > 2*ttl {
		t.Errorf("failover took %s, more than 2 x TTL", since)
	}
	waitFor(t, "b writes", 5*time.Second, func() bool { return b.c.Status().Written })
	if got := vips(t, cli, l); fmt.Sprint(got) != fmt.Sprint(first) {
		t.Fatalf("the new leader moved VIPs:\n%v\n%v", got, first)
	}
	// Changes flow again through the new leader.
	writeFile(t, apps, appsJSON(5, "198.19.0.12"))
	waitFor(t, "the change reaches etcd", 5*time.Second, func() bool {
		for _, v := range vips(t, cli, l) {
			if !strings.Contains(v, "198.19.0.12") {
				return false
			}
		}
		return true
	})
}

// A leader whose session expired (stopped past its TTL) is deposed: the
// other controller leads, and the old one, with different input, never
// changes what the new leader wrote.
func TestDeposedLeaderNeverWrites(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	l := layout(t)
	dir := t.TempDir()
	appsA, appsB := filepath.Join(dir, "a.json"), filepath.Join(dir, "b.json")
	writeFile(t, appsA, appsJSON(2, "198.19.0.11"))
	writeFile(t, appsB, appsJSON(2, "198.19.0.22"))
	a := startController(t, srv, "a", appsA, 2*time.Second)
	waitFor(t, "a leads", 10*time.Second, func() bool { return a.c.Status().Written })
	b := startController(t, srv, "b", appsB, 2*time.Second)
	waitFor(t, "b campaigns", 10*time.Second, func() bool { return b.c.Status().Session })

	// Expire a's lease behind its back, as if it had been stopped.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, l.Leader(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil || len(resp.Kvs) != 2 || string(resp.Kvs[0].Value) != "a" {
		t.Fatalf("election keys: %v %v", resp, err)
	}
	watch := cli.Watch(ctx, l.VIPs(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	// a's input changes at once: it would write now if it could.
	writeFile(t, appsA, appsJSON(2, "198.19.0.13"))
	waitFor(t, "b leads and writes", 10*time.Second, func() bool { return b.c.Status().Leader && b.c.Status().Written })
	// Every write to the VIPs from now on is b's.
	deadline := time.After(1500 * time.Millisecond)
	for done := false; !done; {
		select {
		case wr := <-watch:
			for _, ev := range wr.Events {
				if strings.Contains(string(ev.Kv.Value), "198.19.0.11") || strings.Contains(string(ev.Kv.Value), "198.19.0.13") {
					t.Fatalf("the deposed leader wrote %s = %s", ev.Kv.Key, ev.Kv.Value)
				}
			}
		case <-deadline:
			done = true
		}
	}
	for k, v := range vips(t, cli, l) {
		if !strings.Contains(v, "198.19.0.22") {
			t.Fatalf("%s = %s, not the new leader's", k, v)
		}
	}
	if a.c.Status().Leader {
		t.Fatal("the deposed controller still thinks it leads")
	}
}

// Between full writes, a change writes only the keys it reached: one
// backend moves, one key is put; an app goes, its VIP and its name's
// allocation are deleted.
func TestIncrementalWrites(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli := client(t, srv)
	l := layout(t)
	apps := filepath.Join(t.TempDir(), "apps.json")
	writeFile(t, apps, appsJSON(5, "198.19.0.11"))
	m := controller.NewMetrics(prometheus.NewRegistry())
	a := startControllerWith(t, srv, "a", apps, 2*time.Second, m)
	waitFor(t, "a writes", 10*time.Second, func() bool { return a.c.Status().Written })
	puts := testutil.ToFloat64(m.WritesForTest("put"))
	if puts != 11 { // config, 5 allocations, 5 VIPs
		t.Fatalf("first write: %v puts", puts)
	}
	one := strings.Replace(appsJSON(5, "198.19.0.11"), `"app2.t1","host":"198.19.0.11"`, `"app2.t1","host":"198.19.0.12"`, 1)
	writeFile(t, apps, one)
	waitFor(t, "the change", 5*time.Second, func() bool { return testutil.ToFloat64(m.WritesForTest("put")) > puts })
	time.Sleep(200 * time.Millisecond)
	if got := testutil.ToFloat64(m.WritesForTest("put")); got != puts+1 {
		t.Fatalf("one backend changed: %v puts", got-puts)
	}
	writeFile(t, apps, appsJSON(4, "198.19.0.11"))
	waitFor(t, "the app goes", 5*time.Second, func() bool { return testutil.ToFloat64(m.WritesForTest("delete")) == 2 })
	if got := vips(t, cli, l); len(got) != 4 {
		t.Fatalf("VIPs in etcd: %v", got)
	}
}
