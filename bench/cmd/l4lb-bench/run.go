package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/l4lb/l4lb/bench/layout"
	"github.com/l4lb/l4lb/bench/report"
)

// config is one benchmark run.
type config struct {
	mode         string
	out          string
	readme       string
	bin          string
	l4lb         string // auto, nft or daemon
	client       string // container or agent
	items        map[string]bool
	runs         int // iperf3 runs through the VIP and direct
	workers      int
	connPairs    int           // rounds of slices (VIP, direct, reference) of item 2
	connSlice    time.Duration // one slice of item 2
	scalePairs   int           // rounds at each size of item 3
	scaleSlice   time.Duration
	iperfTime    time.Duration // per iperf3 run
	convergeTime time.Duration // load after the health change
	convergeWait time.Duration // longest wait for conntrack entries to go
	sizes        []int
	controlSizes []int
	loadBudget   time.Duration
	apiPort      int
	nice         int
	layouts      map[string]bool // layouts of the scale item
}

var allLayouts = []string{"l4lb", "kube-nftables", "kube-iptables"}

var allItems = []string{"throughput", "conn", "scale", "control", "marathon", "converge"}

// defaults per mode: quick runs everything with short runs and small sizes
// in under two minutes; full is the real measurement.
func (c *config) defaults() error {
	switch c.mode {
	case "quick":
		c.runs, c.workers = 3, 4
		c.connPairs, c.connSlice = 16, 150*time.Millisecond
		c.scalePairs, c.scaleSlice = 8, 150*time.Millisecond
		c.iperfTime, c.convergeTime, c.convergeWait = time.Second, 3*time.Second, 5*time.Second
		c.sizes = []int{1, 1000, 2000}
		c.controlSizes = []int{1000}
		c.loadBudget = 15 * time.Second
	case "full":
		c.runs, c.workers = 7, 4
		c.connPairs, c.connSlice = 60, 250*time.Millisecond
		c.scalePairs, c.scaleSlice = 30, 200*time.Millisecond
		c.iperfTime, c.convergeTime, c.convergeWait = 3*time.Second, 6*time.Second, 15*time.Second
		c.sizes = []int{1, 1000, 2000, 5000, 10000, 20000, 50000}
		c.controlSizes = []int{1000, 10000, 50000}
		c.loadBudget = 180 * time.Second
	default:
		return fmt.Errorf("--mode %q: want quick or full", c.mode)
	}
	return nil
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("size %q: want a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{}
	fs.StringVar(&c.mode, "mode", "quick", "quick (short runs, small sizes, under 2 minutes) or full")
	fs.StringVar(&c.out, "out", "bench/results", "directory for latest.json, latest.md and the plots")
	fs.StringVar(&c.readme, "readme", "", "README to update between the bench markers (empty: none)")
	fs.StringVar(&c.bin, "l4lb-bin", "bin/l4lb", "the l4lb binary (for the daemon)")
	fs.StringVar(&c.l4lb, "l4lb", "auto", "how l4lb's data path is programmed: nft (nat.Compile text with nft -f), daemon (l4lb run), auto (daemon when bin/l4lb has run)")
	fs.StringVar(&c.client, "client", "container", "where clients run: container (forwarded by the agent, prerouting) or agent (local, output)")
	items := fs.String("items", strings.Join(allItems, ","), "items to run: "+strings.Join(allItems, ","))
	layouts := fs.String("layouts", strings.Join(allLayouts, ","), "layouts of the scale item: "+strings.Join(allLayouts, ","))
	runs := fs.Int("runs", 0, "iperf3 runs through the VIP and direct (0: the mode's)")
	pairs := fs.Int("rounds", 0, "rounds of VIP, direct and reference slices of the connection items (0: the mode's)")
	workers := fs.Int("workers", 0, "client workers (0: the mode's)")
	sizes := fs.String("sizes", "", "VIP counts of the data-path scale item (default: the mode's)")
	controlSizes := fs.String("control-sizes", "", "VIP counts of the control-plane item (default: the mode's)")
	budget := fs.Duration("load-budget", 0, "longest load to attempt; larger sizes are skipped (0: the mode's)")
	fs.IntVar(&c.apiPort, "api-port", 62081, "port of the daemon's API on the agent's loopback")
	fs.IntVar(&c.nice, "nice", 0, "niceness of the clients and servers (e.g. -5 on a machine shared with other work; -20..19)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := c.defaults(); err != nil {
		return err
	}
	c.items = map[string]bool{}
	for _, it := range strings.Split(*items, ",") {
		it = strings.TrimSpace(it)
		if it == "" {
			continue
		}
		if !contains(allItems, it) {
			return fmt.Errorf("--items: unknown item %q", it)
		}
		c.items[it] = true
	}
	c.layouts = map[string]bool{}
	for _, l := range strings.Split(*layouts, ",") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if !contains(allLayouts, l) {
			return fmt.Errorf("--layouts: unknown layout %q", l)
		}
		c.layouts[l] = true
	}
	if *runs > 0 {
		c.runs = *runs
	}
	if *pairs > 0 {
		c.connPairs, c.scalePairs = *pairs, *pairs
	}
	if *workers > 0 {
		c.workers = *workers
	}
	if *budget > 0 {
		c.loadBudget = *budget
	}
	var err error
	if *sizes != "" {
		if c.sizes, err = parseSizes(*sizes); err != nil {
			return fmt.Errorf("--sizes: %w", err)
		}
	}
	if *controlSizes != "" {
		if c.controlSizes, err = parseSizes(*controlSizes); err != nil {
			return fmt.Errorf("--control-sizes: %w", err)
		}
	}
	if c.client != "container" && c.client != "agent" {
		return fmt.Errorf("--client %q: want container or agent", c.client)
	}
	switch c.l4lb {
	case "auto", "nft", "daemon":
	default:
		return fmt.Errorf("--l4lb %q: want auto, nft or daemon", c.l4lb)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: the benchmark creates network namespaces")
	}
	for _, tool := range []string{"ip", "nft", "iptables-restore", "ss", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (run `make deps`)", tool)
		}
	}
	return run(ctx, c, stdout, stderr)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func run(ctx context.Context, c *config, stdout, stderr io.Writer) (err error) {
	start := time.Now()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("own executable: %w", err)
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	tmpRoot := filepath.Join(c.out, "tmp")
	if err := os.MkdirAll(tmpRoot, 0o755); err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	work, err := os.MkdirTemp(tmpRoot, "run-")
	if err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	defer os.RemoveAll(work)
	layout.TempDir = work

	res := &report.Results{Meta: collectMeta(c)}
	sweepStale(stderr)
	logf(stderr, "building the topology (namespaces %s*)", nsPrefix)
	e, err := newEnv(ctx, self, c.client == "agent", c.nice, stderr)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := e.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()

	h := newHarness(c, e, res, stderr, work)
	if err := h.chooseL4LB(ctx); err != nil {
		return err
	}
	res.Meta.L4LBDataPath = h.l4lbPath
	steps := []struct {
		item string
		fn   func(context.Context) error
	}{
		{"throughput", h.throughput},
		{"conn", h.connRate},
		{"scale", h.scale},
		{"control", h.control},
		{"marathon", h.marathon},
		{"converge", h.converge},
	}
	for _, s := range steps {
		if !c.items[s.item] {
			continue
		}
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.item, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted during %s: %w", s.item, ctx.Err())
		}
	}
	res.Meta.TotalSeconds = time.Since(start).Seconds()
	res.Evaluate()
	if err := writeResults(c, res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "results in %s (%s)\n", filepath.Join(c.out, "latest.json"), time.Since(start).Round(time.Second))
	return nil
}

