package layout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/bench/scenario"
	"github.com/l4lb/l4lb/internal/netns"
)

// Daemon runs `l4lb run` inside the agent's namespace on a file source,
// following the daemon's command-line contract (DESIGN section 3):
//
//	l4lb run --source file:PATH --vip-pool 198.18.0.0/16 --vip-pool6 fd00:198:18::/64
//	  --state-dir DIR --api-listen 127.0.0.1:PORT --dns-listen ""
//
// Load writes the scenario's apps file and starts the daemon (stopping a
// previous one), then waits for GET /healthz to answer 200, which the
// daemon does once its first sync is in the kernel. Clear stops it and
// runs `l4lb cleanup`.
type Daemon struct {
	Bin     string // path of the l4lb binary
	Dir     string // working directory: apps file, state directory, log
	APIPort int    // port of the API on the agent's loopback
	Ready   time.Duration
	// Source, when set, replaces the file source (a marathon:URL); Load
	// still writes the apps file, unused then.
	Source string

	cmd     *exec.Cmd
	done    chan error
	started time.Time
	agent   *netns.NS
	// lastBody is the size of the last API answer (/v1/vips grows with the
	// number of VIPs and backends).
	lastBody int
}

// LastBodyBytes is the size of the last API answer.
func (d *Daemon) LastBodyBytes() int { return d.lastBody }

// Name implements Layout.
func (*Daemon) Name() string { return "l4lb" }

// Loader implements Layout.
func (*Daemon) Loader() string { return "l4lb run" }

// AppsPath is the daemon's file source.
func (d *Daemon) AppsPath() string { return filepath.Join(d.Dir, "apps.json") }

// Supported reports whether the binary has the run command: `l4lb run -h`
// exits 0 when it does.
func (d *Daemon) Supported(ctx context.Context) error {
	bin, err := absPath(d.Bin)
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, bin, "run", "-h").CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.IndexByte(msg, '\n'); i >= 0 && strings.Contains(msg, "unknown command") {
			msg = msg[strings.LastIndexByte(msg, '\n')+1:]
		}
		return fmt.Errorf("%w: `%s run -h`: %v: %s", ErrNoDaemon, d.Bin, err, msg)
	}
	return nil
}

// WriteApps replaces the daemon's apps file atomically (a new file renamed
// over the old one, so the daemon never reads half a file).
func (d *Daemon) WriteApps(data []byte) error {
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("daemon dir: %w", err)
	}
	tmp := d.AppsPath() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write apps: %w", err)
	}
	if err := os.Rename(tmp, d.AppsPath()); err != nil {
		return fmt.Errorf("write apps: %w", err)
	}
	return nil
}

// Load implements Layout: a cold start on the scenario. The duration runs
// from the daemon's start to its first 200 on /healthz.
func (d *Daemon) Load(ctx context.Context, agent *netns.NS, st *scenario.State) (Loaded, error) {
	if err := d.Clear(ctx, agent); err != nil {
		return Loaded{}, err
	}
	if err := os.RemoveAll(filepath.Join(d.Dir, "state")); err != nil {
		return Loaded{}, fmt.Errorf("reset state dir: %w", err)
	}
	if err := d.WriteApps(st.AppsJSON); err != nil {
		return Loaded{}, err
	}
	if err := d.Start(ctx, agent); err != nil {
		return Loaded{}, err
	}
	dur, err := d.WaitHealthy(ctx)
	if err != nil {
		return Loaded{}, err
	}
	return Loaded{Duration: dur, ScriptBytes: len(st.AppsJSON)}, nil
}

// Start starts the daemon in the agent's namespace.
func (d *Daemon) Start(ctx context.Context, agent *netns.NS) error {
	if d.cmd != nil {
		return errors.New("daemon already running")
	}
	bin, err := absPath(d.Bin)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(d.Dir, "state"), 0o755); err != nil {
		return fmt.Errorf("daemon state dir: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(d.Dir, "l4lb.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("daemon log: %w", err)
	}
	// Not tied to ctx: Stop ends it with SIGTERM, so that the daemon's own
	// shutdown path runs; the namespace's deletion kills it at the latest.
	src := "file:" + d.AppsPath()
	if d.Source != "" {
		src = d.Source
	}
	cmd := exec.Command("ip", "netns", "exec", agent.Name, bin, "run",
		"--source", src,
		"--vip-pool", scenario.Pool4.String(), "--vip-pool6", scenario.Pool6.String(),
		"--state-dir", filepath.Join(d.Dir, "state"),
		"--api-listen", "127.0.0.1:"+strconv.Itoa(d.APIPort),
		"--dns-listen", "")
	cmd.Stdout, cmd.Stderr = logf, logf
	d.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start l4lb run: %w", err)
	}
	d.cmd, d.agent = cmd, agent
	d.done = make(chan error, 1)
	go func() {
		d.done <- cmd.Wait()
		logf.Close()
	}()
	return nil
}

