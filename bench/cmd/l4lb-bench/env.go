package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/bench/load"
	"github.com/l4lb/l4lb/internal/netns"
)

// nsPrefix starts the name of every namespace the benchmark creates; the
// stale sweep only ever touches names with it.
const nsPrefix = "l4bench"

// benchSysctls are set in every namespace of the benchmark (DESIGN
// section 7): TIME_WAIT conntrack entries expire after 1 s instead of 120,
// the whole port range is used and TIME_WAIT ports are reused, so that a
// new-connection benchmark does not fill the conntrack table.
var benchSysctls = [][2]string{
	{"net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"},
	{"net.ipv4.ip_local_port_range", "1024 65535"},
	{"net.ipv4.tcp_tw_reuse", "1"},
}

// Backend ports: each backend namespace runs the connection server on
// connPorts (marks A-E on backend 1, F-J on backend 2) and on the
// untracked reference ports (marks a-j), backend 1 also serves sparePort
// (mark K, the backend a change adds) and iperf3.
const (
	connPortBase = 8080
	connPorts    = 5
	refPortBase  = 9080
	sparePort    = 8085
	spareMark    = 'K'
	iperfPort    = 5201
)

// env is the benchmark's topology and its long-running processes.
type env struct {
	self   string // this executable, run inside namespaces
	topo   *netns.Topology
	client *netns.NS // where the load generators run
	procs  []*exec.Cmd
	logw   io.Writer
	nice   int // niceness of the load generators and servers (0: unchanged)
}

// cmd runs a load generator or server in ns, at the benchmark's niceness.
func (e *env) cmd(ctx context.Context, ns *netns.NS, name string, args ...string) *exec.Cmd {
	if e.nice != 0 {
		return ns.Cmd(ctx, "nice", append([]string{"-n", strconv.Itoa(e.nice), name}, args...)...)
	}
	return ns.Cmd(ctx, name, args...)
}

// sweepStale deletes namespaces left by an earlier benchmark process that
// is gone (killed before its cleanup ran). Only names with nsPrefix whose
// process id is not running are touched.
func sweepStale(logw io.Writer) {
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidText, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its benchmark is still running
		}
		if err := (&netns.NS{Name: e.Name()}).Delete(); err != nil {
			fmt.Fprintf(logw, "stale namespace %s: %v\n", e.Name(), err)
		} else {
			fmt.Fprintf(logw, "removed stale namespace %s\n", e.Name())
		}
	}
}

// newEnv builds the topology: an agent with two backends and one container
// (netns.Topology), the benchmark sysctls everywhere, the connection
// servers and iperf3 in the backends. clientInAgent runs the load
// generators in the agent itself (output hook) instead of the container
// (prerouting hook, forwarded).
func newEnv(ctx context.Context, self string, clientInAgent bool, nice int, logw io.Writer) (e *env, err error) {
	topo, err := netns.NewTopology(nsPrefix, 2, 1)
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	e = &env{self: self, topo: topo, client: topo.Containers[0].NS, logw: logw, nice: nice}
	if clientInAgent {
		e.client = topo.Agent.NS
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close())
			e = nil
		}
	}()
	for _, h := range append(append([]netns.Host{topo.Agent}, topo.Backends...), topo.Containers...) {
		for _, s := range benchSysctls {
			if err := h.Sysctl(s[0], s[1]); err != nil {
				return e, err
			}
		}
	}
	for i, be := range topo.Backends {
		var ls []load.Listener
		for p := range connPorts {
			ls = append(ls, load.Listener{Addr: netip.AddrPortFrom(be.Addr4, uint16(connPortBase+p)), Mark: byte('A' + i*connPorts + p)})
			ls = append(ls, load.Listener{Addr: netip.AddrPortFrom(be.Addr4, uint16(refPortBase+p)), Mark: byte('a' + i*connPorts + p)})
		}
		if i == 0 {
			ls = append(ls, load.Listener{Addr: netip.AddrPortFrom(be.Addr4, sparePort), Mark: spareMark})
		}
		if err := e.startServer(ctx, be.NS, ls); err != nil {
			return e, err
		}
	}
	if _, err := exec.LookPath("iperf3"); err == nil {
		be := topo.Backends[0]
		cmd := e.cmd(context.Background(), be.NS, "iperf3", "-s", "-B", be.Addr4.String(), "-p", strconv.Itoa(iperfPort))
		if err := cmd.Start(); err != nil {
			return e, fmt.Errorf("start iperf3 server: %w", err)
		}
		e.procs = append(e.procs, cmd)
		if err := waitListening(ctx, be.NS, iperfPort); err != nil {
			return e, err
		}
	}
	return e, nil
}

