package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/explain"
	"github.com/l4lb/l4lb/internal/netns"
)

// runExplain runs `l4lb explain` inside the namespace and returns its
// standard output and exit status.
func runExplain(t *testing.T, ns *netns.NS, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := ns.Cmd(ctx, l4lbBinary(t), append([]string{"explain"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("explain %v: %v", args, err)
	}
	if code > 2 {
		t.Fatalf("explain %v: exit %d: %s%s", args, code, stdout.String(), stderr.String())
	}
	return stdout.String(), code
}

// explainJSON runs `l4lb explain --json` and decodes the report.
func explainJSON(t *testing.T, ns *netns.NS, args ...string) (explain.Report, int) {
	t.Helper()
	out, code := runExplain(t, ns, append(args, "--json")...)
	var r explain.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("explain %v --json: %v: %s", args, err, out)
	}
	return r, code
}

// explainApps declares: web:80 on two active backends, drain:81 whose only
// task is being killed, empty:82 without tasks, the IP VIP
// 198.18.255.7:83, ghost:85 on a port whose SYNs the backend drops
// (connections hang),
// and six:84 on the backends' IPv6 addresses.
const ghostPort = 8085

func explainApps(topo *netns.Topology, port int) string {
	b0, b1 := topo.Backends[0], topo.Backends[1]
	return fmt.Sprintf(`{"apps": [
 {"id": "/web", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "web:80"}}],
  "tasks": [{"id": "web.0", "host": "%[1]s", "ports": [%[3]d], "state": "TASK_RUNNING"},
            {"id": "web.1", "host": "%[2]s", "ports": [%[3]d], "state": "TASK_RUNNING"}]},
 {"id": "/drain", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "drain:81"}}],
  "tasks": [{"id": "drain.0", "host": "%[1]s", "ports": [%[3]d], "state": "TASK_KILLING"}]},
 {"id": "/empty", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "empty:82"}}]},
 {"id": "/ipvip", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "198.18.255.7:83"}}],
  "tasks": [{"id": "ipvip.0", "host": "%[2]s", "ports": [%[3]d], "state": "TASK_RUNNING"}]},
 {"id": "/ghost", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "ghost:85"}}],
  "tasks": [{"id": "ghost.0", "host": "%[1]s", "ports": [%[6]d], "state": "TASK_RUNNING"}]},
 {"id": "/six", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "six:84"}}],
  "tasks": [{"id": "six.0", "host": "%[4]s", "ports": [%[3]d], "state": "TASK_RUNNING"},
            {"id": "six.1", "host": "%[5]s", "ports": [%[3]d], "state": "TASK_RUNNING"}]}
]}`, b0.Addr4, b1.Addr4, port, b0.Addr6, b1.Addr6, ghostPort)
}

// TestExplain runs the daemon in an agent namespace with two backends and
// asks explain about each kind of target; real traffic from the agent is
// the witness of every verdict, nft and conntrack of what it reports.
func TestExplain(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4ex", 2, 0, "nft", "conntrack")
	agent := topo.Agent.NS
	const port = 8080
	serveBackends(t, topo, port)
	for i, b := range topo.Backends {
		s, err := b.Serve(fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(b.Addr6, port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
	}
	// ghost's backend drops SYNs in its own namespace.
	if _, err := topo.Backends[0].RunStdin([]byte(fmt.Sprintf(
		"table inet blackhole { chain in { type filter hook input priority 0; tcp dport %d drop\n}\n}\n", ghostPort)), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	apps := filepath.Join(dir, "apps.json")
	if err := os.WriteFile(apps, []byte(explainApps(topo, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, agent, "--source", "file:"+apps, "--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64",
		"--state-dir", filepath.Join(dir, "state"), "--dns-listen", "127.0.0.1:5353")
	d.waitHealthy(t)

	addrOf := func(label, proto string) netip.AddrPort {
		t.Helper()
		for _, v := range d.vips(t) {
			if v.VIP == label && v.Protocol == proto {
				return netip.AddrPortFrom(netip.MustParseAddr(v.IP), v.Port)
			}
		}
		t.Fatalf("no VIP %s/%s", label, proto)
		return netip.AddrPort{}
	}
	web := addrOf("web.marathon.l4lb.thisdcos.directory:80", "tcp")
	nft, err := agent.Run("nft", "list", "set", "inet", "l4lb", "vips4")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("served", func(t *testing.T) {
		// A held connection is the conntrack witness.
		conn, err := agent.DialTCP(context.Background(), web)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		greeting, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		heldBy := strings.Fields(greeting)[0]
		out, code := runExplain(t, agent, "web.marathon.l4lb.thisdcos.directory:80", "--proto", "tcp")
		t.Logf("explain web:80 --proto tcp:\n%s", out)
		if code != 0 {
			t.Fatalf("exit %d, want 0", code)
		}
		r, _ := explainJSON(t, agent, "web:80", "--proto", "tcp")
		if r.Verdict != explain.Served || len(r.Entries) != 1 {
			t.Fatalf("report %+v", r)
		}
		e := r.Entries[0]
		if e.Element == nil || e.Element.Set != "vips4" || e.Chain != "lb" || e.Count != 2 ||
			!strings.Contains(nft, fmt.Sprintf("%s . tcp . 80 comment %q", web.Addr(), e.Element.Comment)) ||
			e.Element.Text != fmt.Sprintf("%s . tcp . 80", web.Addr()) {
			t.Errorf("element %+v; nft lists:\n%s", e.Element, nft)
		}
		// The rule explain names is in chain lb as nft lists it.
		if lb, _ := agent.Run("nft", "list", "chain", "inet", "l4lb", "lb"); len(e.Rules) != 1 || !strings.Contains(lb, e.Rules[0]) ||
			e.Rules[0] != "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 offset 1 map @be4" {
			t.Errorf("rules %q; chain lb:\n%s", e.Rules, lb)
		}
		if len(e.Apps) != 1 || e.Apps[0] != "/web" || len(e.Warnings) > 0 {
			t.Errorf("apps %v warnings %v", e.Apps, e.Warnings)
		}
		slots := map[int]bool{}
		ct := 0
		for i, b := range e.Backends {
			if b.State != "active" || b.Slot == nil || b.Map != "be4" {
				t.Errorf("backend %+v", b)
				continue
			}
			slots[*b.Slot] = true
			el := fmt.Sprintf("%s . tcp . 80 . %d : %s . %d", web.Addr(), *b.Slot, b.IP, b.Port)
			if be4, _ := agent.Run("nft", "list", "map", "inet", "l4lb", "be4"); !strings.Contains(be4, el) {
				t.Errorf("be4 lacks %q:\n%s", el, be4)
			}
			if fmt.Sprintf("be%d", i+1) == heldBy && b.Conntrack < 1 {
				t.Errorf("backend %s holds a connection but conntrack = %d", b.IP, b.Conntrack)
			}
			ct += b.Conntrack
		}
		if len(slots) != 2 || ct < 1 {
			t.Errorf("slots %v, conntrack total %d", slots, ct)
		}
		// Both protocols without --proto.
		if r, code := explainJSON(t, agent, "web:80"); code != 0 || len(r.Entries) != 2 {
			t.Errorf("web:80 without --proto: exit %d, %d entries", code, len(r.Entries))
		}
	})

	t.Run("draining", func(t *testing.T) {
		out, code := runExplain(t, agent, "drain.marathon.l4lb.thisdcos.directory:81")
		t.Logf("explain drain:81:\n%s", out)
		if code != 1 || !strings.Contains(out, "no active backend: 1 draining") || !strings.Contains(out, "goto refuse") {
			t.Errorf("exit %d:\n%s", code, out)
		}
		if _, err := agent.AskTCP(addrOf("drain.marathon.l4lb.thisdcos.directory:81", "tcp"), 2*time.Second); !netns.IsRefused(err) {
			t.Errorf("traffic to the draining VIP: %v, want refused", err)
		}
		r, _ := explainJSON(t, agent, "drain:81")
		if len(r.Entries) != 1 || len(r.Entries[0].Backends) != 1 || r.Entries[0].Backends[0].Slot != nil ||
			r.Entries[0].Backends[0].State != "draining" {
			t.Errorf("report %+v", r)
		}
	})

	t.Run("no backends", func(t *testing.T) {
		out, code := runExplain(t, agent, "empty:82")
		t.Logf("explain empty:82:\n%s", out)
		if code != 1 || !strings.Contains(out, "no active backend: the VIP has no backend") ||
			!strings.Contains(out, "meta l4proto tcp reject with tcp reset") {
			t.Errorf("exit %d:\n%s", code, out)
		}
		if _, err := agent.AskTCP(addrOf("empty.marathon.l4lb.thisdcos.directory:82", "tcp"), 2*time.Second); !netns.IsRefused(err) {
			t.Errorf("traffic to the empty VIP: %v, want refused", err)
		}
	})

	t.Run("unknown port", func(t *testing.T) {
		out, code := runExplain(t, agent, "web:9999", "--proto", "tcp")
		t.Logf("explain web:9999:\n%s", out)
		if code != 1 || !strings.Contains(out, "port 9999/tcp is not a VIP port of "+web.Addr().String()) ||
			!strings.Contains(out, "80/tcp, 80/udp") || !strings.Contains(out, "ip daddr 198.18.0.0/16 goto refuse") {
			t.Errorf("exit %d:\n%s", code, out)
		}
		if _, err := agent.AskTCP(netip.AddrPortFrom(web.Addr(), 9999), 2*time.Second); !netns.IsRefused(err) {
			t.Errorf("traffic to an unknown port: %v, want refused", err)
		}
		if out, code := runExplain(t, agent, netip.AddrPortFrom(web.Addr(), 9999).String(), "--proto", "udp"); code != 1 ||
			!strings.Contains(out, "9999/udp is not a VIP port") {
			t.Errorf("by address: exit %d:\n%s", code, out)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		out, code := runExplain(t, agent, "nope:80")
		if code != 2 || !strings.Contains(out, "no VIP is named nope") {
			t.Errorf("unknown name: exit %d:\n%s", code, out)
		}
		out, code = runExplain(t, agent, topo.Backends[0].Addr4.String()+":8080")
		if code != 2 || !strings.Contains(out, "not a VIP address") {
			t.Errorf("an address that is not l4lb's: exit %d:\n%s", code, out)
		}
	})

	t.Run("IP VIP", func(t *testing.T) {
		out, code := runExplain(t, agent, "198.18.255.7:83")
		t.Logf("explain 198.18.255.7:83:\n%s", out)
		if code != 0 || !strings.Contains(out, `"198.18.255.7:83/tcp /ipvip"`) || !strings.Contains(out, "be4[0]") {
			t.Errorf("exit %d:\n%s", code, out)
		}
		if name, err := agent.AskTCP(netip.MustParseAddrPort("198.18.255.7:83"), 2*time.Second); err != nil || name != "be2" {
			t.Errorf("traffic to the IP VIP: %q %v, want be2", name, err)
		}
		out, code = runExplain(t, agent, "198.18.255.7:84")
		if code != 1 || !strings.Contains(out, "port 84/tcp is not a VIP port of 198.18.255.7 (its VIP ports: 83/tcp)") {
			t.Errorf("other port of the IP VIP: exit %d:\n%s", code, out)
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		six := addrOf("six.marathon.l4lb.thisdcos.directory:84", "tcp")
		out, code := runExplain(t, agent, "six:84")
		t.Logf("explain six:84:\n%s", out)
		if code != 0 || !strings.Contains(out, "set vips6") || !strings.Contains(out, "be6[1]") ||
			!strings.Contains(out, six.Addr().String()) {
			t.Errorf("exit %d:\n%s", code, out)
		}
		if _, err := agent.AskTCP(six, 2*time.Second); err != nil {
			t.Errorf("traffic to the IPv6 VIP: %v", err)
		}
	})

	t.Run("trace", func(t *testing.T) {
		before, err := agent.Run("nft", "list", "ruleset")
		if err != nil {
			t.Fatal(err)
		}
		out, code := runExplain(t, agent, "web:80", "--proto", "tcp", "--trace")
		t.Logf("explain web:80 --proto tcp --trace:\n%s", out)
		if code != 0 {
			t.Errorf("exit %d", code)
		}
		for _, want := range []string{
			"output: l4lb explain-trace-", "tcp sport", "meta nftrace set 1 (verdict continue)",
			"output: l4lb nat-output: rule ip daddr . meta l4proto . th dport @vips4 goto lb (verdict goto lb)",
			"output: l4lb lb: rule dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 offset 1 map @be4 (verdict accept)",
			"postrouting: l4lb nat-postrouting: policy accept",
			"DNAT target: 198.19.0.1", "connected to " + web.String(),
		} {
			if !strings.Contains(out, want) {
				t.Errorf("trace lacks %q", want)
			}
		}
		r, _ := explainJSON(t, agent, "empty:82", "--trace")
		if len(r.Entries) != 1 || r.Entries[0].Trace == nil {
			t.Fatalf("trace of the empty VIP: %+v", r)
		}
		tr := r.Entries[0].Trace
		var chains []string
		for _, ev := range tr.Events {
			chains = append(chains, ev.Chain+":"+ev.Verdict)
		}
		if !strings.Contains(strings.Join(chains, " "), "nat-output:goto lb lb:goto refuse refuse:drop") || tr.DNAT != "" ||
			!strings.Contains(tr.Result, "refused") {
			t.Errorf("trace of the empty VIP: %v, DNAT %q, result %q", chains, tr.DNAT, tr.Result)
		}
		out, code = runExplain(t, agent, "six:84", "--trace")
		t.Logf("explain six:84 --trace:\n%s", out)
		if code != 0 || !strings.Contains(out, "@vips6 goto lb (verdict goto lb)") || !strings.Contains(out, "mod 2 offset 1 map @be6 (verdict accept)") ||
			!strings.Contains(out, "DNAT target: [fd00:198:19::") {
			t.Errorf("IPv6 trace: exit %d", code)
		}
		// An unknown port: the pool's refusal, then the refuse chain.
		out, code = runExplain(t, agent, "web:9999", "--proto", "tcp", "--trace")
		t.Logf("explain web:9999 --proto tcp --trace:\n%s", out)
		for _, want := range []string{
			"output: l4lb nat-output: rule ip daddr 198.18.0.0/16 goto refuse (verdict goto refuse)",
			"output: l4lb refuse: rule meta l4proto tcp reject with tcp reset (verdict drop)",
			"refused: connection reset",
		} {
			if code != 1 || !strings.Contains(out, want) {
				t.Errorf("trace of an unknown port: exit %d, lacks %q", code, want)
			}
		}

		// UDP: one datagram, answered by a backend.
		r, code = explainJSON(t, agent, "web:80", "--proto", "udp", "--trace", "--probe-timeout", "10s")
		if code != 0 || len(r.Entries) != 1 || r.Entries[0].Trace == nil || r.Entries[0].Trace.DNAT == "" ||
			!strings.Contains(r.Entries[0].Trace.Result, "answered") {
			t.Errorf("UDP trace: exit %d, %+v", code, r)
		} else if tr := r.Entries[0].Trace; !strings.Contains(tr.Events[0].Rule, "udp dport 80 udp sport") {
			t.Errorf("UDP probe rule %q", tr.Events[0].Rule)
		}

		// Interrupted while the probe hangs (ghost's backend drops SYNs):
		// the probe chain is there while it runs, gone after SIGINT.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := agent.Cmd(ctx, l4lbBinary(t), "explain", "ghost:85", "--trace", "--probe-timeout", "25s")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the probe chain while the probe hangs", func() bool {
			out, _ := agent.Run("nft", "list", "table", "inet", "l4lb")
			return strings.Contains(out, "chain explain-trace-")
		})
		// ip netns exec execs the command: the process is l4lb's.
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("interrupted explain: %v, want exit status 3", err)
		}

		// The probe rules are gone; nothing else changed.
		after, err := agent.Run("nft", "list", "ruleset")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(after, "explain-trace") || after != before {
			t.Errorf("ruleset changed by --trace:\n%s", diffText(before, after))
		}
	})
}

// diffText lists the lines only one of the two texts has.
func diffText(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestExplainUsage: usage errors and an unreachable daemon are no answer
// (exit status 3), never one of the answers 0, 1, 2.
func TestExplainUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	for _, args := range [][]string{
		{}, {"web"}, {"web:80", "--proto", "sctp"}, {"web:80", "extra:1"}, {"--bogus", "web:80"},
		{"web:80", "--api", "127.0.0.1:1"},
	} {
		err := runMain(context.Background(), append([]string{"explain"}, args...), &out, &errOut)
		var st *exitStatus
		if !errors.As(err, &st) || st.code != explainFailed {
			t.Errorf("explain %q: %v, want exit status %d", args, err, explainFailed)
		}
	}
}
