package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l4lb/l4lb/bench/layout"
	"github.com/l4lb/l4lb/bench/load"
	"github.com/l4lb/l4lb/bench/report"
	"github.com/l4lb/l4lb/bench/scenario"
	"github.com/l4lb/l4lb/bench/stats"
)

// Service names of the scenarios.
const (
	probeName = "probe" // the measured VIP: 10 real backends
	iperfName = "iperf" // one backend running iperf3
)

// fillerBackends is the number of backends of every other VIP.
const fillerBackends = 10

// harness runs the items and fills the results.
type harness struct {
	cfg  *config
	env  *env
	res  *report.Results
	logw io.Writer
	work string

	l4lb     layout.Layout // how l4lb's rules are programmed for items 1-3
	l4lbPath string
	daemon   *layout.Daemon
	kube     layout.Kube
	loads    map[string][]loadSample // completed loads per layout, for projections
	stopped  map[string]stopMark     // layouts whose load failed or ran out of time, and at what size
	// kubeNFTControl holds control-plane rows of kube-proxy's nftables
	// mode measured on the scale item's loads, which are the same
	// scenarios: its large loads are the slowest part of the run.
	kubeNFTControl map[int]report.ControlPoint
}

// stopMark records that a layout's load of n VIPs failed: no larger load
// is attempted.
type stopMark struct {
	n   int
	why string
}

// minProjectable is the shortest load time that says something about how
// loads grow; shorter ones are mostly fixed overhead.
const minProjectable = 0.3

type loadSample struct {
	n    int
	secs float64
}

func newHarness(c *config, e *env, res *report.Results, logw io.Writer, work string) *harness {
	return &harness{
		cfg: c, env: e, res: res, logw: logw, work: work,
		daemon: &layout.Daemon{Bin: c.bin, Dir: filepath.Join(work, "daemon"), APIPort: c.apiPort},
		kube: layout.Kube{
			Namespace:   "bench",
			PodCIDR:     netipPrefix(e.topo.Containers[0].Addr4, 24),
			ServiceCIDR: scenario.Pool4,
			NodeIP:      e.topo.Agent.Addr4,
		},
		loads:   map[string][]loadSample{},
		stopped: map[string]stopMark{},

		kubeNFTControl: map[int]report.ControlPoint{},
	}
}

func netipPrefix(a netip.Addr, bits int) netip.Prefix {
	p, _ := a.Prefix(bits)
	return p
}

func (h *harness) logf(format string, args ...any) { logf(h.logw, format, args...) }

// chooseL4LB picks the daemon when it can run (or when asked), otherwise
// the ruleset compiled in process and loaded with nft -f.
func (h *harness) chooseL4LB(ctx context.Context) error {
	derr := h.daemon.Supported(ctx)
	switch {
	case h.cfg.l4lb == "daemon" && derr != nil:
		return derr
	case h.cfg.l4lb == "daemon", h.cfg.l4lb == "auto" && derr == nil:
		h.l4lb, h.l4lbPath = h.daemon, "l4lb run (the daemon, file source)"
	default:
		h.l4lb, h.l4lbPath = layout.NFT{}, "nft -f of nat.Compile's text (the ruleset the daemon programs)"
	}
	h.logf("l4lb data path: %s", h.l4lbPath)
	return nil
}

// probeService is the measured VIP: both backends' five connection ports.
func (h *harness) probeService(healthChecked bool) scenario.Service {
	s := scenario.Service{Name: probeName, Port: 80, HealthChecked: healthChecked}
	for _, t := range h.env.connTargets() {
		s.Backends = append(s.Backends, scenario.Backend{Addr: t})
	}
	return s
}

func (h *harness) spec(total int, services ...scenario.Service) scenario.Spec {
	return scenario.Spec{Total: total, FillerBackends: fillerBackends, Services: services}
}

// --- item 1: throughput --------------------------------------------------

