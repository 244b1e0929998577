package main

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/etcdtest"
	"github.com/l4lb/l4lb/internal/netns"
)

// An agent on etcd: the controller reads a file and writes etcd, the agent
// (`l4lb run --source etcd:URL`) lists and watches it and programs its
// kernel with the controller's addresses, taking the pools from etcd; flags
// that disagree with them are an error. While etcd is down the agent keeps
// serving and says so; after etcd is back, changes flow again.
func TestRunOnEtcd(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4et", 2, 0, "nft", "etcd")
	agent := topo.Agent.NS
	if _, err := agent.Run("ip", "addr", "add", "198.19.0.250/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	srv := etcdtest.Start(t, etcdtest.Options{NS: agent, Addr: netip.MustParseAddr("198.19.0.250")})
	const port = 8080
	serveBackends(t, topo, port)
	dir := t.TempDir()
	apps := filepath.Join(dir, "apps.json")
	writeApps(t, apps, topo.Backends, port, true)
	ctl := startController(t, agent, "127.0.0.1:62181", "--source", "file:"+apps, "--etcd", srv.Endpoint(),
		"--vip-pool", "198.18.0.0/24", "--vip-pool6", "fd00:198:18::/64", "--min-sync-interval", "20ms")
	waitFor(t, 10*time.Second, "the controller leads", func() bool { return ctl.metric("l4lb_controller_leader") == "1" })

	// A pool flag that disagrees with the cluster's config is an error.
	out, err := agent.Cmd(t.Context(), l4lbBinary(t), "run", "--source", "etcd:"+srv.Endpoint(), "--vip-pool", "198.18.1.0/24",
		"--table", "l4lbbad", "--dns-listen", "", "--api-listen", "127.0.0.1:62183", "--state-dir", filepath.Join(dir, "bad")).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--vip-pool 198.18.1.0/24, etcd pool4 198.18.0.0/24") {
		t.Fatalf("disagreeing --vip-pool: %v\n%s", err, out)
	}

	d := startDaemon(t, agent, "--source", "etcd:"+srv.Endpoint(), "--state-dir", filepath.Join(dir, "state"), "--dns-listen", "",
		"--min-sync-interval", "20ms")
	d.waitHealthy(t)
	var vips []string
	waitFor(t, 5*time.Second, "the agent's VIPs", func() bool {
		vs := d.vips(t)
		vips = nil
		for _, v := range vs {
			vips = append(vips, v.VIP+"@"+v.IP)
		}
		return len(vs) == 2 && len(vs[0].Backend) == 2
	})
	var want []string
	for _, v := range ctl.vips(t) {
		want = append(want, v.VIP+"@"+v.IP)
	}
	if strings.Join(vips, " ") != strings.Join(want, " ") {
		t.Fatalf("agent VIPs %v, controller's %v", vips, want)
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr(strings.Split(vips[0], "@")[1]), 80)
	if !strings.HasPrefix(addr.Addr().String(), "198.18.0.") {
		t.Fatalf("VIP %s is not in the cluster's pool", addr)
	}
	ask := func(n int) map[string]int {
		out := map[string]int{}
		for range n {
			name, err := agent.AskTCP(addr, 2*time.Second)
			if err != nil {
				name = "error: " + err.Error()
			}
			out[name]++
		}
		return out
	}
	if got := ask(20); got["be1"] == 0 || got["be2"] == 0 {
		t.Fatalf("through the VIP: %v", got)
	}

	// A change reaches the agent's kernel through etcd.
	writeApps(t, apps, topo.Backends[:1], port, true)
	took := waitFor(t, 5*time.Second, "be2 removed", func() bool { return len(d.vips(t)[0].Backend) == 1 })
	t.Logf("file -> controller -> etcd -> agent: %s", took)
	if got := ask(10); got["be1"] != 10 {
		t.Fatalf("after removing be2: %v", got)
	}

	// etcd goes down: the agent keeps serving and says it is stale.
	srv.Stop()
	waitFor(t, 15*time.Second, "l4lb_source_stale 1", func() bool { return d.metric("l4lb_source_stale") == "1" })
	if code, body, err := d.get("/healthz"); err != nil || code != 200 || !strings.Contains(string(body), "stale") {
		t.Fatalf("/healthz while etcd is down: %d %q %v", code, body, err)
	}
	if got := ask(10); got["be1"] != 10 {
		t.Fatalf("while etcd is down: %v", got)
	}
	writeApps(t, apps, topo.Backends, port, true)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, 20*time.Second, "be2 back after etcd's restart", func() bool { return len(d.vips(t)[0].Backend) == 2 })
	t.Logf("change made while etcd was down applied %s after its restart", took)
	waitFor(t, 10*time.Second, "l4lb_source_stale 0", func() bool { return d.metric("l4lb_source_stale") == "0" })
	if got := ask(20); got["be1"] == 0 || got["be2"] == 0 {
		t.Fatalf("after etcd's restart: %v", got)
	}
}