// writeResults writes latest.{json,md} and the plots, and the same under
// the mode's name (full.json, full.md, full-*.png), so that a quick run
// does not replace the last full figures; then the README's table.
func writeResults(c *config, res *report.Results) error {
	for _, name := range []string{"latest", c.mode} {
		prefix := ""
		if name != "latest" {
			prefix = name + "-"
		}
		if err := res.WriteJSON(filepath.Join(c.out, name+".json")); err != nil {
			return err
		}
		if err := res.Plots(c.out, prefix); err != nil {
			return err
		}
		if err := res.WriteMarkdown(filepath.Join(c.out, name+".md"), prefix); err != nil {
			return err
		}
	}
	if c.readme != "" {
		rel, err := filepath.Rel(filepath.Dir(c.readme), c.out)
		if err != nil {
			rel = c.out
		}
		if err := res.UpdateReadme(c.readme, filepath.ToSlash(rel)); err != nil {
			return err
		}
	}
	return nil
}

// collectMeta describes the machine, the tools and the commit.
func collectMeta(c *config) report.Meta {
	m := report.Meta{
		Date:         time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Mode:         c.mode,
		CPUs:         runtime.NumCPU(),
		GoVersion:    runtime.Version(),
		Client:       c.client,
		Workers:      c.workers,
		Nice:         c.nice,
		Runs:         c.runs,
		ConnPairs:    c.connPairs,
		ConnSlice:    c.connSlice.Seconds(),
		ScalePairs:   c.scalePairs,
		ScaleSlice:   c.scaleSlice.Seconds(),
		IperfSeconds: c.iperfTime.Seconds(),
		LoadBudget:   c.loadBudget.Seconds(),
		Sysctls:      map[string]string{},
	}
	for _, s := range benchSysctls {
		m.Sysctls[s[0]] = s[1]
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	first := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return ""
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	m.NFT = first("nft", "--version")
	m.IPTables = first("iptables", "--version")
	m.IPTablesBackend = layout.IPTablesBackend()
	m.Iperf3 = first("iperf3", "--version")
	m.Commit = first("git", "rev-parse", "HEAD")
	if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!README.md").Output(); err == nil {
		m.Dirty = strings.TrimSpace(string(out)) != ""
	}
	return m
}

func logf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