func (h *harness) throughput(ctx context.Context) error {
	st, err := h.spec(2, h.probeService(false), scenario.Service{Name: iperfName, Port: iperfPort,
		Backends: []scenario.Backend{{Addr: h.env.iperfBackend()}}}).Build()
	if err != nil {
		return err
	}
	if _, err := h.l4lb.Load(ctx, h.env.agent(), st); err != nil {
		return err
	}
	defer h.clear(ctx, h.l4lb)
	vipAddr, err := h.l4lb.VIPAddr(ctx, h.env.agent(), st, iperfName)
	if err != nil {
		return err
	}
	for _, streams := range []int{1, 4} {
		t := report.Throughput{Streams: streams}
		vip, direct := nanSlice(h.cfg.runs), nanSlice(h.cfg.runs)
		var errs []string
		for i := range h.cfg.runs {
			for _, which := range abOrder(i) {
				target := h.env.iperfBackend()
				if which == "vip" {
					target = vipAddr
				}
				bps, err := h.iperf(ctx, target, streams)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					errs = append(errs, err.Error())
					continue
				}
				if which == "vip" {
					vip[i] = bps / 1e9
				} else {
					direct[i] = bps / 1e9
				}
			}
		}
		t.VIP, t.Direct = report.NewSeries(vip), report.NewSeries(direct)
		t.Ratios = report.PairRatios(vip, direct)
		t.Ratio = t.Ratios.Median
		t.Error = firstErr(errs)
		h.logf("throughput, %d stream(s): VIP %.2f Gbit/s, direct %.2f Gbit/s, ratio %.3f %s", streams,
			float64(t.VIP.Median), float64(t.Direct.Median), float64(t.Ratio), t.Error)
		h.res.Throughput = append(h.res.Throughput, t)
	}
	return nil
}

func nanSlice(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = math.NaN()
	}
	return s
}

// abOrder alternates A and B: VIP first in even runs, direct first in odd
// ones, so that drift of the machine falls on both alike.
func abOrder(i int) []string {
	if i%2 == 0 {
		return []string{"vip", "direct"}
	}
	return []string{"direct", "vip"}
}

func firstErr(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return fmt.Sprintf("%s (and %d more errors)", errs[0], len(errs)-1)
}

// iperf runs iperf3 from the client namespace and returns bits/s.
func (h *harness) iperf(ctx context.Context, target netip.AddrPort, streams int) (float64, error) {
	secs := max(1, int(math.Round(h.cfg.iperfTime.Seconds())))
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+20*time.Second)
	defer cancel()
	cmd := h.env.cmd(ctx, h.env.client, "iperf3", "-c", target.Addr().String(), "-p", strconv.Itoa(int(target.Port())),
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J")
	var out bytes.Buffer
	cmd.Stdout = &out
	runErr := cmd.Run()
	_, bps, err := load.ParseIperf(out.Bytes())
	if err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %w (exit: %v)", target, err, runErr)
	}
	return bps, nil
}

// --- item 2: new connections --------------------------------------------

// connSet is what connRuns measured.
type connSet struct {
	vip, direct, ref  report.Conn
	ratios, refRatios report.Series // VIP/direct and VIP/reference of each round
	directToRef       report.Num
	errText           string
}

// connRuns measures new connections through vip, directly to the ten
// backends, and to their untracked reference ports, alternating in slices
// within one client process (round i in that order when i is even, in
// reverse when it is odd).
func (h *harness) connRuns(ctx context.Context, vip netip.AddrPort, rounds int, slice time.Duration) (connSet, error) {
	var cs connSet
	if err := h.env.ensureRef(ctx); err != nil {
		return cs, err
	}
	r, err := h.env.runRounds(ctx, vip, h.cfg.workers, rounds, slice)
	if ctx.Err() != nil {
		return cs, ctx.Err()
	}
	if err != nil {
		cs.errText = err.Error()
		cs.vip, cs.direct, cs.ref = report.NoConn(), report.NoConn(), report.NoConn()
		return cs, nil
	}
	var errs []string
	rates := func(rs []load.ClientResult, which string) []float64 {
		out := nanSlice(len(rs))
		for i, c := range rs {
			out[i] = c.Rate
			if c.Conns == 0 {
				out[i] = math.NaN()
				if c.FirstErr != "" {
					errs = append(errs, which+": "+c.FirstErr)
				}
			}
		}
		return out
	}
	vr, dr, rr := rates(r.Sets[0], "VIP"), rates(r.Sets[1], "direct"), rates(r.Sets[2], "reference")
	cs.vip, cs.direct, cs.ref = summarize(r.Sets[0]), summarize(r.Sets[1]), summarize(r.Sets[2])
	cs.ratios, cs.refRatios = report.PairRatios(vr, dr), report.PairRatios(vr, rr)
	cs.directToRef = report.PairRatios(dr, rr).Median
	cs.errText = firstErr(errs)
	return cs, nil
}

