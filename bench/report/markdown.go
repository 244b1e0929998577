package report

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Plot file names, next to latest.json.
const (
	PlotConnRate    = "conn-rate.png"
	PlotProgramming = "programming-time.png"
)

func f(n Num, prec int) string {
	if !n.Valid() {
		return "–"
	}
	return strconv.FormatFloat(float64(n), 'f', prec, 64)
}

func thousands(n Num) string {
	if !n.Valid() {
		return "–"
	}
	s := strconv.FormatInt(int64(float64(n)+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func size(n int) string { return thousands(Num(n)) }

// note joins the reasons a figure is missing.
func note(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, strings.ReplaceAll(p, "|", "/"))
		}
	}
	return strings.Join(out, "; ")
}

// Markdown writes the results as tables for people. plotDir is the path
// of the plots relative to where the Markdown is shown ("" for none),
// prefix starts their file names.
func (r *Results) Markdown(w io.Writer, plotDir, prefix string) error {
	ew := &errWriter{w: w}
	m := r.Meta
	ew.printf("Run of %s (%s mode), l4lb %s%s, kernel %s, %d CPUs, %s, %s; l4lb rules via %s. "+
		"Clients run in the %s namespace. Connection figures: %d workers; VIP, direct and untracked reference alternate in slices "+
		"within one client (%d rounds of %gs slices for new connections, %d rounds of %gs at each scale point); "+
		"iperf3: %d runs of %gs each way, alternating. Figures are medians; ratios are medians of the ratios within each round.\n\n",
		m.Date, m.Mode, shortCommit(m.Commit), dirty(m.Dirty), m.Kernel, m.CPUs, m.NFT, m.IPTables, m.L4LBDataPath,
		m.Client, m.Workers, m.ConnPairs, m.ConnSlice, m.ScalePairs, m.ScaleSlice, m.Runs, m.IperfSeconds)

	ew.printf("| target | measured | goal | met |\n|---|---|---|---|\n")
	for _, t := range r.Targets {
		met := "not measured"
		if t.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*t.Met]
		}
		name := t.Name
		if t.Detail != "" {
			name += " (" + t.Detail + ")"
		}
		ew.printf("| %s | %s | %s | %s |\n", name, f(t.Value, 3), t.Goal, met)
	}

	if len(r.Throughput) > 0 {
		ew.printf("\n**Throughput** (iperf3, %gs per run, one backend):\n\n", m.IperfSeconds)
		ew.printf("| streams | VIP Gbit/s | direct Gbit/s | VIP/direct | note |\n|---|---|---|---|---|\n")
		for _, t := range r.Throughput {
			ew.printf("| %d | %s | %s | %s | %s |\n", t.Streams, f(t.VIP.Median, 2), f(t.Direct.Median, 2), f(t.Ratio, 3), note(t.Error))
		}
	}

	if c := r.ConnRate; c != nil {
		ew.printf("\n**New connections** (connect, read one byte, close; 10 backends; the untracked reference is direct " +
			"connections to ports the agent exempts from conntrack, so no nat rule sees them):\n\n")
		ew.printf("| path | conns/s | p50 µs | p99 µs | errors |\n|---|---|---|---|---|\n")
		for _, row := range []struct {
			name string
			c    Conn
		}{{"VIP", c.VIP}, {"direct", c.Direct}, {"untracked reference", c.Reference}} {
			ew.printf("| %s | %s | %s | %s | %d |\n", row.name, thousands(row.c.Rate.Median), f(row.c.P50us.Median, 0), f(row.c.P99us.Median, 0), row.c.Errors)
		}
		ew.printf("| VIP/direct | %s | | | %s |\n", f(c.Ratio, 3), note(c.Error))
		ew.printf("| VIP/reference | %s | | | |\n", f(c.RefRatio, 3))
	}

	if len(r.Scale) > 0 {
		ew.printf("\n**Data-path scale**: new connections through one VIP with N VIPs of 10 backends installed. " +
			"Direct connections cross the same agent with the same rules loaded (in kube-proxy's iptables mode every new " +
			"connection walks KUBE-SERVICES, so they slow down too); the untracked reference is the same for every layout and size. " +
			"VIP/ref = median of the per-round VIP/reference ratios; vs 1 = VIP/ref over the layout's VIP/ref with 1 VIP:\n\n")
		ew.printf("| layout | VIPs | load s | VIP conns/s | direct conns/s | ref conns/s | VIP/direct | VIP/ref | vs 1 | VIP p50 µs | VIP p99 µs | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range r.Scale {
			ew.printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", withLoader(p.Layout, p.Loader), size(p.VIPs), f(p.LoadSeconds, 2),
				thousands(p.VIP.Rate.Median), thousands(p.Direct.Rate.Median), thousands(p.Reference.Rate.Median),
				f(p.Ratio, 3), f(p.RefRatio, 3), f(p.VsOne, 3),
				f(p.VIP.P50us.Median, 0), f(p.VIP.P99us.Median, 0), note(p.Skipped, p.Error))
		}
	}

	if len(r.Control) > 0 {
		ew.printf("\n**Control plane**: cold programming of N VIPs x 10 backends, then one backend added " +
			"(change = from the write to the first new connection reaching the new backend):\n\n")
		ew.printf("| impl | VIPs | cold s | change s | RSS MiB | GET /v1/vips | note |\n|---|---|---|---|---|---|---|\n")
		for _, c := range r.Control {
			rss, api := "–", "–"
			if c.RSSBytes > 0 {
				rss = strconv.FormatFloat(float64(c.RSSBytes)/(1<<20), 'f', 1, 64)
			}
			if c.VIPsAPIBytes > 0 {
				api = fmt.Sprintf("%.1f MiB in %ss", float64(c.VIPsAPIBytes)/(1<<20), f(c.VIPsAPISeconds, 2))
			}
			ew.printf("| %s | %s | %s | %s | %s | %s | %s |\n", withLoader(c.Impl, c.Loader), size(c.VIPs), f(c.ColdSeconds, 2), f(c.ChangeSeconds, 3), rss, api, note(c.Skipped, c.Error))
		}
	}

	if len(r.Marathon) > 0 {
		ew.printf("\n**Marathon path**: the daemon on a Marathon-shaped server (`/v2/apps`, `/v2/apps/{id}`, `/v2/events`) "+
			"with N apps x 10 tasks; each change is announced by an event and measured %d times (p50 / p99); CPU and bytes read are per change:\n\n", r.Marathon[0].Reps)
		ew.printf("| VIPs | cold s | RSS MiB | health bad: last new conn ms p50 / p99 | task added: first conn ms p50 / p99 | CPU ms/change | bytes read/change | full lists | note |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, m := range r.Marathon {
			rss := "–"
			if m.RSSBytes > 0 {
				rss = strconv.FormatFloat(float64(m.RSSBytes)/(1<<20), 'f', 1, 64)
			}
			ew.printf("| %s | %s | %s | %s / %s | %s / %s | %s | %s | %d | %s |\n", size(m.VIPs), f(m.ColdSeconds, 2), rss,
				f(m.BadP50Ms, 0), f(m.BadP99Ms, 0), f(m.AddP50Ms, 0), f(m.AddP99Ms, 0), f(m.CPUms, 2), thousands(m.BytesPerChange), m.Lists, note(m.Skipped, m.Error))
		}
	}

	if c := r.Convergence; c != nil {
		ew.printf("\n**Convergence** after a backend's health check fails in the source:\n\n")
		ew.printf("| impl | last new conn to it ms | its established conntrack entries gone ms | all its live entries gone ms | held conns on it | note |\n|---|---|---|---|---|---|\n")
		ew.printf("| %s | %s | %s | %s | %d | %s |\n", c.Impl, f(c.LastConnMs, 0), f(c.EstablishedMs, 0), f(c.ConntrackMs, 0), c.HeldOnFailed, note(c.Skipped, c.Error))
	}

	if plotDir != "" {
		ew.printf("\n![connection rate against the number of VIPs](%s)\n", joinPath(plotDir, prefix+PlotConnRate))
		ew.printf("![programming time against the number of VIPs](%s)\n", joinPath(plotDir, prefix+PlotProgramming))
	}
	return ew.err
}

func joinPath(dir, name string) string {
	if dir == "" || dir == "." {
		return name
	}
	return strings.TrimSuffix(dir, "/") + "/" + name
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	if c == "" {
		return "(unknown commit)"
	}
	return c
}

func dirty(d bool) string {
	if d {
		return " (with uncommitted changes)"
	}
	return ""
}

// Layouts returns the layouts of the scale points, in first-seen order.
func (r *Results) Layouts() []string {
	var out []string
	for _, p := range r.Scale {
		if !slices.Contains(out, p.Layout) {
			out = append(out, p.Layout)
		}
	}
	return out
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err != nil {
		return
	}
	_, e.err = fmt.Fprintf(e.w, format, args...)
}
