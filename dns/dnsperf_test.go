package dns

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/vip"
)

// The dnsperf benchmark is off by default: it takes tens of seconds and
// both cores. Run it with
//
//	go test ./dns -run DNSPerf -dnsperf -v
//
// (or L4LB_DNSPERF=1). It serves a zone of 1,000 VIP names in a namespace
// and runs dnsperf against 127.0.0.1 there: a closed-loop run for the
// highest rate, and an open-loop run at -dnsperf.qps in which a second
// dnsperf probes at 2,000 queries per second with -v, whose per-query
// latencies give the percentiles under that load. Side by side: one
// SO_REUSEPORT socket per CPU without recvmmsg/sendmmsg batches, one socket
// with batches, and the server's own setting, a socket per CPU with batches.
var (
	dnsperfOn      = flag.Bool("dnsperf", os.Getenv("L4LB_DNSPERF") != "", "run the dnsperf benchmark")
	dnsperfTime    = flag.Duration("dnsperf.time", 5*time.Second, "length of each dnsperf run")
	dnsperfQPS     = flag.Int("dnsperf.qps", 50000, "offered load of the latency runs, queries per second")
	dnsperfProfile = flag.String("dnsperf.cpuprofile", "", "write a CPU profile of the server during the last latency run")
)

// perfState is a state of n named VIPs: every tenth has an IPv6 address
// too.
func perfState(t testing.TB, n int) vip.State {
	var apps []string
	for i := range n {
		var tasks string
		if i%10 == 0 {
			tasks = fmt.Sprintf(`, "networks": [{"mode": "container", "name": "dual"}],
			  "container": {"portMappings": [{"containerPort": 80, "labels": {"VIP_0": "svc%d:80"}}]},
			  "tasks": [{"id": "t%d", "host": "198.19.0.11", "state": "TASK_RUNNING", "ipAddresses": [
			    {"ipAddress": "198.19.1.%d"}, {"ipAddress": "fd00:198:19::1:%x"}]}]`, i, i, i%250+1, i+1)
		} else {
			tasks = fmt.Sprintf(`, "portDefinitions": [{"port": 80, "labels": {"VIP_0": "svc%d:80"}}],
			  "tasks": [{"id": "t%d", "host": "198.19.0.11", "ports": [%d], "state": "TASK_RUNNING"}]`, i, i, 20000+i)
		}
		apps = append(apps, fmt.Sprintf(`{"id": "/svc%d"%s}`, i, tasks))
	}
	return desired(t, []byte("["+strings.Join(apps, ",")+"]"))
}

// perfQueries is dnsperf's input: per 20 queries, 14 A answers, 2 AAAA
// answers, 2 NODATA and 2 NXDOMAIN, names spread over the zone.
func perfQueries(n int) []byte {
	var b bytes.Buffer
	for i := range 20 * n {
		svc := (i * 7919) % n // a stride through the names
		name := fmt.Sprintf("svc%d.marathon.l4lb.thisdcos.directory", svc)
		switch i % 20 {
		case 0, 10:
			fmt.Fprintf(&b, "svc%d.marathon.l4lb.thisdcos.directory AAAA\n", svc-svc%10)
		case 5:
			fmt.Fprintf(&b, "svc%d.marathon.l4lb.thisdcos.directory AAAA\n", svc|1) // IPv4 only: NODATA
		case 15:
			fmt.Fprintf(&b, "%s MX\n", name)
		case 3, 13:
			fmt.Fprintf(&b, "nosuch%d.marathon.l4lb.thisdcos.directory A\n", svc)
		default:
			fmt.Fprintf(&b, "%s A\n", name)
		}
	}
	return b.Bytes()
}

// perfResult is what one dnsperf run reports.
type perfResult struct {
	qps       float64
	sent      int
	lost      int
	avg       float64 // seconds
	latencies []float64
}