func summarize(rs []load.ClientResult) report.Conn {
	var rate, p50, p99 []float64
	errs := 0
	for _, r := range rs {
		rate = append(rate, r.Rate)
		if r.Conns > 0 {
			p50 = append(p50, r.P50us)
			p99 = append(p99, r.P99us)
		}
		errs += r.Errors
	}
	return report.Conn{Rate: report.NewSeries(rate), P50us: report.NewSeries(p50), P99us: report.NewSeries(p99), Errors: errs}
}

func (h *harness) connRate(ctx context.Context) error {
	st, err := h.spec(1, h.probeService(false)).Build()
	if err != nil {
		return err
	}
	if _, err := h.l4lb.Load(ctx, h.env.agent(), st); err != nil {
		return err
	}
	defer h.clear(ctx, h.l4lb)
	vipAddr, err := h.l4lb.VIPAddr(ctx, h.env.agent(), st, probeName)
	if err != nil {
		return err
	}
	cs, err := h.connRuns(ctx, vipAddr, h.cfg.connPairs, h.cfg.connSlice)
	if err != nil {
		return err
	}
	v, d := cs.vip, cs.direct
	c := &report.ConnRate{VIP: v, Direct: d, Reference: cs.ref, Error: cs.errText, Ratios: cs.ratios, Ratio: cs.ratios.Median,
		RefRatios: cs.refRatios, RefRatio: cs.refRatios.Median}
	h.res.ConnRate = c
	h.logf("new connections: VIP %.0f/s (p50 %.0f µs, p99 %.0f µs), direct %.0f/s (p50 %.0f µs, p99 %.0f µs), ratio %.3f, untracked reference %.0f/s %s",
		float64(v.Rate.Median), float64(v.P50us.Median), float64(v.P99us.Median),
		float64(d.Rate.Median), float64(d.P50us.Median), float64(d.P99us.Median), float64(c.Ratio), float64(cs.ref.Rate.Median), cs.errText)
	return nil
}

// clear removes a layout's rules, bounded in time; failures are logged
// (the namespace is deleted at the end anyway).
func (h *harness) clear(ctx context.Context, l layout.Layout) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.loadBudget+30*time.Second)
	defer cancel()
	if err := l.Clear(ctx, h.env.agent()); err != nil {
		h.logf("clear %s: %v", l.Name(), err)
	}
}

// --- item 3: data-path scale --------------------------------------------

// skipReason says why a load of n VIPs of the layout is not attempted: a
// smaller size already failed or timed out, or the load projected from the
// layout's earlier loads exceeds the budget.
func (h *harness) skipReason(name string, n int) string {
	if m, ok := h.stopped[name]; ok && n >= m.n {
		return m.why
	}
	proj, basis := h.project(name, n)
	if proj > h.cfg.loadBudget.Seconds() {
		return fmt.Sprintf("load projected at %.0fs (%s) exceeds the %s budget", proj, basis, h.cfg.loadBudget)
	}
	return ""
}

// project extrapolates the layout's load time to n VIPs from its last two
// loads (growth exponent between them; quadratic when they cannot tell).
func (h *harness) project(name string, n int) (float64, string) {
	s := slices.Clone(h.loads[name])
	if len(s) == 0 {
		return 0, ""
	}
	slices.SortFunc(s, func(a, b loadSample) int { return cmp.Compare(a.n, b.n) })
	last := s[len(s)-1]
	if n <= last.n || last.secs < minProjectable {
		// A size this large already loaded, or the loads so far are too
		// short to be more than fixed overhead: try it.
		return 0, ""
	}
	e := 2.0
	if len(s) >= 2 {
		prev := s[len(s)-2]
		e = stats.GrowthExponent(float64(prev.n), prev.secs, float64(last.n), last.secs, minProjectable, 2)
	}
	p := stats.Project(float64(last.n), last.secs, float64(n), e)
	return p, fmt.Sprintf("%.1fs at %d VIPs, growth n^%.1f", last.secs, last.n, e)
}

// loadFailed records a failed load: no larger one of the layout is tried.
// It returns the point's skip reason (the load ran out of time) or error.
func (h *harness) loadFailed(name string, n int, err error) (skipped, errText string) {
	if errors.Is(err, context.DeadlineExceeded) {
		h.stopped[name] = stopMark{n, fmt.Sprintf("a load of %d VIPs already ran out of time", n)}
		return fmt.Sprintf("load did not finish within %s and was stopped", h.loadLimit()), ""
	}
	h.stopped[name] = stopMark{n, fmt.Sprintf("the load of %d VIPs failed", n)}
	return "", err.Error()
}

