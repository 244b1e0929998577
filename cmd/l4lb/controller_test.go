package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/internal/etcdtest"
	"github.com/l4lb/l4lb/internal/netns"
)

// startController runs `l4lb controller` inside ns with its API on api.
func startController(t *testing.T, ns *netns.NS, api string, args ...string) *daemon {
	t.Helper()
	d := &daemon{ns: ns, api: api, log: &strings.Builder{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	d.cmd = ns.Cmd(context.Background(), l4lbBinary(t), append([]string{"controller", "--api-listen", api}, args...)...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			d.mu.Lock()
			d.log.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
		}
		d.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGCONT)
		d.stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("controller %s log:\n%s", api, d.logs())
		}
	})
	return d
}

// metric returns the value of an unlabelled metric of the daemon, or "".
func (d *daemon) metric(name string) string {
	code, body, err := d.get("/metrics")
	if err != nil || code != 200 {
		return ""
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

func controllerApps(backend string) string {
	return fmt.Sprintf(`{"apps":[{"id":"/web","portDefinitions":[{"port":0,"protocol":"tcp","labels":{"VIP_0":"web:80"}}],
"tasks":[{"id":"web.1","host":%q,"ports":[31000],"state":"TASK_RUNNING"}]},
{"id":"/db","portDefinitions":[{"port":0,"protocol":"tcp","labels":{"VIP_0":"db:5432"}}],
"tasks":[{"id":"db.1","host":%q,"ports":[31001],"state":"TASK_RUNNING"}]}]}`, backend, backend)
}

// The real binary: two controllers, one leads; a leader stopped (SIGSTOP)
// until its lease expires is replaced, and once resumed writes nothing,
// even with new input; kill -9 of the leader hands over within 2 x TTL.
func TestControllerBinary(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli, err := cluster.NewClient(cluster.ClientConfig{Endpoints: []string{srv.Endpoint()}, Dial: srv.Dial})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	dir := t.TempDir()
	appsA, appsB := filepath.Join(dir, "a.json"), filepath.Join(dir, "b.json")
	for path, backend := range map[string]string{appsA: "198.19.0.11", appsB: "198.19.0.22"} {
		if err := os.WriteFile(path, []byte(controllerApps(backend)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const ttl = 2 * time.Second
	common := []string{"--etcd", srv.Endpoint(), "--etcd-lease-ttl", ttl.String(), "--vip-pool", "198.18.0.0/24",
		"--vip-pool6", "fd00:198:18::/64", "--min-sync-interval", "20ms"}
	a := startController(t, srv.NS, "127.0.0.1:62181", append([]string{"--source", "file:" + appsA}, common...)...)
	waitFor(t, 10*time.Second, "a leads", func() bool { return a.metric("l4lb_controller_leader") == "1" })
	b := startController(t, srv.NS, "127.0.0.1:62182", append([]string{"--source", "file:" + appsB}, common...)...)
	waitFor(t, 10*time.Second, "b is healthy", func() bool { code, _, err := b.get("/healthz"); return err == nil && code == 200 })
	if b.metric("l4lb_controller_leader") != "0" {
		t.Fatal("b leads too")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, _ := cluster.NewLayout("/l4lb")
	readVIPs := func() map[string]string {
		kvs, _, err := cluster.List(ctx, cli, l.VIPs(), 0)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, kv := range kvs {
			out[string(kv.Key)] = string(kv.Value)
		}
		return out
	}
	all := func(want string) func() bool {
		return func() bool {
			vs := readVIPs()
			for _, v := range vs {
				if !strings.Contains(v, want) {
					return false
				}
			}
			return len(vs) == 2
		}
	}
	waitFor(t, 5*time.Second, "a's VIPs in etcd", all("198.19.0.11"))
	if vs := a.vips(t); len(vs) != 2 {
		t.Fatalf("a's /v1/vips: %v", vs)
	}

	// SIGSTOP the leader past its TTL: b takes over.
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*ttl+2*time.Second, "b leads", func() bool { return b.metric("l4lb_controller_leader") == "1" })
	waitFor(t, 5*time.Second, "b's VIPs in etcd", all("198.19.0.22"))
	rev, err := cli.Get(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	// a's input changes while it is stopped; then it resumes.
	if err := os.WriteFile(appsA, []byte(controllerApps("198.19.0.13")), 0o644); err != nil {
		t.Fatal(err)
	}
	watch := cli.Watch(ctx, l.VIPs(), clientv3.WithPrefix(), clientv3.WithRev(rev.Header.Revision+1))
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a notices it lost the lead", func() bool { return a.metric("l4lb_controller_leader") == "0" })
	quiet := time.After(2 * time.Second)
	for done := false; !done; {
		select {
		case wr := <-watch:
			for _, ev := range wr.Events {
				t.Fatalf("a write after the resumed leader came back: %s = %s", ev.Kv.Key, ev.Kv.Value)
			}
		case <-quiet:
			done = true
		}
	}
	if b.metric("l4lb_controller_leader") != "1" {
		t.Fatal("b lost the lead")
	}

	// kill -9 of the leader: a leads within 2 x TTL and writes its input.
	killed := time.Now()
	b.stop(syscall.SIGKILL)
	waitFor(t, 2*ttl+time.Second, "a leads again", func() bool { return a.metric("l4lb_controller_leader") == "1" })
	t.Logf("failover after kill -9: %s (ttl %s)", time.Since(killed).Round(time.Millisecond), ttl)
	waitFor(t, 5*time.Second, "a's new VIPs in etcd", all("198.19.0.13"))
}
