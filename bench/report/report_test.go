package report

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sample() *Results {
	r := &Results{Meta: Meta{Date: "2025-01-01 00:00 UTC", Mode: "quick", Kernel: "6.1", CPUs: 2, Commit: "0123456789abcdef",
		NFT: "nftables v1.0.6", L4LBDataPath: "nft -f", Client: "container", Workers: 4, Runs: 3, ConnPairs: 10, ConnSlice: 0.25, ScalePairs: 8, ScaleSlice: 0.2, IperfSeconds: 1}}
	r.Throughput = []Throughput{{Streams: 1, VIP: NewSeries([]float64{10, 11, 12}), Direct: NewSeries([]float64{10, 10, 12})}}
	r.Throughput[0].Ratios = PairRatios([]float64{10, 11, 12}, []float64{10, 10, 12})
	r.Throughput[0].Ratio = r.Throughput[0].Ratios.Median
	r.ConnRate = &ConnRate{VIP: Conn{Rate: NewSeries([]float64{8000})}, Direct: Conn{Rate: NewSeries([]float64{10000})}, Ratio: 0.8}
	for _, p := range []struct {
		l    string
		n    int
		rate float64
		load float64
		skip string
	}{
		{"l4lb", 1, 9000, 0.01, ""}, {"l4lb", 1000, 8900, 0.2, ""}, {"l4lb", 50000, 8800, 12, ""},
		{"kube-iptables", 1, 9000, 0.04, ""}, {"kube-iptables", 1000, 4000, 0.9, ""}, {"kube-iptables", 50000, 0, 0, "load projected at 300s exceeds the budget"},
	} {
		sp := NewScalePoint(p.l, "", p.n, 10)
		sp.LoadSeconds, sp.Skipped = Num(p.load), p.skip
		if p.skip == "" {
			sp.VIP = Conn{Rate: NewSeries([]float64{p.rate})}
			sp.Direct = Conn{Rate: NewSeries([]float64{9500})}
			sp.Ratio = Num(p.rate / 9500)
			sp.RefRatio = Num(p.rate / 10000)
			sp.DirectToRef = 0.95
		} else {
			sp.LoadSeconds = NaN()
		}
		r.Scale = append(r.Scale, sp)
	}
	FillVsOne(r.Scale)
	r.Control = []ControlPoint{{Impl: "l4lb", Loader: "l4lb run", VIPs: 1000, ColdSeconds: NaN(), ChangeSeconds: NaN(), Skipped: "bin/l4lb has no `run` | yet"},
		{Impl: "kube-nftables", Loader: "nft -f", VIPs: 1000, ColdSeconds: 1.0, ChangeSeconds: 0.05}}
	r.Convergence = &Convergence{Impl: "l4lb daemon", LastConnMs: NaN(), ConntrackMs: NaN(), EstablishedMs: NaN(), Skipped: "no daemon"}
	r.Evaluate()
	return r
}