// loadLimit is the hard limit of one load: the budget and half again, for
// loads whose projection was under the budget but that grow faster.
func (h *harness) loadLimit() time.Duration { return h.cfg.loadBudget * 3 / 2 }

// load programs a scenario with a layout, bounded by loadLimit.
func (h *harness) load(ctx context.Context, l layout.Layout, st *scenario.State, n int) (layout.Loaded, error) {
	lctx, cancel := context.WithTimeout(ctx, h.loadLimit())
	defer cancel()
	ld, err := l.Load(lctx, h.env.agent(), st)
	if err == nil {
		h.loads[l.Name()] = append(h.loads[l.Name()], loadSample{n: n, secs: ld.Duration.Seconds()})
	}
	return ld, err
}

func (h *harness) scaleLayouts() []layout.Layout {
	var out []layout.Layout
	for _, l := range []layout.Layout{h.l4lb, layout.KubeNFT{Kube: h.kube}, layout.KubeIPTables{Kube: h.kube, Middle: probeName}} {
		if h.cfg.layouts[l.Name()] {
			out = append(out, l)
		}
	}
	return out
}

func (h *harness) scale(ctx context.Context) error {
	layouts := h.scaleLayouts()
	for _, n := range h.cfg.sizes {
		var st *scenario.State
		for _, l := range layouts {
			p := report.NewScalePoint(l.Name(), l.Loader(), n, fillerBackends)
			if why := h.skipReason(l.Name(), n); why != "" {
				p.Skipped = why
				h.logf("scale %s %d VIPs: skipped: %s", l.Name(), n, why)
				h.res.Scale = append(h.res.Scale, p)
				continue
			}
			if st == nil {
				var err error
				t0 := time.Now()
				if st, err = h.spec(n, h.probeService(false)).Build(); err != nil {
					return err
				}
				h.logf("scale: scenario of %d VIPs built in %s", n, time.Since(t0).Round(time.Millisecond))
			}
			h.scalePoint(ctx, l, st, &p)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			h.res.Scale = append(h.res.Scale, p)
		}
	}
	report.FillVsOne(h.res.Scale)
	return nil
}

func (h *harness) scalePoint(ctx context.Context, l layout.Layout, st *scenario.State, p *report.ScalePoint) {
	defer h.clear(ctx, l)
	ld, err := h.load(ctx, l, st, p.VIPs)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		p.Skipped, p.Error = h.loadFailed(l.Name(), p.VIPs, err)
		h.logf("scale %s %d VIPs: %s%s", l.Name(), p.VIPs, p.Skipped, p.Error)
		return
	}
	p.LoadSeconds, p.ScriptBytes = report.Num(ld.Duration.Seconds()), ld.ScriptBytes
	vipAddr, err := l.VIPAddr(ctx, h.env.agent(), st, probeName)
	if err != nil {
		p.Error = err.Error()
		return
	}
	cs, err := h.connRuns(ctx, vipAddr, h.cfg.scalePairs, h.cfg.scaleSlice)
	if err != nil {
		p.Error = err.Error()
		return
	}
	v, d := cs.vip, cs.direct
	p.VIP, p.Direct, p.Reference, p.Error = v, d, cs.ref, cs.errText
	p.Ratios, p.Ratio, p.RefRatios, p.RefRatio = cs.ratios, cs.ratios.Median, cs.refRatios, cs.refRatios.Median
	p.DirectToRef = cs.directToRef
	if kn, ok := l.(layout.KubeNFT); ok && h.cfg.items["control"] && slices.Contains(h.cfg.controlSizes, p.VIPs) {
		c := report.ControlPoint{Impl: kn.Name(), Loader: kn.Loader(), VIPs: p.VIPs, Backends: fillerBackends,
			ColdSeconds: p.LoadSeconds, ChangeSeconds: report.NaN()}
		changed, err := h.withSpare(p.VIPs, false).Build()
		if err != nil {
			c.Error = err.Error()
		} else {
			h.kubeNFTChange(ctx, kn, st, changed, &c)
		}
		h.kubeNFTControl[p.VIPs] = c
	}
	h.logf("scale %s %d VIPs: load %.2fs, VIP %.0f/s, direct %.0f/s, reference %.0f/s, VIP/direct %.3f, VIP/reference %.3f %s", l.Name(), p.VIPs,
		ld.Duration.Seconds(), float64(v.Rate.Median), float64(d.Rate.Median), float64(cs.ref.Rate.Median), float64(p.Ratio), float64(p.RefRatio), cs.errText)
}

// --- item 4: control plane ------------------------------------------------