// CPUSeconds is the CPU time (user and system) the daemon used so far,
// from /proc/PID/stat, in clock ticks of 10 ms.
func (d *Daemon) CPUSeconds() (float64, error) {
	pid := d.Pid()
	if pid == 0 {
		return 0, errors.New("daemon not running")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields count from after its ')'.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return (ut + st) / 100, nil
}

// Pid is the daemon's process id (ip netns exec execs it), 0 when it is
// not running.
func (d *Daemon) Pid() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// RSS is the daemon's resident set size in bytes, from /proc.
func (d *Daemon) RSS() (int64, error) {
	pid := d.Pid()
	if pid == 0 {
		return 0, errors.New("daemon not running")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("daemon rss: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10, nil
				}
			}
		}
	}
	return 0, errors.New("daemon rss: no VmRSS in /proc status")
}

// client is an HTTP client whose connections are made inside the agent's
// namespace, where the API listens on loopback.
func (d *Daemon) client() *http.Client {
	agent := d.agent
	return &http.Client{
		Timeout: 2 * time.Minute, // /v1/vips of 50,000 VIPs is large
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				ap, err := netip.ParseAddrPort(addr)
				if err != nil {
					return nil, err
				}
				return agent.DialTCP(ctx, ap)
			},
		},
	}
}

func (d *Daemon) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", d.APIPort, path), nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := d.client().Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err == nil && len(body) > maxBody {
		err = fmt.Errorf("GET %s: answer larger than %d MiB", path, maxBody>>20)
	}
	d.lastBody = len(body)
	return resp.StatusCode, body, err
}

// maxBody bounds what the benchmark reads from the API.
const maxBody = 1 << 30

// WaitHealthy polls /healthz until it answers 200 and returns the time
// since the daemon started. It fails when the daemon exits or the wait
// exceeds Ready (60 s when zero) or ctx.
func (d *Daemon) WaitHealthy(ctx context.Context) (time.Duration, error) {
	limit := d.Ready
	if limit <= 0 {
		limit = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error
	for {
		code, _, err := d.get(ctx, "/healthz")
		if err == nil && code == http.StatusOK {
			return time.Since(d.started), nil
		}
		if err == nil {
			last = fmt.Errorf("healthz answered %d", code)
		} else {
			last = err
		}
		select {
		case err := <-d.done:
			d.cmd = nil
			return 0, fmt.Errorf("l4lb run exited before it was healthy (%v); see %s", err, filepath.Join(d.Dir, "l4lb.log"))
		case <-ctx.Done():
			return 0, fmt.Errorf("l4lb run not healthy after %s: %v", time.Since(d.started).Round(time.Millisecond), last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// apiVIP is the part of GET /v1/vips the benchmark reads (DESIGN section 4).
type apiVIP struct {
	VIP      string `json:"vip"`
	Protocol string `json:"protocol"`
	IP       string `json:"ip"`
	Port     int    `json:"port"`
}

// VIPAddr implements Layout: the address the daemon reports in /v1/vips.
func (d *Daemon) VIPAddr(ctx context.Context, _ *netns.NS, st *scenario.State, name string) (netip.AddrPort, error) {
	v, ok := st.VIP(name)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("scenario has no VIP %q", name)
	}
	want := v.Label()
	// Only the VIP asked for: the whole list is tens of megabytes at
	// 50,000 VIPs, garbage the daemon would collect during the
	// measurements that follow.
	first, _, _ := strings.Cut(want, ":")
	query := "name=" + url.QueryEscape(first)
	if ap, err := netip.ParseAddrPort(want); err == nil {
		query = "ip=" + url.QueryEscape(ap.Addr().String())
	}
	code, body, err := d.get(ctx, "/v1/vips?"+query)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("GET /v1/vips: %w", err)
	}
	if code != http.StatusOK {
		return netip.AddrPort{}, fmt.Errorf("GET /v1/vips: status %d", code)
	}
	var vips []apiVIP
	if err := json.Unmarshal(body, &vips); err != nil {
		return netip.AddrPort{}, fmt.Errorf("decode /v1/vips: %w", err)
	}
	for _, a := range vips {
		if a.VIP == want && a.Protocol == v.Proto.String() {
			ip, err := netip.ParseAddr(a.IP)
			if err != nil {
				return netip.AddrPort{}, fmt.Errorf("/v1/vips: %s has address %q: %w", want, a.IP, err)
			}
			return netip.AddrPortFrom(ip, uint16(a.Port)), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("/v1/vips has no %s/%s", want, v.Proto)
}

// Stop ends the daemon with SIGTERM (it leaves its rules in place), and
// kills it if it has not exited within 10 s.
func (d *Daemon) Stop() error {
	if d.cmd == nil {
		return nil
	}
	defer func() { d.cmd = nil }()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		return errors.New("l4lb run did not stop within 10s of SIGTERM; killed")
	}
}

// Clear implements Layout: stop the daemon and run `l4lb cleanup`.
func (d *Daemon) Clear(ctx context.Context, agent *netns.NS) error {
	stopErr := d.Stop()
	bin, err := absPath(d.Bin)
	if err != nil {
		return err
	}
	if _, err := run(ctx, agent, bin, "cleanup"); err != nil {
		return errors.Join(stopErr, fmt.Errorf("l4lb cleanup: %w", err))
	}
	return stopErr
}
