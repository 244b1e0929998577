// Package report holds the benchmark's results and renders them: JSON with
// every figure, a Markdown table for people, PNG plots, and the README's
// Benchmarks section. Everything here is pure except the file writes.
package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"github.com/l4lb/l4lb/bench/stats"
)

// Num is a figure that may be unknown (NaN): JSON null then.
type Num float64

// NaN is an unknown figure.
func NaN() Num { return Num(math.NaN()) }

// Valid reports whether the figure is known.
func (n Num) Valid() bool { return !math.IsNaN(float64(n)) && !math.IsInf(float64(n), 0) }

// MarshalJSON writes null for an unknown figure.
func (n Num) MarshalJSON() ([]byte, error) {
	if !n.Valid() {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, float64(n), 'g', 6, 64), nil
}

// UnmarshalJSON reads null as unknown.
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = NaN()
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*n = Num(f)
	return nil
}

// Series is one figure measured in several runs and its median.
type Series struct {
	Runs   []Num `json:"runs"`
	Median Num   `json:"median"`
}

// NewSeries summarises runs; unknown (NaN) runs are kept in Runs and left
// out of the median.
func NewSeries(runs []float64) Series {
	s := Series{Runs: make([]Num, len(runs))}
	var known []float64
	for i, r := range runs {
		s.Runs[i] = Num(r)
		if s.Runs[i].Valid() {
			known = append(known, r)
		}
	}
	s.Median = Num(stats.Median(known))
	return s
}

// PairRatios is the series of a[i]/b[i] for the pairs where both are
// known. A and B run back to back, so each ratio is little affected by the
// drift of a shared machine.
func PairRatios(a, b []float64) Series {
	var out []float64
	for i := range min(len(a), len(b)) {
		if r := stats.Ratio(a[i], b[i]); !math.IsNaN(r) {
			out = append(out, r)
		}
	}
	return NewSeries(out)
}

// Meta describes the run.
type Meta struct {
	Date            string            `json:"date"`
	Mode            string            `json:"mode"` // quick or full
	Kernel          string            `json:"kernel"`
	CPUs            int               `json:"cpus"`
	Commit          string            `json:"l4lb_commit"`
	Dirty           bool              `json:"worktree_dirty"`
	GoVersion       string            `json:"go"`
	NFT             string            `json:"nft"`
	IPTables        string            `json:"iptables"`
	IPTablesBackend string            `json:"iptables_backend"`
	Iperf3          string            `json:"iperf3"`
	L4LBDataPath    string            `json:"l4lb_data_path"` // how l4lb's rules were programmed for items 1-3
	Client          string            `json:"client"`         // where the client runs: container or agent
	Nice            int               `json:"nice"`
	Workers         int               `json:"workers"`
	Runs            int               `json:"iperf_runs"`
	ConnPairs       int               `json:"conn_rounds"`
	ConnSlice       float64           `json:"conn_slice_seconds"`
	ScalePairs      int               `json:"scale_rounds"`
	ScaleSlice      float64           `json:"scale_slice_seconds"`
	IperfSeconds    float64           `json:"iperf_seconds"`
	LoadBudget      float64           `json:"load_budget_seconds"`
	TotalSeconds    float64           `json:"total_seconds"`
	Sysctls         map[string]string `json:"sysctls"`
}

// Throughput is iperf3 through a VIP and directly to the same backend.
type Throughput struct {
	Streams int    `json:"streams"`
	VIP     Series `json:"vip_gbps"`
	Direct  Series `json:"direct_gbps"`
	Ratios  Series `json:"pair_ratios"` // VIP/direct of each back-to-back pair
	Ratio   Num    `json:"ratio"`       // median of the pair ratios
	Error   string `json:"error,omitempty"`
}

// Conn is a new-connection measurement of one target over several runs.
type Conn struct {
	Rate   Series `json:"conns_per_s"`
	P50us  Series `json:"p50_us"`
	P99us  Series `json:"p99_us"`
	Errors int    `json:"errors"`
}

// NoConn is a connection measurement that did not happen: unknown
// medians, no runs.
func NoConn() Conn {
	return Conn{Rate: NewSeries(nil), P50us: NewSeries(nil), P99us: NewSeries(nil)}
}

// ConnRate compares new connections through a VIP and directly.
type ConnRate struct {
	VIP       Conn   `json:"vip"`
	Direct    Conn   `json:"direct"`
	Reference Conn   `json:"untracked_reference"` // direct, to ports the agent does not track
	Ratios    Series `json:"pair_ratios"`         // VIP/direct of each round
	Ratio     Num    `json:"ratio"`               // median of the pair ratios
	RefRatios Series `json:"reference_ratios"`    // VIP/untracked reference of each round
	RefRatio  Num    `json:"ratio_to_reference"`  // their median
	Error     string `json:"error,omitempty"`
}

