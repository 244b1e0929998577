package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// TestIPVIPGuard runs the daemon in an agent namespace with the app of
// issue 15: labels that would take the agent's loopback, the metadata
// address, a host, a container, multicast, the unspecified address or IPv6
// loopback and link-local. Each is refused and named in /v1/problems and in
// /metrics, nothing is programmed or routed for it, and the agent's own
// services, direct traffic to hosts (from the agent and from a container)
// and the legitimate IP VIP keep working. The agent's networks are read
// again at every sync: an IP VIP inside a network that appears later is
// refused at the next sync, and the new host is reached directly.
func TestIPVIPGuard(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4gd", 2, 1, "nft")
	agent, ctr := topo.Agent.NS, topo.Containers[0]
	be1 := topo.Backends[0]
	const port = 8080
	serveBackends(t, topo, port)
	ctrSrv, err := ctr.Serve("ctr1", netip.AddrPortFrom(ctr.Addr4, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrSrv.Close)

	var tasks []string
	for i, b := range topo.Backends {
		tasks = append(tasks, fmt.Sprintf(`{"id": "web.%d", "host": "%s", "ports": [%d], "state": "TASK_RUNNING"}`, i+1, b.Addr4, port))
	}
	refused := map[string]string{ // label: value
		"VIP_0": "127.0.0.1:22",
		"VIP_1": "169.254.169.254:80",
		"VIP_2": fmt.Sprintf("%s:%d", be1.Addr4, port), // a task host
		"VIP_3": "224.0.0.1:80",
		"VIP_4": "0.0.0.0:80",
		"VIP_5": "[::1]:80",
		"VIP_6": "[fe80::1]:80",
		"VIP_7": "127.0.0.1:62080",                     // the daemon's own API
		"VIP_8": fmt.Sprintf("%s:%d", ctr.Addr4, port), // a container
		"VIP_9": "198.18.200.1:80",                     // outside --ip-vip-ranges
	}
	reasons := map[string]string{
		"VIP_0": "loopback address",
		"VIP_1": "link-local address",
		"VIP_2": "a network this agent is directly connected to",
		"VIP_3": "multicast address",
		"VIP_4": "unspecified address",
		"VIP_5": "loopback address",
		"VIP_6": "link-local address",
		"VIP_7": "loopback address",
		"VIP_8": "a network this agent is directly connected to",
		"VIP_9": "outside --ip-vip-ranges",
	}
	labels, _ := json.Marshal(refused)
	apps := fmt.Sprintf(`{"apps": [
	  {"id": "/hijack", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": %s}]},
	  {"id": "/web", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "198.18.255.1:80", "VIP_1": "198.19.60.5:80"}}],
	   "tasks": [%s]}]}`, labels, strings.Join(tasks, ","))
	dir := t.TempDir()
	appsPath := filepath.Join(dir, "apps.json")
	if err := os.WriteFile(appsPath, []byte(apps), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, agent, "--source", "file:"+appsPath, "--vip-pool", "198.18.0.0/17", "--vip-pool6", "fd00:198:18::/64",
		"--ip-vip-ranges", "198.18.255.0/24,198.19.60.0/24,fd00:198:18::/64", "--state-dir", filepath.Join(dir, "state"),
		"--dns-listen", "127.0.0.1:5353", "--resync", "1s")
	d.waitHealthy(t)

	// Every refused label is named, with its reason.
	code, body, err := d.get("/v1/problems")
	if err != nil || code != 200 {
		t.Fatalf("/v1/problems: %d %v", code, err)
	}
	var problems []vip.Problem
	if err := json.Unmarshal(body, &problems); err != nil {
		t.Fatal(err)
	}
	for label, reason := range reasons {
		if !slices.ContainsFunc(problems, func(p vip.Problem) bool {
			return p.App == "/hijack" && p.Label == label && strings.Contains(p.Reason, "refused: ") && strings.Contains(p.Reason, reason)
		}) {
			t.Errorf("/v1/problems lacks /hijack %s (%s, %s):\n%s", label, refused[label], reason, body)
		}
	}
	if len(problems) != len(refused) {
		t.Errorf("/v1/problems has %d problems, want %d:\n%s", len(problems), len(refused), body)
	}
	_, metrics, _ := d.get("/metrics")
	for label, value := range refused {
		addr := netip.MustParseAddrPort(value).Addr()
		want := fmt.Sprintf(`l4lb_ip_vips_refused{address=%q,app="/hijack",label=%q} 1`, addr, label)
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if want := fmt.Sprintf("l4lb_problems %d", len(refused)); !strings.Contains(string(metrics), want) {
		t.Errorf("/metrics lacks %s", want)
	}

	// explain says why the address is no VIP.
	out, err := agent.Run(l4lbBinary(t), "explain", "127.0.0.1:22")
	if err == nil || !strings.Contains(err.Error(), "exit status 2") ||
		!strings.Contains(out+err.Error(), "app /hijack label VIP_0: IP VIP address 127.0.0.1 refused: loopback address") {
		t.Errorf("explain 127.0.0.1:22: %v\n%s", err, out)
	}

	// Only the legitimate IP VIPs are programmed and routed.
	var got []string
	for _, v := range d.vips(t) {
		got = append(got, v.VIP)
	}
	if want := []string{"198.18.255.1:80", "198.19.60.5:80"}; !slices.Equal(got, want) {
		t.Errorf("/v1/vips = %v, want %v", got, want)
	}
	routes := func() string {
		var out string
		for _, fam := range []string{"-4", "-6"} {
			o, err := agent.Run("ip", fam, "route", "show", "proto", "241")
			if err != nil {
				t.Fatal(err)
			}
			out += o
		}
		return out
	}
	rt := routes()
	for _, want := range []string{"198.18.0.0/17 dev lo", "198.18.255.1 dev lo", "198.19.60.5 dev lo", "fd00:198:18::/64 dev lo"} {
		if !strings.Contains(rt, want) {
			t.Errorf("route %q missing:\n%s", want, rt)
		}
	}
	if n := len(strings.Split(strings.TrimSpace(rt), "\n")); n != 4 {
		t.Errorf("%d routes of l4lb, want 4:\n%s", n, rt)
	}
	table, err := agent.Run("nft", "list", "table", "inet", "l4lb")
	if err != nil {
		t.Fatal(err)
	}
	for _, value := range refused {
		addr := netip.MustParseAddrPort(value).Addr().String()
		if strings.Contains(table, addr+" . tcp") || strings.Contains(table, addr+":") {
			t.Errorf("the table holds refused %s:\n%s", addr, table)
		}
	}

	// The agent's loopback services, direct traffic to hosts and
	// containers, and the legitimate IP VIP all work.
	ask := func(from *netns.NS, to netip.AddrPort) string {
		name, err := from.AskTCP(to, 2*time.Second)
		if err != nil {
			return "error: " + err.Error()
		}
		return name
	}
	if code, _, err := d.get("/healthz"); err != nil || code != 200 {
		t.Errorf("/healthz from the agent: %d %v", code, err)
	}
	for _, c := range []struct {
		from *netns.NS
		what string
	}{{agent, "agent"}, {ctr.NS, "container"}} {
		if got := ask(c.from, netip.AddrPortFrom(be1.Addr4, port)); got != "be1" {
			t.Errorf("direct to host %s from the %s: %s", be1.Addr4, c.what, got)
		}
		seen := map[string]int{}
		for range 20 {
			seen[ask(c.from, netip.MustParseAddrPort("198.18.255.1:80"))]++
		}
		if seen["be1"] == 0 || seen["be2"] == 0 || seen["be1"]+seen["be2"] != 20 {
			t.Errorf("IP VIP 198.18.255.1:80 from the %s: %v", c.what, seen)
		}
	}
	if got := ask(agent, netip.AddrPortFrom(ctr.Addr4, port)); got != "ctr1" {
		t.Errorf("direct to container %s from the agent: %s", ctr.Addr4, got)
	}
	if got := ask(agent, netip.MustParseAddrPort("198.19.60.5:80")); got != "be1" && got != "be2" {
		t.Errorf("IP VIP 198.19.60.5:80 before its network is connected: %s", got)
	}

	// A new interface: 198.19.60.0/24 becomes a connected network with a
	// host at 198.19.60.5. From the next sync on, the IP VIP there is
	// refused, its route and element go, and the host is reached directly.
	host := netns.ForTest(t, "l4gh")
	if err := netns.Veth(agent, "new0", host, "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := agent.Addr("new0", "198.19.60.1/24"); err != nil {
		t.Fatal(err)
	}
	if err := host.Addr("eth0", "198.19.60.5/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Run("ip", "route", "add", "default", "via", "198.19.60.1"); err != nil {
		t.Fatal(err)
	}
	newHost, err := host.Serve("newhost", netip.MustParseAddrPort("198.19.60.5:80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(newHost.Close)
	waitFor(t, 10*time.Second, "IP VIP inside the new network refused", func() bool {
		_, body, err := d.get("/v1/problems")
		var ps []vip.Problem
		if err != nil || json.Unmarshal(body, &ps) != nil {
			return false
		}
		return slices.Contains(ps, vip.Problem{App: "/web", Label: "VIP_1", Refused: "198.19.60.5",
			Reason: "IP VIP address 198.19.60.5 refused: inside 198.19.60.0/24, a network this agent is directly connected to"})
	})
	waitFor(t, 5*time.Second, "route of the refused IP VIP removed", func() bool {
		return !strings.Contains(routes(), "198.19.60.5")
	})
	if got := ask(agent, netip.MustParseAddrPort("198.19.60.5:80")); got != "newhost" {
		t.Errorf("the host on the new network from the agent: %s", got)
	}
	if got := ask(ctr.NS, netip.MustParseAddrPort("198.19.60.5:80")); got != "newhost" {
		t.Errorf("the host on the new network from a container: %s", got)
	}
	if code, _, err := d.get("/healthz"); err != nil || code != 200 {
		t.Errorf("/healthz after the new network: %d %v", code, err)
	}
	if got := ask(agent, netip.MustParseAddrPort("198.18.255.1:80")); got != "be1" && got != "be2" {
		t.Errorf("IP VIP 198.18.255.1:80 after the new network: %s", got)
	}
}

// TestRunRefusesPoolOverAgentNetworks: a pool that overlaps the agent's
// connected networks stops `l4lb run` at start with a clear message, before
// anything is programmed.
func TestRunRefusesPoolOverAgentNetworks(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4gp", 0, 0, "nft")
	agent := topo.Agent.NS
	dir := t.TempDir()
	apps := filepath.Join(dir, "apps.json")
	if err := os.WriteFile(apps, []byte(`[]`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pools []string
		want  string
	}{
		{[]string{"--vip-pool", "198.19.0.0/16"}, "--vip-pool 198.19.0.0/16 overlaps 198.19.0.1/32, addresses of this agent"},
		{[]string{"--vip-pool", "198.19.0.128/25"}, "--vip-pool 198.19.0.128/25 overlaps 198.19.0.255/32, addresses of this agent"},
		{[]string{"--vip-pool6", "fd00:198:19::/120"}, "--vip-pool6 fd00:198:19::/120 overlaps fd00:198:19::/128, addresses of this agent"},
		{[]string{"--vip-pool", "127.0.0.0/16"}, "--vip-pool 127.0.0.0/16 overlaps 127.0.0.0/8: loopback address"},
	} {
		args := append([]string{"run", "--source", "file:" + apps, "--state-dir", filepath.Join(dir, "state"), "--dns-listen", "",
			"--api-listen", "127.0.0.1:0"}, c.pools...)
		if !slices.Contains(c.pools, "--vip-pool") {
			args = append(args, "--vip-pool", "198.18.0.0/16")
		}
		if !slices.Contains(c.pools, "--vip-pool6") {
			args = append(args, "--vip-pool6", "fd00:198:18::/64")
		}
		out, err := agent.Run(l4lbBinary(t), args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v\n%s\nwant an error with %q", c.pools, err, out, c.want)
		}
	}
	if out, _ := agent.Run("nft", "list", "tables"); strings.Contains(out, "l4lb") {
		t.Errorf("a refused start programmed the table: %q", out)
	}
	if out, _ := agent.Run("ip", "route", "show", "proto", "241"); strings.TrimSpace(out) != "" {
		t.Errorf("a refused start added routes: %q", out)
	}
}