// changeWitness measures a change: a client opens connections to vip
// until one reaches the spare backend; apply makes the change. The result
// runs from the start of apply to the start of that connection.
func (h *harness) changeWitness(ctx context.Context, vip netip.AddrPort, apply func() error) (time.Duration, error) {
	p, err := h.env.startClient(ctx, clientOpts{targets: []netip.AddrPort{vip}, workers: 2, duration: 30 * time.Second, untilMark: spareMark})
	if err != nil {
		return 0, err
	}
	// Let the client start dialling before the change.
	select {
	case <-time.After(300 * time.Millisecond):
	case <-ctx.Done():
	}
	t0 := time.Now()
	aerr := apply()
	r, rerr := p.result()
	if aerr != nil {
		return 0, aerr
	}
	if rerr != nil {
		return 0, rerr
	}
	first, ok := r.FirstNanos[string(rune(spareMark))]
	if !ok {
		return 0, fmt.Errorf("no connection reached the new backend within 30s (%d connections, %d errors: %s)", r.Conns, r.Errors, r.FirstErr)
	}
	return time.Duration(first - t0.UnixNano()), nil
}

// withSpare is the scenario with the spare backend added to the probe.
func (h *harness) withSpare(n int, healthChecked bool) scenario.Spec {
	probe := h.probeService(healthChecked)
	probe.Backends = append(probe.Backends, scenario.Backend{Addr: h.env.spare()})
	return h.spec(n, probe)
}

