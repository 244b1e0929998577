package report

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// One colour and marker per layout, the same in every plot.
var styles = map[string]struct {
	c     color.RGBA
	shape draw.GlyphDrawer
}{
	"l4lb":                 {color.RGBA{R: 0x1b, G: 0x9e, B: 0x77, A: 255}, draw.CircleGlyph{}},
	"kube-nftables":        {color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 255}, draw.TriangleGlyph{}},
	"kube-iptables":        {color.RGBA{R: 0x75, G: 0x70, B: 0xb3, A: 255}, draw.PyramidGlyph{}},
	"kube-nftables update": {color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 255}, draw.RingGlyph{}},
}

func styleOf(name string, i int) (color.RGBA, draw.GlyphDrawer) {
	if s, ok := styles[name]; ok {
		return s.c, s.shape
	}
	palette := []color.RGBA{{R: 0xe7, G: 0x29, B: 0x8a, A: 255}, {R: 0x66, G: 0xa6, B: 0x1e, A: 255}, {R: 0xe6, G: 0xab, B: 0x02, A: 255}}
	return palette[i%len(palette)], draw.SquareGlyph{}
}

// series is one line of a plot.
type series struct {
	name    string
	points  plotter.XYs
	dashed  bool
	colorOf string // take the colour of this series name (default: its own)
}

// Plots draws the two PNG plots into dir, their file names starting with
// prefix.
func (r *Results) Plots(dir, prefix string) error {
	if err := r.plotConnRate(filepath.Join(dir, prefix+PlotConnRate)); err != nil {
		return err
	}
	return r.plotProgramming(filepath.Join(dir, prefix+PlotProgramming))
}

func (r *Results) plotConnRate(path string) error {
	var lines []series
	for _, l := range r.Layouts() {
		vip, direct := series{name: l}, series{name: "direct, " + l + " loaded", dashed: true, colorOf: l}
		for _, p := range r.Scale {
			if p.Layout != l {
				continue
			}
			if p.RefRatio.Valid() {
				vip.points = append(vip.points, plotter.XY{X: float64(p.VIPs), Y: float64(p.RefRatio)})
			}
			if p.DirectToRef.Valid() {
				direct.points = append(direct.points, plotter.XY{X: float64(p.VIPs), Y: float64(p.DirectToRef)})
			}
		}
		lines = append(lines, vip, direct)
	}
	return drawPlot(path, "New connections through one VIP (solid) and direct (dashed)", "VIPs installed (10 backends each)",
		"rate / untracked reference rate (median)", lines, false, r.subtitle(), false)
}

func (r *Results) plotProgramming(path string) error {
	byImpl := map[string]plotter.XYs{}
	var order []string
	add := func(name string, n int, secs Num) {
		if !secs.Valid() || secs <= 0 {
			return
		}
		if _, ok := byImpl[name]; !ok {
			order = append(order, name)
		}
		byImpl[name] = append(byImpl[name], plotter.XY{X: float64(n), Y: float64(secs)})
	}
	colour := map[string]string{}
	for _, p := range r.Scale {
		name := withLoader(p.Layout, p.Loader)
		colour[name] = p.Layout
		add(name, p.VIPs, p.LoadSeconds)
	}
	for _, c := range r.Control {
		name := withLoader(c.Impl, c.Loader)
		if _, ok := colour[name]; !ok {
			colour[name] = c.Impl
		}
		add(name, c.VIPs, c.ColdSeconds)
	}
	var lines []series
	for _, name := range order {
		lines = append(lines, series{name: name, points: medianBy(byImpl[name]), colorOf: colour[name]})
	}
	return drawPlot(path, "Programming all VIPs from scratch", "VIPs (10 backends each)",
		"seconds (log)", lines, true, r.subtitle(), true)
}

func withLoader(name, loader string) string {
	if loader == "" {
		return name
	}
	return name + " (" + loader + ")"
}

func (r *Results) subtitle() string {
	return fmt.Sprintf("%s, %s mode, kernel %s, %d CPUs", r.Meta.Date, r.Meta.Mode, r.Meta.Kernel, r.Meta.CPUs)
}

// medianBy merges points with the same X into their median Y, sorted by X.
func medianBy(pts plotter.XYs) plotter.XYs {
	groups := map[float64][]float64{}
	for _, p := range pts {
		groups[p.X] = append(groups[p.X], p.Y)
	}
	var xs []float64
	for x := range groups {
		xs = append(xs, x)
	}
	slices.Sort(xs)
	out := make(plotter.XYs, 0, len(xs))
	for _, x := range xs {
		ys := groups[x]
		slices.Sort(ys)
		y := ys[len(ys)/2]
		if len(ys)%2 == 0 {
			y = (ys[len(ys)/2-1] + ys[len(ys)/2]) / 2
		}
		out = append(out, plotter.XY{X: x, Y: y})
	}
	return out
}

// logTicks marks powers of ten with plain numbers.
type logTicks struct{}

func (logTicks) Ticks(min, max float64) []plot.Tick {
	var out []plot.Tick
	for e := math.Floor(math.Log10(min)); e <= math.Ceil(math.Log10(max)); e++ {
		v := math.Pow(10, e)
		if v < min*0.999 || v > max*1.001 {
			continue
		}
		out = append(out, plot.Tick{Value: v, Label: humanNumber(v)})
	}
	return out
}

func humanNumber(v float64) string {
	switch {
	case v >= 1000 && math.Mod(v, 1000) == 0:
		return fmt.Sprintf("%gk", v/1000)
	case v >= 1:
		return fmt.Sprintf("%g", v)
	}
	return fmt.Sprintf("%g", v)
}

func drawPlot(path, title, xlabel, ylabel string, lines []series, logY bool, subtitle string, legendTop bool) error {
	p := plot.New()
	p.Title.Text = title + "\n" + subtitle
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = logTicks{}
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	} else {
		p.Y.Min = 0
	}
	p.Legend.Top = legendTop
	p.Legend.Left = true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), vg.Points(-4)
	if !legendTop {
		p.Legend.YOffs = vg.Points(8)
	}
	p.Add(plotter.NewGrid())
	minX, maxX, drawn := math.Inf(1), math.Inf(-1), false
	for i, s := range lines {
		if len(s.points) == 0 {
			continue
		}
		drawn = true
		key := s.name
		if s.colorOf != "" {
			key = s.colorOf
		}
		c, shape := styleOf(key, i)
		l, sc, err := plotter.NewLinePoints(s.points)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.Color = c
		l.Width = vg.Points(1.5)
		if s.dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			l.Width = vg.Points(1)
			shape = draw.CrossGlyph{}
		}
		sc.Color = c
		sc.Shape = shape
		sc.Radius = vg.Points(3)
		p.Add(l, sc)
		p.Legend.Add(s.name, l, sc)
		for _, pt := range s.points {
			minX, maxX = math.Min(minX, pt.X), math.Max(maxX, pt.X)
		}
	}
	if !drawn {
		// Nothing measured: an empty frame with a usable range.
		minX, maxX = 1, 10
		p.Y.Min, p.Y.Max = 1, 10
	}
	p.X.Min, p.X.Max = minX/1.5, maxX*1.5
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return fmt.Errorf("save plot %s: %w", path, err)
	}
	return nil
}