// startServer runs `l4lb-bench serve` in ns and waits for its "ready".
func (e *env) startServer(ctx context.Context, ns *netns.NS, ls []load.Listener) error {
	cmd := e.cmd(context.Background(), ns, e.self, "serve", "--listen", load.FormatListeners(ls))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start server in %s: %w", ns.Name, err)
	}
	e.procs = append(e.procs, cmd)
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case l, ok := <-line:
		if !ok || l != "ready" {
			return fmt.Errorf("server in %s did not start: %s", ns.Name, strings.TrimSpace(stderr.String()))
		}
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("server in %s: not ready after 10s", ns.Name)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitListening waits until a TCP port listens in ns (ss as witness).
func waitListening(ctx context.Context, ns *netns.NS, port int) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, err := ns.Run("ss", "-Hltn", "sport", "=", ":"+strconv.Itoa(port))
		if err == nil && strings.TrimSpace(out) != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens on port %d in %s after 10s", port, ns.Name)
}

// close stops the processes and removes every namespace.
func (e *env) close() error {
	for _, p := range e.procs {
		if p.Process != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range e.procs {
		if p.Process == nil {
			continue
		}
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	e.procs = nil
	return e.topo.Delete()
}

// agent is the agent's namespace.
func (e *env) agent() *netns.NS { return e.topo.Agent.NS }

// connTargets are the ten connection-server addresses of both backends.
func (e *env) connTargets() []netip.AddrPort {
	var out []netip.AddrPort
	for _, be := range e.topo.Backends {
		for p := range connPorts {
			out = append(out, netip.AddrPortFrom(be.Addr4, uint16(connPortBase+p)))
		}
	}
	return out
}

// refTargets are the reference ports of both backends: connections to
// them are not tracked by the agent (refTable), so no nat chain of any
// layout sees them. They measure the machine's speed at that moment, the
// same for every layout and size.
func (e *env) refTargets() []netip.AddrPort {
	var out []netip.AddrPort
	for _, be := range e.topo.Backends {
		for p := range connPorts {
			out = append(out, netip.AddrPortFrom(be.Addr4, uint16(refPortBase+p)))
		}
	}
	return out
}

// refTable is the agent's table that exempts the reference ports from
// connection tracking, in both directions, for forwarded and local
// clients. Loading it again replaces it.
func refTable() string {
	ports := fmt.Sprintf("%d-%d", refPortBase, refPortBase+connPorts-1)
	return fmt.Sprintf(`table ip %[1]s {}
flush table ip %[1]s
table ip %[1]s {
	chain raw-prerouting {
		type filter hook prerouting priority raw; policy accept;
		tcp dport %[2]s notrack
		tcp sport %[2]s notrack
	}
	chain raw-output {
		type filter hook output priority raw; policy accept;
		tcp dport %[2]s notrack
		tcp sport %[2]s notrack
	}
}
`, refTableName, ports)
}

// refTableName is the benchmark's own table in the agent.
const refTableName = "l4lb-bench-ref"

// ensureRef (re)loads refTable: layouts that flush the whole ruleset
// remove it.
func (e *env) ensureRef(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := e.agent().Cmd(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(refTable())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("load the reference table: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// markOf is the mark of a backend address.
func (e *env) markOf(ap netip.AddrPort) byte {
	for i, be := range e.topo.Backends {
		if be.Addr4 == ap.Addr() && ap.Port() >= connPortBase && ap.Port() < connPortBase+connPorts {
			return byte('A' + i*connPorts + int(ap.Port()-connPortBase))
		}
	}
	if ap == e.spare() {
		return spareMark
	}
	return 0
}

// spare is the backend a change adds.
func (e *env) spare() netip.AddrPort {
	return netip.AddrPortFrom(e.topo.Backends[0].Addr4, sparePort)
}

// iperfBackend is where iperf3 listens.
func (e *env) iperfBackend() netip.AddrPort {
	return netip.AddrPortFrom(e.topo.Backends[0].Addr4, iperfPort)
}

// clientOpts are the flags of one client run.
type clientOpts struct {
	targets   []netip.AddrPort
	workers   int
	duration  time.Duration // of a plain run, or a bound on all rounds
	hold      int
	holdAfter time.Duration
	untilMark byte
	more      [][]netip.AddrPort // rounds run: targets, then these sets
	rounds    int
	slice     time.Duration
}

func joinTargets(ts []netip.AddrPort) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, ",")
}

func (o clientOpts) args() []string {
	args := []string{"connect", "--targets", joinTargets(o.targets), "--workers", strconv.Itoa(o.workers),
		"--duration", o.duration.String(), "--timeout", "1s"}
	if len(o.more) > 0 {
		sets := make([]string, len(o.more))
		for i, m := range o.more {
			sets[i] = joinTargets(m)
		}
		args = append(args, "--more-targets", strings.Join(sets, ";"), "--rounds", strconv.Itoa(o.rounds), "--slice", o.slice.String())
	}
	if o.hold > 0 {
		args = append(args, "--hold", strconv.Itoa(o.hold), "--hold-after", o.holdAfter.String())
	}
	if o.untilMark != 0 {
		args = append(args, "--until-mark", string(rune(o.untilMark)))
	}
	return args
}

// clientProc is a running client.
type clientProc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr *lineBuffer
	cancel context.CancelFunc
}

// startClient starts a client run in the client namespace, bounded by its
// duration plus a margin.
func (e *env) startClient(ctx context.Context, o clientOpts) (*clientProc, error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration+o.holdAfter+time.Duration(o.hold)*100*time.Millisecond+20*time.Second)
	p := &clientProc{stderr: newLineBuffer(), cancel: cancel}
	p.cmd = e.cmd(ctx, e.client, e.self, o.args()...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, p.stderr
	p.cmd.WaitDelay = 2 * time.Second
	if err := p.cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start client: %w", err)
	}
	return p, nil
}

// stop asks the client to finish (SIGTERM): it ends a hold early and
// still prints its result.
func (p *clientProc) stop() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
}