func (h *harness) control(ctx context.Context) error {
	derr := h.daemon.Supported(ctx)
	kn := layout.KubeNFT{Kube: h.kube}
	for _, n := range h.cfg.controlSizes {
		var st, changed *scenario.State
		build := func() error {
			if st != nil {
				return nil
			}
			var err error
			if st, err = h.spec(n, h.probeService(false)).Build(); err != nil {
				return err
			}
			changed, err = h.withSpare(n, false).Build()
			return err
		}
		// l4lb: the daemon.
		c := report.ControlPoint{Impl: "l4lb", Loader: h.daemon.Loader(), VIPs: n, Backends: fillerBackends, ColdSeconds: report.NaN(), ChangeSeconds: report.NaN()}
		switch {
		case derr != nil:
			c.Skipped = derr.Error()
		default:
			if err := build(); err != nil {
				return err
			}
			h.controlDaemon(ctx, st, changed, &c)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.res.Control = append(h.res.Control, c)

		// kube-proxy's nftables mode: nft -f of the whole ruleset, then the
		// transaction of one service's endpoint change.
		k := report.ControlPoint{Impl: kn.Name(), Loader: kn.Loader(), VIPs: n, Backends: fillerBackends, ColdSeconds: report.NaN(), ChangeSeconds: report.NaN()}
		if done, ok := h.kubeNFTControl[n]; ok {
			k = done // measured on the scale item's load of the same scenario
		} else if why := h.skipReason(kn.Name(), n); why != "" {
			k.Skipped = why
		} else {
			if err := build(); err != nil {
				return err
			}
			h.controlKubeNFT(ctx, kn, st, changed, &k)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.logf("control %d VIPs: daemon cold %.2fs change %.3fs rss %d %s%s; kube-nftables cold %.2fs change %.3fs %s%s", n,
			float64(c.ColdSeconds), float64(c.ChangeSeconds), c.RSSBytes, c.Skipped, c.Error,
			float64(k.ColdSeconds), float64(k.ChangeSeconds), k.Skipped, k.Error)
		h.res.Control = append(h.res.Control, k)
	}
	return nil
}

func (h *harness) controlDaemon(ctx context.Context, st, changed *scenario.State, c *report.ControlPoint) {
	defer h.clear(ctx, h.daemon)
	ld, err := h.load(ctx, h.daemon, st, c.VIPs)
	if err != nil {
		c.Skipped, c.Error = h.loadFailed("l4lb daemon", c.VIPs, err)
		return
	}
	c.ColdSeconds = report.Num(ld.Duration.Seconds())
	if rss, err := h.daemon.RSS(); err == nil {
		c.RSSBytes = rss
	}
	t0 := time.Now()
	vip, err := h.daemon.VIPAddr(ctx, h.env.agent(), st, probeName)
	if err != nil {
		c.Error = err.Error()
		return
	}
	c.VIPsAPIBytes, c.VIPsAPISeconds = h.daemon.LastBodyBytes(), report.Num(time.Since(t0).Seconds())
	d, err := h.changeWitness(ctx, vip, func() error { return h.daemon.WriteApps(changed.AppsJSON) })
	if err != nil {
		c.Error = "change: " + err.Error()
		return
	}
	c.ChangeSeconds = report.Num(d.Seconds())
	if rss, err := h.daemon.RSS(); err == nil && rss > c.RSSBytes {
		c.RSSBytes = rss
	}
}

func (h *harness) controlKubeNFT(ctx context.Context, kn layout.KubeNFT, st, changed *scenario.State, c *report.ControlPoint) {
	defer h.clear(ctx, kn)
	ld, err := h.load(ctx, kn, st, c.VIPs)
	if err != nil {
		c.Skipped, c.Error = h.loadFailed(kn.Name(), c.VIPs, err)
		return
	}
	c.ColdSeconds = report.Num(ld.Duration.Seconds())
	h.kubeNFTChange(ctx, kn, st, changed, c)
}

// kubeNFTChange measures kube-proxy's endpoint-change transaction on the
// loaded kube-proxy table of st.
func (h *harness) kubeNFTChange(ctx context.Context, kn layout.KubeNFT, st, changed *scenario.State, c *report.ControlPoint) {
	vip, err := kn.VIPAddr(ctx, h.env.agent(), st, probeName)
	if err != nil {
		c.Error = err.Error()
		return
	}
	d, err := h.changeWitness(ctx, vip, func() error {
		uctx, cancel := context.WithTimeout(ctx, h.cfg.loadBudget)
		defer cancel()
		_, err := kn.Update(uctx, h.env.agent(), st, changed, probeName)
		return err
	})
	if err != nil {
		c.Error = "change: " + err.Error()
		return
	}
	c.ChangeSeconds = report.Num(d.Seconds())
}

// --- item 5: convergence --------------------------------------------------

func (h *harness) converge(ctx context.Context) error {
	c := &report.Convergence{Impl: "l4lb (l4lb run)", LastConnMs: report.NaN(), ConntrackMs: report.NaN(), EstablishedMs: report.NaN()}
	h.res.Convergence = c
	if err := h.daemon.Supported(ctx); err != nil {
		c.Skipped = err.Error()
		h.logf("convergence: skipped: %v", err)
		return nil
	}
	probe := h.probeService(true)
	st, err := h.spec(1000, probe).Build()
	if err != nil {
		return err
	}
	failed := probe.Backends[0].Addr
	probe.Backends[0].Unhealthy = true
	bad, err := h.spec(1000, probe).Build()
	if err != nil {
		return err
	}
	defer h.clear(ctx, h.daemon)
	if _, err := h.load(ctx, h.daemon, st, 1000); err != nil {
		c.Error = err.Error()
		return nil
	}
	vip, err := h.daemon.VIPAddr(ctx, h.env.agent(), st, probeName)
	if err != nil {
		c.Error = err.Error()
		return nil
	}
	mark := string(rune(h.env.markOf(failed)))
	limit := h.cfg.convergeWait
	p, err := h.env.startClient(ctx, clientOpts{targets: []netip.AddrPort{vip}, workers: 2, duration: h.cfg.convergeTime, hold: 40, holdAfter: limit})
	if err != nil {
		return err
	}
	if err := p.waitLine(ctx, "held", 20*time.Second); err != nil {
		_, rerr := p.result()
		c.Error = errors.Join(err, rerr).Error()
		return nil
	}
	// Load runs for a while before the health change.
	select {
	case <-time.After(h.cfg.convergeTime / 3):
	case <-ctx.Done():
		return ctx.Err()
	}
	t0 := time.Now()
	if err := h.daemon.WriteApps(bad.AppsJSON); err != nil {
		return err
	}
	gone, est, cerr := h.waitConntrackGone(ctx, failed, t0, limit)
	// The load ends on its own; the holds end when told.
	select {
	case <-time.After(time.Until(t0.Add(h.cfg.convergeTime))):
	case <-ctx.Done():
	}
	p.stop()
	r, rerr := p.result()
	if rerr != nil {
		c.Error = rerr.Error()
		return nil
	}
	c.Conns, c.ConnsToFailed, c.HeldOnFailed = r.Conns, r.ByMark[mark], r.Held[mark]
	if last, ok := r.LastNanos[mark]; ok {
		c.LastConnMs = report.Num(float64(last-t0.UnixNano()) / 1e6)
	}
	if est > 0 {
		c.EstablishedMs = report.Num(float64(est.Microseconds()) / 1e3)
	}
	if cerr != nil {
		c.Error = cerr.Error()
	} else {
		c.ConntrackMs = report.Num(float64(gone.Microseconds()) / 1e3)
	}
	if c.HeldOnFailed == 0 {
		c.Error = strings.TrimSpace(c.Error + " no held connection landed on the failed backend")
	}
	h.logf("convergence: last new connection to the failed backend %.0f ms after the change, its established conntrack entries gone after %.0f ms, all live ones after %.0f ms (%d held on it) %s",
		float64(c.LastConnMs), float64(c.EstablishedMs), float64(c.ConntrackMs), c.HeldOnFailed, c.Error)
	return nil
}

// waitConntrackGone polls the agent's conntrack table until no live entry
// (timeout above zero: expired entries are listed until the garbage
// collector takes them, but no packet matches them) has its reply from
// backend. It returns the time since t0 when none is left, and when no
// established entry was left (the held connections flushed).
func (h *harness) waitConntrackGone(ctx context.Context, backend netip.AddrPort, t0 time.Time, limit time.Duration) (live, established time.Duration, err error) {
	deadline := t0.Add(limit)
	var last string
	for time.Now().Before(deadline) {
		out, err := h.env.agent().Run("conntrack", "-L", "-p", "tcp", "--reply-src", backend.Addr().String(),
			"--reply-port-src", strconv.Itoa(int(backend.Port())))
		if err != nil {
			return 0, 0, fmt.Errorf("conntrack -L: %w", err)
		}
		n, est := countConntrack(out)
		last = out
		if est == 0 && established == 0 {
			established = time.Since(t0)
		}
		if n == 0 {
			return time.Since(t0), established, nil
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	var left []string
	for _, line := range strings.Split(last, "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[2] != "0" && len(left) < 3 {
			left = append(left, strings.Join(f, " "))
		}
	}
	return 0, established, fmt.Errorf("live conntrack entries of %s still there %s after the change: %s", backend, limit, strings.Join(left, "; "))
}

// countConntrack counts the live entries of `conntrack -L` output
// ("tcp 6 TIMEOUT STATE src=..."), and those of them that are
// established.
func countConntrack(out string) (live, established int) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "tcp" {
			continue
		}
		if t, err := strconv.Atoi(f[2]); err != nil || t <= 0 {
			continue
		}
		live++
		if f[3] == "ESTABLISHED" {
			established++
		}
	}
	return live, established
}

// --- Marathon path ---------------------------------------------------------

// marathonPort is where the Marathon-shaped server listens on the agent's
// loopback.
const marathonPort = 18090

// marathonReps is how often each change is measured.
func (h *harness) marathonReps() int {
	if h.cfg.mode == "quick" {
		return 5
	}
	return 20
}

// marathon runs the daemon on a Marathon-shaped server of N apps x 10
// tasks and measures changes announced by events: a task's health turning
// bad (event to the last new connection that still reaches it), a task
// added (event to the first new connection that reaches it), the daemon's
// CPU and the bytes it reads from Marathon per change, and its RSS.
func (h *harness) marathon(ctx context.Context) error {
	if err := h.daemon.Supported(ctx); err != nil {
		for _, n := range h.cfg.controlSizes {
			h.res.Marathon = append(h.res.Marathon, report.MarathonPoint{VIPs: n, Skipped: err.Error()})
		}
		return nil
	}
	for _, n := range h.cfg.controlSizes {
		p := report.MarathonPoint{VIPs: n, Backends: fillerBackends, Reps: h.marathonReps(), ColdSeconds: report.NaN(),
			BadP50Ms: report.NaN(), BadP99Ms: report.NaN(), AddP50Ms: report.NaN(), AddP99Ms: report.NaN(),
			CPUms: report.NaN(), BytesPerChange: report.NaN()}
		if err := h.marathonPoint(ctx, &p); err != nil {
			return err
		}
		h.logf("marathon %d VIPs: cold %.2fs rss %d health bad p50 %.0f p99 %.0f ms, task added p50 %.0f p99 %.0f ms, cpu %.2f ms/change, %.0f bytes/change, %d lists %s",
			n, float64(p.ColdSeconds), p.RSSBytes, float64(p.BadP50Ms), float64(p.BadP99Ms), float64(p.AddP50Ms), float64(p.AddP99Ms),
			float64(p.CPUms), float64(p.BytesPerChange), p.Lists, p.Error)
		h.res.Marathon = append(h.res.Marathon, p)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// percentile returns the p-th percentile (0..1) of ms, nearest rank.
func percentile(ms []float64, p float64) report.Num {
	if len(ms) == 0 {
		return report.NaN()
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return report.Num(s[max(0, min(i, len(s)-1))])
}

func (h *harness) marathonPoint(ctx context.Context, p *report.MarathonPoint) error {
	probe := h.probeService(true)
	st, err := h.spec(p.VIPs, probe).Build()
	if err != nil {
		return err
	}
	added, err := h.withSpare(p.VIPs, true).Build()
	if err != nil {
		return err
	}
	failed := probe.Backends[0].Addr
	probe.Backends[0].Unhealthy = true
	bad, err := h.spec(p.VIPs, probe).Build()
	if err != nil {
		return err
	}
	// The probe's app in each version; the other apps are the same.
	_, base, err := layout.AppsByID(st.AppsJSON)
	if err != nil {
		return err
	}
	_, withSpare, err := layout.AppsByID(added.AppsJSON)
	if err != nil {
		return err
	}
	_, withBad, err := layout.AppsByID(bad.AppsJSON)
	if err != nil {
		return err
	}
	probeID := ""
	for id, raw := range withSpare {
		if !bytes.Equal(raw, base[id]) {
			probeID = id
		}
	}
	if probeID == "" {
		return errors.New("marathon: the probe app does not change with the spare backend")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", marathonPort)
	m, err := layout.StartMarathon(h.env.agent(), addr, st.AppsJSON)
	if err != nil {
		p.Error = err.Error()
		return nil
	}
	defer m.Close()
	h.daemon.Source = "marathon:http://" + addr
	defer func() { h.daemon.Source = "" }()
	defer h.clear(ctx, h.daemon)
	ld, err := h.load(ctx, h.daemon, st, p.VIPs)
	if err != nil {
		p.Skipped, p.Error = h.loadFailed("l4lb daemon (marathon)", p.VIPs, err)
		return nil
	}
	p.ColdSeconds = report.Num(ld.Duration.Seconds())
	vip, err := h.daemon.VIPAddr(ctx, h.env.agent(), st, probeName)
	if err != nil {
		p.Error = err.Error()
		return nil
	}
	// Let the start's lists settle (the stream's attach lists once more).
	time.Sleep(2 * time.Second)
	set := func(raw []byte) { m.SetApp(probeID, raw); m.Event(probeID) }
	settle := func() {
		select {
		case <-time.After(800 * time.Millisecond): // past --min-sync-interval
		case <-ctx.Done():
		}
	}
	cpu0, _ := h.daemon.CPUSeconds()
	bytes0, lists0 := m.Served(), m.Lists()
	changes := 0
	var addMs, badMs []float64
	mark := string(rune(h.env.markOf(failed)))
	for i := 0; i < p.Reps && ctx.Err() == nil; i++ {
		// A task added: the first new connection that reaches it.
		d, err := h.changeWitness(ctx, vip, func() error { set(withSpare[probeID]); return nil })
		changes++
		if err != nil {
			p.Error = "task added: " + err.Error()
			break
		}
		addMs = append(addMs, float64(d.Microseconds())/1e3)
		set(base[probeID])
		changes++
		settle()

		// A task's health turns bad: the last new connection to it.
		c, err := h.env.startClient(ctx, clientOpts{targets: []netip.AddrPort{vip}, workers: 2, duration: 1500 * time.Millisecond})
		if err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond)
		t0 := time.Now()
		set(withBad[probeID])
		changes++
		r, err := c.result()
		if err != nil {
			p.Error = "health bad: " + err.Error()
			break
		}
		if last, ok := r.LastNanos[mark]; ok {
			badMs = append(badMs, max(0, float64(last-t0.UnixNano())/1e6))
		}
		set(base[probeID])
		changes++
		settle()
	}
	cpu1, _ := h.daemon.CPUSeconds()
	if changes > 0 {
		p.CPUms = report.Num((cpu1 - cpu0) * 1000 / float64(changes))
		p.BytesPerChange = report.Num(float64(m.Served()-bytes0) / float64(changes))
	}
	p.Lists = m.Lists() - lists0
	p.AddMs, p.BadMs = addMs, badMs
	p.AddP50Ms, p.AddP99Ms = percentile(addMs, 0.5), percentile(addMs, 0.99)
	p.BadP50Ms, p.BadP99Ms = percentile(badMs, 0.5), percentile(badMs, 0.99)
	if rss, err := h.daemon.RSS(); err == nil {
		p.RSSBytes = rss
	}
	return nil
}