// ScalePoint is the connection rate through one VIP with N VIPs of one
// layout installed.
type ScalePoint struct {
	Layout      string `json:"layout"`
	Loader      string `json:"loader"` // how the rules reach the kernel
	VIPs        int    `json:"vips"`
	Backends    int    `json:"backends_per_vip"`
	LoadSeconds Num    `json:"load_seconds"`
	ScriptBytes int    `json:"script_bytes,omitempty"`
	Skipped     string `json:"skipped,omitempty"`
	Error       string `json:"error,omitempty"`
	VIP         Conn   `json:"vip"`
	Direct      Conn   `json:"direct"`
	Reference   Conn   `json:"untracked_reference"` // direct, to ports the agent does not track: the same for every layout
	Ratios      Series `json:"pair_ratios"`         // VIP/direct of each round at this size
	Ratio       Num    `json:"ratio"`               // median of the pair ratios
	RefRatios   Series `json:"reference_ratios"`    // VIP/untracked reference of each round
	RefRatio    Num    `json:"ratio_to_reference"`  // their median
	DirectToRef Num    `json:"direct_to_reference"` // median of direct/untracked reference of each round
	VsOne       Num    `json:"ratio_vs_one"`        // RefRatio / RefRatio of the same layout with 1 VIP
	RateVsOne   Num    `json:"vip_rate_vs_one"`     // median VIP rate / that of the same layout with 1 VIP (not normalized by direct runs)
}

// NewScalePoint is a point with every figure unknown.
func NewScalePoint(layout, loader string, vips, backends int) ScalePoint {
	return ScalePoint{Layout: layout, Loader: loader, VIPs: vips, Backends: backends, LoadSeconds: NaN(),
		VIP: NoConn(), Direct: NoConn(), Reference: NoConn(), Ratios: NewSeries(nil), RefRatios: NewSeries(nil),
		Ratio: NaN(), RefRatio: NaN(), DirectToRef: NaN(), VsOne: NaN(), RateVsOne: NaN()}
}

// ControlPoint is cold programming of N VIPs and one backend change.
type ControlPoint struct {
	Impl           string `json:"impl"`
	Loader         string `json:"loader"`
	VIPs           int    `json:"vips"`
	Backends       int    `json:"backends_per_vip"`
	ColdSeconds    Num    `json:"cold_seconds"`
	ChangeSeconds  Num    `json:"change_seconds"` // change written to the first new connection reaching the new backend
	RSSBytes       int64  `json:"rss_bytes,omitempty"`
	VIPsAPIBytes   int    `json:"v1_vips_bytes,omitempty"`   // size of GET /v1/vips
	VIPsAPISeconds Num    `json:"v1_vips_seconds,omitempty"` // its duration
	Skipped        string `json:"skipped,omitempty"`
	Error          string `json:"error,omitempty"`
}

// MarathonPoint is the daemon on a Marathon-shaped server (marathon:URL):
// N apps x 10 tasks, then changes announced on /v2/events, each measured
// Reps times.
type MarathonPoint struct {
	VIPs           int       `json:"vips"`
	Backends       int       `json:"backends_per_vip"`
	Reps           int       `json:"reps"`
	ColdSeconds    Num       `json:"cold_seconds"`
	RSSBytes       int64     `json:"rss_bytes,omitempty"`
	BadP50Ms       Num       `json:"health_bad_p50_ms"`       // event to the start of the last new connection that reaches the failed task
	BadP99Ms       Num       `json:"health_bad_p99_ms"`       // (p99 of Reps: the largest but the top 1%)
	AddP50Ms       Num       `json:"task_added_p50_ms"`       // event to the first new connection that reaches the new task
	AddP99Ms       Num       `json:"task_added_p99_ms"`       //
	CPUms          Num       `json:"cpu_ms_per_change"`       // daemon CPU over every change, divided by the changes
	BytesPerChange Num       `json:"bytes_per_change"`        // app data read from Marathon per change
	Lists          int64     `json:"full_lists"`              // full lists read during the changes (0 expected)
	BadMs          []float64 `json:"health_bad_ms,omitempty"` // every sample, in order
	AddMs          []float64 `json:"task_added_ms,omitempty"` //
	Skipped        string    `json:"skipped,omitempty"`
	Error          string    `json:"error,omitempty"`
}