// waitLine waits until the client printed line on stderr.
func (p *clientProc) waitLine(ctx context.Context, line string, limit time.Duration) error {
	select {
	case <-p.stderr.wait(line):
		return nil
	case <-time.After(limit):
		return fmt.Errorf("client did not print %q within %s: %s", line, limit, p.stderr.String())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// result waits for the client and decodes its result.
func (p *clientProc) result() (load.ClientResult, error) {
	var res load.ClientResult
	return res, p.decode(&res)
}

func (p *clientProc) decode(v any) error {
	defer p.cancel()
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("client: %w: %s", err, strings.TrimSpace(p.stderr.String()))
	}
	if err := json.Unmarshal(p.stdout.Bytes(), v); err != nil {
		return fmt.Errorf("client output: %w", err)
	}
	return nil
}

// runRounds is one client run alternating the VIP, the direct targets and
// the untracked reference targets.
func (e *env) runRounds(ctx context.Context, vip netip.AddrPort, workers, rounds int, slice time.Duration) (load.RoundsResult, error) {
	var res load.RoundsResult
	more := [][]netip.AddrPort{e.connTargets(), e.refTargets()}
	p, err := e.startClient(ctx, clientOpts{targets: []netip.AddrPort{vip}, more: more, workers: workers,
		rounds: rounds, slice: slice, duration: time.Duration(len(more)+1) * time.Duration(rounds) * (slice + time.Second)})
	if err != nil {
		return res, err
	}
	return res, p.decode(&res)
}

// runClient is one client run, start to finish.
func (e *env) runClient(ctx context.Context, o clientOpts) (load.ClientResult, error) {
	p, err := e.startClient(ctx, o)
	if err != nil {
		return load.ClientResult{}, err
	}
	return p.result()
}

// lineBuffer collects output and lets a caller wait for a given line.
type lineBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	done int // bytes of buf already split into lines
	seen map[string]bool
	subs map[string]chan struct{}
}

func newLineBuffer() *lineBuffer {
	return &lineBuffer{seen: map[string]bool{}, subs: map[string]chan struct{}{}}
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		rest := l.buf.Bytes()[l.done:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := string(rest[:i])
		l.done += i + 1
		l.seen[line] = true
		if ch, ok := l.subs[line]; ok {
			close(ch)
			delete(l.subs, line)
		}
	}
	return len(p), nil
}

// wait returns a channel closed once line has been written.
func (l *lineBuffer) wait(line string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ch, ok := l.subs[line]; ok {
		return ch
	}
	ch := make(chan struct{})
	if l.seen[line] {
		close(ch)
		return ch
	}
	l.subs[line] = ch
	return ch
}

func (l *lineBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.buf.String())
}
