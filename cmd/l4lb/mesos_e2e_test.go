package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/mesos"
	mt "github.com/l4lb/l4lb/mesos/mesostest"
)

// TestMesosEndToEnd runs the daemon against a Mesos-master-shaped server in
// namespaces, with the Kafka service's VIP on two brokers (host network,
// one per agent): the name resolves through l4lb's DNS and reaches the
// brokers; a stream restart keeps the VIP serving; TASK_KILLING keeps held
// connections and, once no broker is active, new ones are refused at once;
// TASK_FAILED resets the held connections of that broker.
func TestMesosEndToEnd(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4ms", 2, 1, "nft", "dig")
	agent := topo.Agent.NS
	const port = 9092
	serveBackends(t, topo, port)
	var ln net.Listener
	if err := agent.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15050"); return err }); err != nil {
		t.Fatal(err)
	}
	master := mt.Start(ln)
	t.Cleanup(master.Close)
	master.SetChunk(512) // the snapshot crosses chunks

	const fw = "b7c9a3e2-0002"
	states := []string{"TASK_RUNNING", "TASK_RUNNING"}
	state := func() mesos.GetState {
		var tasks []mesos.Task
		var agents []mesos.Agent
		for i, b := range topo.Backends {
			id := fmt.Sprintf("S%d", i+1)
			agents = append(agents, mt.Agent(id, b.Addr4.String()))
			if mesos.IsTerminal(states[i]) {
				continue
			}
			tasks = append(tasks, mt.Task(fw, fmt.Sprintf("kafka-%d-broker", i), id, states[i],
				mt.Port(port, "tcp", "VIP_6e0f8a42-93d1-4d0b-8a5c-2f7b1e9c3d40", "broker:9092", "network-scope", "host")))
		}
		return mt.State(tasks, []mesos.Framework{mt.Framework(fw, "kafka")}, agents)
	}
	update := func(i int, st string) {
		states[i] = st
		master.SetState(state()) // what a resubscription would see
		master.Send(mt.Updated(fw, st, mt.Status(fmt.Sprintf("kafka-%d-broker", i), st, float64(time.Now().Unix()), nil)))
	}
	master.SetState(state())

	args := []string{"--source", "mesos:http://127.0.0.1:15050", "--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64",
		"--state-dir", t.TempDir(), "--dns-listen", "127.0.0.1:5354", "--resync", "3s", "--min-sync-interval", "50ms"}
	d := startDaemon(t, agent, args...)
	d.waitHealthy(t)
	vips := d.vips(t)
	if len(vips) != 1 || vips[0].VIP != "broker.kafka.l4lb.thisdcos.directory:9092" || len(vips[0].Backend) != 2 {
		t.Fatalf("/v1/vips = %+v", vips)
	}
	out, err := agent.Run("dig", "+short", "@127.0.0.1", "-p", "5354", "broker.kafka.l4lb.thisdcos.directory", "A")
	if err != nil || strings.TrimSpace(out) != vips[0].IP {
		t.Fatalf("dig broker.kafka.l4lb.thisdcos.directory: %q %v, want %s", out, err, vips[0].IP)
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr(strings.TrimSpace(out)), port)
	ctr := topo.Containers[0].NS
	seen := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			name, err := ctr.AskTCP(addr, 2*time.Second)
			switch {
			case err != nil && netns.IsRefused(err):
				name = "refused"
			case err != nil:
				name = "error: " + err.Error()
			}
			got[name]++
		}
		return got
	}
	if got := seen(30); got["be1"] == 0 || got["be2"] == 0 || got["be1"]+got["be2"] != 30 {
		t.Fatalf("through the Kafka VIP: %v", got)
	}

	// Hold connections to both brokers.
	conns := holdConns(t, ctr, addr, 8, "be1", "be2")
	ping := func(h heldConn) error {
		_ = h.c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintln(h.c, "ping")
		line, err := h.r.ReadString('\n')
		if err == nil && !strings.Contains(line, "ping") {
			err = fmt.Errorf("answer %q", line)
		}
		return err
	}
	checkHeld := func(when string, reset map[string]bool) {
		t.Helper()
		for _, h := range conns {
			err := ping(h)
			switch {
			case reset[h.name] && (err == nil || !(netns.IsRefused(err) || errors.Is(err, io.EOF))):
				// Its flow is gone: the client's next packet is refused (no
				// broker is active), or a segment be2 sends meanwhile reaches
				// the client un-NATed and the connection ends. Either way it
				// is not served any more.
				t.Errorf("%s: held connection to %s: %v, want it reset", when, h.name, err)
			case !reset[h.name] && err != nil:
				t.Errorf("%s: held connection to %s: %v", when, h.name, err)
			}
		}
	}

	// The stream restarts (the master goes away, then has no leader for a
	// while): the VIP keeps serving, and the daemon resubscribes.
	master.Unavailable(2)
	master.CloseStreams()
	if got := seen(10); got["be1"]+got["be2"] != 10 {
		t.Errorf("while the stream is down: %v", got)
	}
	if err := master.WaitSubscribes(2, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := seen(10); got["be1"]+got["be2"] != 10 {
		t.Errorf("after the stream came back: %v", got)
	}
	checkHeld("after the stream restart", nil)

	backendState := func(task string) string {
		for _, v := range d.vips(t) {
			for _, b := range v.Backend {
				if b.Task == task {
					return b.State
				}
			}
		}
		return "gone"
	}
	// kafka-1 (be2) is being killed: it drains. (The bound only tells a
	// daemon that never applies it from a slow one; the figure is logged.)
	update(1, "TASK_KILLING")
	took := waitFor(t, 20*time.Second, "kafka-1 draining", func() bool { return backendState("kafka-1-broker") == "draining" })
	t.Logf("TASK_KILLING in the kernel after %v", took)
	if got := seen(10); got["be1"] != 10 {
		t.Errorf("new connections with be2 draining: %v", got)
	}
	checkHeld("be2 draining", nil)

	// kafka-0 too: no broker is active, new connections are refused at once
	// and the held ones continue.
	update(0, "TASK_KILLING")
	waitFor(t, 5*time.Second, "kafka-0 draining", func() bool { return backendState("kafka-0-broker") == "draining" })
	if got := seen(5); got["refused"] != 5 {
		t.Errorf("new connections with every broker draining: %v, want refused", got)
	}
	checkHeld("both draining", nil)

	// kafka-1 fails: its held connections are reset, kafka-0's continue.
	deleted := func() int {
		_, metrics, _ := d.get("/metrics")
		for _, line := range strings.Split(string(metrics), "\n") {
			if v, ok := strings.CutPrefix(line, "l4lb_conntrack_flows_deleted_total "); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		return 0
	}
	before := deleted()
	update(1, "TASK_FAILED")
	took = waitFor(t, 5*time.Second, "kafka-1 gone", func() bool { return backendState("kafka-1-broker") == "gone" })
	t.Logf("TASK_FAILED in the kernel after %v", took)
	// /v1/vips shows the change once it is in the kernel; the conntrack
	// pass follows it: wait for its witness.
	waitFor(t, 5*time.Second, "be2's flows deleted", func() bool { return deleted() > before })
	checkHeld("be2 failed", map[string]bool{"be2": true})
	if !strings.Contains(d.logs(), `"msg":"mesos subscribed"`) {
		t.Errorf("no subscription in the logs:\n%s", d.logs())
	}
	d.stop(syscall.SIGTERM)
}