// Convergence is what follows a backend's health turning bad in the source.
type Convergence struct {
	Impl          string `json:"impl"`
	LastConnMs    Num    `json:"last_new_conn_ms"`    // health change to the start of the last new connection to the failed backend
	EstablishedMs Num    `json:"established_gone_ms"` // health change to no established conntrack entry of the failed backend (held flows flushed)
	ConntrackMs   Num    `json:"conntrack_gone_ms"`   // health change to no live conntrack entry of the failed backend
	HeldOnFailed  int    `json:"held_on_failed"`      // long-lived connections that were on the failed backend
	ConnsToFailed int    `json:"conns_to_failed"`
	Conns         int    `json:"conns"`
	Skipped       string `json:"skipped,omitempty"`
	Error         string `json:"error,omitempty"`
}

// Target is one goal of the issue and how the run did against it.
type Target struct {
	Name   string `json:"name"`
	Value  Num    `json:"value"`
	Goal   string `json:"goal"`
	Met    *bool  `json:"met"` // nil when not measured
	Detail string `json:"detail,omitempty"`
}

// Results is everything one run measured.
type Results struct {
	Meta        Meta            `json:"meta"`
	Targets     []Target        `json:"targets"`
	Throughput  []Throughput    `json:"throughput"`
	ConnRate    *ConnRate       `json:"conn_rate"`
	Scale       []ScalePoint    `json:"scale"`
	Control     []ControlPoint  `json:"control_plane"`
	Marathon    []MarathonPoint `json:"marathon,omitempty"`
	Convergence *Convergence    `json:"convergence"`
}

// WriteJSON writes the results, indented, to path.
func (r *Results) WriteJSON(path string) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	return writeFile(path, b.Bytes())
}

// ReadJSON reads results written by WriteJSON.
func ReadJSON(path string) (*Results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return &r, nil
}

// writeFile writes atomically: a temporary file renamed over path.
func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// FillVsOne sets each point's VIP/reference ratio and VIP rate against
// those of the same layout with 1 VIP.
func FillVsOne(points []ScalePoint) {
	ratio, rate := map[string]float64{}, map[string]float64{}
	for _, p := range points {
		if p.VIPs == 1 {
			ratio[p.Layout], rate[p.Layout] = float64(p.RefRatio), float64(p.VIP.Rate.Median)
		}
	}
	for i := range points {
		p := &points[i]
		p.VsOne, p.RateVsOne = NaN(), NaN()
		if base, ok := ratio[p.Layout]; ok {
			p.VsOne = Num(stats.Ratio(float64(p.RefRatio), base))
		}
		if base, ok := rate[p.Layout]; ok && len(p.VIP.Rate.Runs) > 0 {
			p.RateVsOne = Num(stats.Ratio(float64(p.VIP.Rate.Median), base))
		}
	}
}

// Evaluate fills Targets from the measurements: throughput and connection
// ratios through a VIP, and l4lb's connection rate at its largest measured
// size against 1 VIP.
func (r *Results) Evaluate() {
	r.Targets = nil
	for _, t := range r.Throughput {
		r.Targets = append(r.Targets, goal(fmt.Sprintf("throughput VIP/direct, %d stream(s)", t.Streams), t.Ratio, 0.97, ""))
	}
	if r.ConnRate != nil {
		r.Targets = append(r.Targets, goal("new connections VIP/direct", r.ConnRate.Ratio, 0.9, ""))
	}
	// l4lb at its largest measured size vs 1 VIP.
	var best *ScalePoint
	for i := range r.Scale {
		p := &r.Scale[i]
		if p.Layout == "l4lb" && p.VsOne.Valid() && p.VIPs > 1 && (best == nil || p.VIPs > best.VIPs) {
			best = p
		}
	}
	if best != nil {
		detail := ""
		if best.VIPs < 50000 {
			detail = fmt.Sprintf("largest size measured in this run: %d VIPs (the target is stated at 50,000)", best.VIPs)
		}
		r.Targets = append(r.Targets, goal(fmt.Sprintf("l4lb connection rate at %d VIPs vs 1 VIP", best.VIPs), best.VsOne, 0.95, detail))
	} else {
		r.Targets = append(r.Targets, Target{Name: "l4lb connection rate at 50,000 VIPs vs 1 VIP", Value: NaN(), Goal: ">= 0.95", Detail: "not measured"})
	}
}

func goal(name string, v Num, min float64, detail string) Target {
	t := Target{Name: name, Value: v, Goal: ">= " + strconv.FormatFloat(min, 'f', -1, 64), Detail: detail}
	if v.Valid() {
		met := float64(v) >= min
		t.Met = &met
	}
	return t
}
