package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
)

// TestMarathonFailoverKeepsConnections: after a Marathon leader failover the
// new leader lists tasks without health results for a while. Unknown is
// not unhealthy: the backends keep their last known state, connections
// held through the VIP stay up, and new ones still spread over both.
func TestMarathonFailoverKeepsConnections(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4fo", 2, 1, "nft")
	agent := topo.Agent.NS
	const port = 8080
	serveBackends(t, topo, port)
	m := startFakeMarathon(t, agent, "127.0.0.1:18081")
	m.set(healthApps(topo, port), "", "")
	args := []string{"--source", "marathon:http://127.0.0.1:18081", "--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64",
		"--state-dir", t.TempDir(), "--dns-listen", "", "--resync", "2s", "--min-sync-interval", "50ms"}
	d := startDaemon(t, agent, args...)
	d.waitHealthy(t)
	addr := netip.AddrPortFrom(netip.MustParseAddr(d.vips(t)[0].IP), 80)

	conns := holdConns(t, topo.Containers[0].NS, addr, 8, "be1", "be2")

	// The failover: streams end, the new leader has no health results.
	noResults := strings.ReplaceAll(healthApps(topo, port), `, "healthCheckResults": [{"alive": true}]`, "")
	if noResults == healthApps(topo, port) {
		t.Fatal("the test's apps did not lose their health results")
	}
	m.failover(noResults)
	// Past the reconnect, its full list and a resync with the kernel read back.
	time.Sleep(3 * time.Second)
	if !strings.Contains(d.logs(), "marathon event stream lost") {
		t.Errorf("the stream did not break:\n%s", d.logs())
	}
	for _, b := range d.vips(t)[0].Backend {
		if b.State != "active" {
			t.Errorf("after the failover %s is %s, want its last known state (active)", b.Task, b.State)
		}
	}
	for i, h := range conns {
		_ = h.c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(h.c, "after failover %d\n", i)
		line, err := h.r.ReadString('\n')
		if err != nil || !strings.Contains(line, fmt.Sprintf("after failover %d", i)) {
			t.Errorf("held connection to %s after the failover: %q, %v", h.name, line, err)
		}
	}
	spread := map[string]int{}
	for range 30 {
		name, err := topo.Containers[0].AskTCP(addr, 2*time.Second)
		if err != nil {
			name = "error"
		}
		spread[name]++
	}
	if spread["be1"] == 0 || spread["be2"] == 0 || spread["error"] > 0 {
		t.Errorf("new connections after the failover: %v, want both backends", spread)
	}

	// A new task that never had results is starting: no traffic to it.
	withNew := strings.Replace(noResults, `"tasks": [`, `"tasks": [{"id": "web.new", "host": "198.19.250.1", "ports": [8080], "state": "TASK_RUNNING"},`, 1)
	m.set(withNew, "", "status_update_event")
	waitFor(t, 5*time.Second, "the new task shows as starting", func() bool {
		for _, b := range d.vips(t)[0].Backend {
			if b.Task == "web.new" {
				return b.State == "starting"
			}
		}
		return false
	})
	_, metrics, _ := d.get("/metrics")
	if !strings.Contains(string(metrics), `l4lb_backends{state="starting"} 1`) {
		t.Errorf("metrics do not count the starting backend")
	}
	out, _ := agent.Run("nft", "list", "map", "inet", "l4lb", "be4")
	if strings.Contains(out, "198.19.250.1") {
		t.Errorf("a starting backend is in the backend map:\n%s", out)
	}
}