var (
	reQPS  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reSent = regexp.MustCompile(`Queries sent:\s+([0-9]+)`)
	reLost = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	reAvg  = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
)

// dnsperfCmd starts dnsperf in the namespace against addr; verbose adds
// -v, a line with the latency of every query.
func dnsperfCmd(ns *netns.NS, addr, queries string, verbose bool, args ...string) (*exec.Cmd, *bytes.Buffer) {
	host, port, _ := strings.Cut(addr, ":")
	all := append([]string{"-s", host, "-p", port, "-d", queries, "-l", strconv.Itoa(int(dnsperfTime.Seconds()))}, args...)
	if verbose {
		all = append(all, "-v")
	}
	cmd := ns.Cmd(context.Background(), "dnsperf", all...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 30 * time.Second
	return cmd, &out
}

// parseDNSPerf reads dnsperf's statistics and, from -v lines, every
// query's latency.
func parseDNSPerf(t *testing.T, out []byte) perfResult {
	t.Helper()
	var r perfResult
	num := func(re *regexp.Regexp) float64 {
		m := re.FindSubmatch(out)
		if m == nil {
			t.Fatalf("dnsperf output without %s:\n%s", re, out)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	r.qps, r.sent, r.lost, r.avg = num(reQPS), int(num(reSent)), int(num(reLost)), num(reAvg)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "> ") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			r.latencies = append(r.latencies, v)
		}
	}
	slices.Sort(r.latencies)
	return r
}

// runDNSPerf runs the dnsperf processes at the same time, to their end.
func runDNSPerf(t *testing.T, cmds ...*exec.Cmd) {
	t.Helper()
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatalf("start dnsperf: %v", err)
		}
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("dnsperf %v: %v\n%s", c.Args, err, c.Stdout)
		}
	}
}

// pct is the p-th percentile of sorted latencies.
func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// perQuery is the server's CPU time per query answered in a run.
func perQuery(cpu time.Duration, r perfResult) string {
	done := r.qps * dnsperfTime.Seconds()
	if done == 0 {
		return "-"
	}
	return us(cpu.Seconds() / done)
}

// machineBusy is the CPU time all CPUs of the machine have spent busy
// (/proc/stat: everything but idle and iowait).
func machineBusy(t *testing.T) time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest times are in user already
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// childCPU is the CPU time a finished command used.
func childCPU(c *exec.Cmd) time.Duration {
	return c.ProcessState.UserTime() + c.ProcessState.SystemTime()
}

// loadavg is the machine's load average: the benchmark shares the CPUs.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func us(s float64) string { return fmt.Sprintf("%.0fµs", s*1e6) }

