package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/mesos"
	mt "github.com/l4lb/l4lb/mesos/mesostest"
	"github.com/l4lb/l4lb/sync/api"
)

// BenchmarkMesosTaskUpdated runs the daemon in a namespace against a Mesos
// master holding N tasks (10 per VIP, on 250 agents) and reports the cold
// load (start to /healthz 200: subscribe, decode the snapshot, program the
// kernel) and then, for 20 TASK_UPDATED events (a task's health flips),
// the time from the event to the end of the sync that put it in the kernel
// (counted in /metrics): p50 and p99. Also the daemon's RSS.
//
//	go test ./cmd/l4lb -run '^$' -bench MesosTaskUpdated -benchtime 1x
func BenchmarkMesosTaskUpdated(b *testing.B) {
	for _, n := range []int{1000, 50000} {
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			for range b.N {
				benchMesos(b, n)
			}
		})
	}
}

func benchMesos(b *testing.B, n int) {
	ns := netns.ForTest(b, "l4mb", "nft")
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:15050"); return err }); err != nil {
		b.Fatal(err)
	}
	master := mt.Start(ln)
	b.Cleanup(master.Close)
	const fw, agents = "fw-bench", 250
	var ags []mesos.Agent
	for j := range agents {
		ags = append(ags, mt.Agent(fmt.Sprintf("S%d", j), fmt.Sprintf("198.19.%d.%d", 10+j/250, 1+j%250)))
	}
	tasks := make([]mesos.Task, n)
	for i := range n {
		tasks[i] = mt.Task(fw, fmt.Sprintf("svc-%d.%d", i/10, i%10), fmt.Sprintf("S%d", i%agents), "TASK_RUNNING",
			mt.Port(uint32(20000+i/agents), "tcp", "VIP_0", fmt.Sprintf("svc-%d:80", i/10), "network-scope", "host"))
	}
	master.SetState(mt.State(tasks, []mesos.Framework{mt.Framework(fw, "bench")}, ags))
	l4lbBinary(b) // built before the clock starts
	start := time.Now()
	d := startDaemon(b, ns, "--source", "mesos:http://127.0.0.1:15050", "--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64",
		"--state-dir", b.TempDir(), "--dns-listen", "", "--resync", "10m", "--min-sync-interval", "50ms")
	for {
		if code, _, err := d.get("/healthz"); err == nil && code == 200 {
			break
		}
		if time.Since(start) > 3*time.Minute {
			b.Fatalf("not healthy after 3 minutes:\n%s", d.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cold := time.Since(start)

	// The witness is the count of incremental syncs in /metrics: a sync is
	// counted once its change is in the kernel (and conntrack and DNS
	// followed). A filtered GET /v1/vips would do too, but it costs more
	// than the change at this size.
	syncs := func() int {
		_, body, err := d.get("/metrics")
		if err != nil {
			return -1
		}
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, `l4lb_sync_duration_seconds_count{kind="incremental"} `); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		return 0
	}
	var lat []time.Duration
	for i := range 20 {
		time.Sleep(200 * time.Millisecond) // let the daemon settle: one change at a time
		k := (i / 2 * 977) % n             // a task turns unhealthy, then healthy again
		task := tasks[k].TaskID.Value
		before := syncs()
		sent := time.Now()
		master.Send(mt.Updated(fw, "TASK_RUNNING", mt.Status(task, "TASK_RUNNING", float64(100+i), mt.Bool(i%2 == 1))))
		for syncs() <= before {
			if time.Since(sent) > 30*time.Second {
				b.Fatalf("change %d not applied after 30s:\n%s", i, d.logs())
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(sent))
	}
	want := "active " + tasks[(9*977)%n].TaskID.Value
	if _, body, _ := d.get(fmt.Sprintf("/v1/vips?name=svc-%d.bench.l4lb.thisdcos.directory", (9*977)%n/10)); !hasBackend(body, want) {
		b.Errorf("after the changes, /v1/vips lacks %q", want)
	}
	if os.Getenv("L4LB_BENCH_LOGS") != "" {
		b.Logf("daemon log:\n%s", d.logs())
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	rss := daemonRSS(d)
	b.ReportMetric(cold.Seconds(), "cold-load-s")
	b.ReportMetric(float64(p(0.5).Microseconds())/1000, "update-p50-ms")
	b.ReportMetric(float64(p(0.99).Microseconds())/1000, "update-p99-ms")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.Logf("%d tasks (%d VIPs): cold load %v; TASK_UPDATED to the kernel p50 %v p99 %v (20 changes); RSS %d MiB",
		n, n/10, cold.Round(time.Millisecond), p(0.5), p(0.99), rss>>20)
}

// hasBackend reports whether a /v1/vips answer has a backend "STATE TASK".
func hasBackend(body []byte, want string) bool {
	var vips []api.VIP
	if json.Unmarshal(body, &vips) != nil {
		return false
	}
	for _, v := range vips {
		for _, b := range v.Backend {
			if b.State+" "+b.Task == want {
				return true
			}
		}
	}
	return false
}

// daemonRSS reads the daemon's resident set size in bytes.
func daemonRSS(d *daemon) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