func TestNumJSON(t *testing.T) {
	b, err := json.Marshal(struct {
		A, B Num
	}{Num(1.5), NaN()})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"A":1.5,"B":null}` {
		t.Errorf("got %s", b)
	}
	var back struct{ A, B Num }
	if err := json.Unmarshal(b, &back); err != nil || back.A != 1.5 || back.B.Valid() {
		t.Errorf("round trip: %+v %v", back, err)
	}
}

func TestSeries(t *testing.T) {
	s := NewSeries([]float64{3, math.NaN(), 1})
	if s.Median != 2 || len(s.Runs) != 3 || s.Runs[1].Valid() {
		t.Errorf("series %+v", s)
	}
	p := PairRatios([]float64{9, math.NaN(), 10, 8}, []float64{10, 10, 10, 0})
	if len(p.Runs) != 2 || math.Abs(float64(p.Median)-0.95) > 1e-9 {
		t.Errorf("pair ratios %+v", p)
	}
}

func TestEvaluate(t *testing.T) {
	r := sample()
	byName := map[string]Target{}
	for _, tg := range r.Targets {
		byName[tg.Name] = tg
	}
	if tg := byName["new connections VIP/direct"]; tg.Met == nil || *tg.Met {
		t.Errorf("0.8 against 0.9: %+v", tg)
	}
	tg, ok := byName["l4lb connection rate at 50000 VIPs vs 1 VIP"]
	if !ok || tg.Met == nil || !*tg.Met {
		t.Errorf("l4lb scale target: %+v (targets %+v)", tg, r.Targets)
	}
}

func TestWriteAndRead(t *testing.T) {
	dir := t.TempDir()
	r := sample()
	path := filepath.Join(dir, "latest.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Scale) != len(r.Scale) || back.Scale[5].LoadSeconds.Valid() || back.Meta.Commit != r.Meta.Commit {
		t.Errorf("round trip lost data: %+v", back.Scale)
	}
}

func TestMarkdown(t *testing.T) {
	var b bytes.Buffer
	if err := sample().Markdown(&b, "bench/results", ""); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| kube-iptables | 50,000 | – |",
		"load projected at 300s exceeds the budget",
		"| l4lb | 1,000 | 0.20 | 8,900 | 9,500 | – | 0.937 | 0.890 | 0.989 |",
		"bin/l4lb has no `run` / yet", // a | inside a note must not break the table
		"![connection rate against the number of VIPs](bench/results/conn-rate.png)",
		"| new connections VIP/direct | 0.800 | >= 0.9 | **no** |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	// Every table row has the same number of cells as its header.
	cells := 0
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "|") {
			cells = 0
			continue
		}
		n := strings.Count(line, "|")
		if cells == 0 {
			cells = n
		} else if n != cells {
			t.Errorf("row has %d separators, header %d: %s", n, cells, line)
		}
	}
}

func TestSpliceReadme(t *testing.T) {
	readme := "# x\n\nintro\n"
	once := SpliceReadme(readme, "table one\n")
	if !strings.Contains(once, "## Benchmarks\n\n"+ReadmeBegin+"\ntable one\n"+ReadmeEnd+"\n") {
		t.Fatalf("appended section wrong:\n%s", once)
	}
	twice := SpliceReadme(once+"\n## After\n", "table two")
	if strings.Contains(twice, "table one") || !strings.Contains(twice, "table two") || strings.Count(twice, "## Benchmarks") != 1 {
		t.Errorf("splice did not replace:\n%s", twice)
	}
	if !strings.HasSuffix(twice, "\n## After\n") || !strings.HasPrefix(twice, "# x\n\nintro\n") {
		t.Errorf("text around the block changed:\n%s", twice)
	}
}

func TestPlots(t *testing.T) {
	dir := t.TempDir()
	if err := sample().Plots(dir, ""); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{PlotConnRate, PlotProgramming} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
			t.Errorf("%s is %v", name, b)
		}
	}
	// Nothing measured still draws.
	empty := &Results{}
	if err := empty.Plots(dir, "x-"); err != nil {
		t.Errorf("empty results: %v", err)
	}
}

func TestFillVsOne(t *testing.T) {
	r := sample()
	p := r.Scale[2] // l4lb, 50000 VIPs
	if math.Abs(float64(p.VsOne)-8800.0/9000) > 1e-9 || math.Abs(float64(p.RateVsOne)-8800.0/9000) > 1e-9 || p.Loader != "" {
		t.Errorf("vs one: ratio %v rate %v", p.VsOne, p.RateVsOne)
	}
	if r.Scale[5].VsOne.Valid() || r.Scale[5].RateVsOne.Valid() {
		t.Errorf("a skipped point got figures: %+v", r.Scale[5])
	}
	if float64(r.Scale[0].VsOne) != 1 {
		t.Errorf("1 VIP against itself: %v", r.Scale[0].VsOne)
	}
}