func TestDNSPerf(t *testing.T) {
	if !*dnsperfOn {
		t.Skip("benchmark: run with go test ./dns -run DNSPerf -dnsperf -v")
	}
	ns := netns.ForTest(t, "l4dnsp", "dnsperf")
	const names = 1000
	zone := Records(perfState(t, names), "")
	queries := filepath.Join(t.TempDir(), "queries.txt")
	if err := os.WriteFile(queries, perfQueries(names), 0o644); err != nil {
		t.Fatal(err)
	}
	type config struct {
		name    string
		sockets int
		batch   int
	}
	cpus := runtime.GOMAXPROCS(0)
	configs := []config{
		{fmt.Sprintf("%d sockets, no batching", cpus), cpus, 1},
		{"1 socket, batches", 1, 0},
		{fmt.Sprintf("%d sockets, batches", cpus), cpus, 0},
	}
	var report []string
	report = append(report, fmt.Sprintf("dnsperf 2.10 against l4lb's DNS server in a namespace, 127.0.0.1, %d names, %d CPUs, %v per run",
		names, runtime.NumCPU(), *dnsperfTime))
	report = append(report, fmt.Sprintf("load average before: %s", loadavg()))
	report = append(report, fmt.Sprintf("%-26s %8s %8s | %8s %8s %8s %8s %8s %8s %8s %8s %5s %7s",
		"server", "max qps", "cpu/q", "offered", "got qps", "cpu/q", "avg", "p50", "p90", "p99", "p99.9", "lost", "others"))
	for i, c := range configs {
		srv, err := New(Config{Listen: []string{fmt.Sprintf("127.0.0.1:%d", 5400+i)}})
		if err != nil {
			t.Fatal(err)
		}
		srv.udpSockets, srv.udpBatch = c.sockets, c.batch
		srv.Publish(zone)
		startServer(t, ns, srv)
		addr := srv.Addrs()[0].String()

		// Closed loop: 8 client sockets, 200 queries in flight.
		cmd, out := dnsperfCmd(ns, addr, queries, false, "-c", "8", "-q", "200")
		cpu0 := cpuTime(t)
		runDNSPerf(t, cmd)
		maxCPU := cpuTime(t) - cpu0
		maxRun := parseDNSPerf(t, out.Bytes())

		// Open loop at the target rate: a load at the rate minus 2,000
		// queries per second, and a probe at 2,000 per second whose -v
		// lines give the latency percentiles under that load (-v on the
		// whole load would cost dnsperf more CPU than the server).
		var stop func()
		if *dnsperfProfile != "" && i == len(configs)-1 {
			f, err := os.Create(*dnsperfProfile)
			if err != nil {
				t.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				t.Fatal(err)
			}
			stop = func() { pprof.StopCPUProfile(); f.Close() }
		}
		const probeQPS = 2000
		load, loadOut := dnsperfCmd(ns, addr, queries, false, "-c", "8", "-q", "500", "-Q", strconv.Itoa(*dnsperfQPS-probeQPS))
		probe, probeOut := dnsperfCmd(ns, addr, queries, true, "-c", "1", "-q", "100", "-Q", strconv.Itoa(probeQPS))
		cpu0 = cpuTime(t)
		busy0 := machineBusy(t)
		runDNSPerf(t, load, probe)
		latCPU := cpuTime(t) - cpu0
		// What the rest of the machine used meanwhile: all busy time
		// minus the server's and the two dnsperf processes'.
		// The two accountings differ by some percent: clamp at zero.
		others := max(machineBusy(t)-busy0-latCPU-childCPU(load)-childCPU(probe), 0)
		if stop != nil {
			stop()
		}
		lat, pr := parseDNSPerf(t, loadOut.Bytes()), parseDNSPerf(t, probeOut.Bytes())
		lat.qps += pr.qps
		lat.lost += pr.lost
		lat.latencies = pr.latencies
		l := lat.latencies
		report = append(report, fmt.Sprintf("%-26s %8.0f %8s | %8d %8.0f %8s %8s %8s %8s %8s %8s %5d %6.0f%%",
			c.name, maxRun.qps, perQuery(maxCPU, maxRun), *dnsperfQPS, lat.qps, perQuery(latCPU, lat),
			us(lat.avg), us(pct(l, 50)), us(pct(l, 90)), us(pct(l, 99)), us(pct(l, 99.9)), lat.lost,
			100*others.Seconds()/dnsperfTime.Seconds()))
		if maxRun.lost > 0 {
			report = append(report, fmt.Sprintf("  (closed loop lost %d of %d queries)", maxRun.lost, maxRun.sent))
		}
	}
	report = append(report, fmt.Sprintf("load average after: %s", loadavg()),
		"max qps: closed loop, 8 clients, 200 in flight; cpu/q: CPU time of the server process (user+system) per query;",
		"offered: open loop (dnsperf -Q); avg: dnsperf's average over the load; percentiles: the 2,000 qps probe under that load;",
		"others: CPU used by other processes of the machine during the open-loop run, in % of one CPU, roughly (the machine is shared)")
	t.Log("\n" + strings.Join(report, "\n"))
	fmt.Println(strings.Join(report, "\n"))
}
