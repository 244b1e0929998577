// Package layout generates and loads the data paths the benchmark
// compares: l4lb's ruleset, and the rulesets of kube-proxy's nftables and
// iptables modes for the same services. The generators are pure; Load runs
// nft or iptables-restore inside the agent's namespace.
package layout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/l4lb/l4lb/bench/scenario"
	"github.com/l4lb/l4lb/internal/netns"
	"github.com/l4lb/l4lb/nat"
)

// Layout is one way to program the VIPs of a scenario into an agent.
type Layout interface {
	// Name identifies the layout in results: l4lb, kube-nftables,
	// kube-iptables.
	Name() string
	// Loader names how the rules reach the kernel: "l4lb run", "nft -f",
	// "iptables-restore".
	Loader() string
	// Load programs the scenario into the agent's namespace, replacing what
	// the layout programmed before, and returns how long the kernel took.
	Load(ctx context.Context, agent *netns.NS, st *scenario.State) (Loaded, error)
	// VIPAddr is where clients reach the service called name.
	VIPAddr(ctx context.Context, agent *netns.NS, st *scenario.State, name string) (netip.AddrPort, error)
	// Clear removes everything the layout programmed.
	Clear(ctx context.Context, agent *netns.NS) error
}

// Loaded describes one load.
type Loaded struct {
	Duration    time.Duration // wall time of the load command (or daemon sync)
	ScriptBytes int           // size of the script handed to the kernel tool
}

// TempDir is where scripts are written before a load; the harness sets it
// to its run directory. Empty means the system's.
var TempDir = ""

// runScript writes script to a file and runs tool with args and the file
// name inside the namespace, bounded by ctx. It returns the command's wall
// time.
func runScript(ctx context.Context, ns *netns.NS, script []byte, tool string, args ...string) (time.Duration, error) {
	f, err := os.CreateTemp(TempDir, "l4lb-bench-*.rules")
	if err != nil {
		return 0, fmt.Errorf("script file: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(script); err != nil {
		f.Close()
		return 0, fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return run(ctx, ns, tool, append(args, f.Name())...)
}

// run runs a tool in the namespace and returns its wall time; the error
// carries its standard error, or says that ctx ended it.
func run(ctx context.Context, ns *netns.NS, tool string, args ...string) (time.Duration, error) {
	cmd := ns.Cmd(ctx, tool, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return d, fmt.Errorf("%s %s in %s: stopped after %s: %w", tool, strings.Join(args, " "), ns.Name, d.Round(time.Millisecond), ctx.Err())
		}
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "..."
		}
		return d, fmt.Errorf("%s %s in %s: %w: %s", tool, strings.Join(args, " "), ns.Name, err, msg)
	}
	return d, nil
}

// stateAddr is the address of a named VIP in the scenario's own state.
func stateAddr(st *scenario.State, name string) (netip.AddrPort, error) {
	v, ok := st.VIP(name)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("scenario has no VIP %q", name)
	}
	return netip.AddrPortFrom(v.Addr, v.Port), nil
}

// NFT is l4lb's ruleset, compiled in process with nat.Compile (exactly
// what the daemon programs) and loaded with `nft -f`, with the daemon's
// route for the VIP pool via lo.
type NFT struct{}

// Name implements Layout.
func (NFT) Name() string { return "l4lb" }

// Loader implements Layout.
func (NFT) Loader() string { return "nft -f" }

// Load implements Layout.
func (NFT) Load(ctx context.Context, agent *netns.NS, st *scenario.State) (Loaded, error) {
	if err := (NFT{}).Clear(ctx, agent); err != nil {
		return Loaded{}, err
	}
	script := []byte(nat.Compile(st.State, "").Text())
	d, err := runScript(ctx, agent, script, "nft", "-f")
	if err != nil {
		return Loaded{}, fmt.Errorf("load l4lb ruleset: %w", err)
	}
	if err := poolRoute(ctx, agent, true); err != nil {
		return Loaded{}, err
	}
	return Loaded{Duration: d, ScriptBytes: len(script)}, nil
}

// VIPAddr implements Layout.
func (NFT) VIPAddr(_ context.Context, _ *netns.NS, st *scenario.State, name string) (netip.AddrPort, error) {
	return stateAddr(st, name)
}

// Clear implements Layout.
func (NFT) Clear(ctx context.Context, agent *netns.NS) error {
	if _, err := run(ctx, agent, "nft", "flush", "ruleset"); err != nil {
		return fmt.Errorf("clear: %w", err)
	}
	return poolRoute(ctx, agent, false)
}

// poolRoute adds (or removes) the route of the VIP pool via lo that the
// daemon installs for local clients.
func poolRoute(ctx context.Context, agent *netns.NS, add bool) error {
	verb := "replace"
	if !add {
		verb = "del"
	}
	_, err := run(ctx, agent, "ip", "route", verb, scenario.Pool4.String(), "dev", "lo")
	if err != nil && !add && strings.Contains(err.Error(), "No such process") {
		return nil
	}
	return err
}

// KubeNFT is kube-proxy's nftables mode, loaded with `nft -f`.
type KubeNFT struct{ Kube Kube }

// Name implements Layout.
func (KubeNFT) Name() string { return "kube-nftables" }

// Loader implements Layout.
func (KubeNFT) Loader() string { return "nft -f" }

// Load implements Layout.
func (l KubeNFT) Load(ctx context.Context, agent *netns.NS, st *scenario.State) (Loaded, error) {
	if err := l.Clear(ctx, agent); err != nil {
		return Loaded{}, err
	}
	var b bytes.Buffer
	if err := l.Kube.WriteKubeNFT(&b, st.VIPs); err != nil {
		return Loaded{}, err
	}
	d, err := runScript(ctx, agent, b.Bytes(), "nft", "-f")
	if err != nil {
		return Loaded{}, fmt.Errorf("load kube-proxy nftables ruleset: %w", err)
	}
	return Loaded{Duration: d, ScriptBytes: b.Len()}, nil
}

// Update loads the transaction kube-proxy sends when the endpoints of one
// service change.
func (l KubeNFT) Update(ctx context.Context, agent *netns.NS, old, updated *scenario.State, name string) (Loaded, error) {
	o, ok1 := old.VIP(name)
	n, ok2 := updated.VIP(name)
	if !ok1 || !ok2 {
		return Loaded{}, fmt.Errorf("update: no VIP %q", name)
	}
	var b bytes.Buffer
	if err := l.Kube.WriteKubeNFTUpdate(&b, o, n); err != nil {
		return Loaded{}, err
	}
	d, err := runScript(ctx, agent, b.Bytes(), "nft", "-f")
	if err != nil {
		return Loaded{}, fmt.Errorf("update kube-proxy nftables ruleset: %w", err)
	}
	return Loaded{Duration: d, ScriptBytes: b.Len()}, nil
}

// VIPAddr implements Layout.
func (KubeNFT) VIPAddr(_ context.Context, _ *netns.NS, st *scenario.State, name string) (netip.AddrPort, error) {
	return stateAddr(st, name)
}

// Clear implements Layout.
func (KubeNFT) Clear(ctx context.Context, agent *netns.NS) error {
	if _, err := run(ctx, agent, "nft", "flush", "ruleset"); err != nil {
		return fmt.Errorf("clear: %w", err)
	}
	return nil
}

// KubeIPTables is kube-proxy's iptables mode, loaded with
// iptables-restore (whichever backend the system's iptables uses). The
// measured service sits in the middle of KUBE-SERVICES (see
// scenario.State.Ordered).
type KubeIPTables struct {
	Kube   Kube
	Middle string // service placed in the middle of KUBE-SERVICES
}

// Name implements Layout.
func (KubeIPTables) Name() string { return "kube-iptables" }

// Loader implements Layout.
func (KubeIPTables) Loader() string {
	if b := IPTablesBackend(); b != "" {
		return "iptables-restore, " + b
	}
	return "iptables-restore"
}

// Load implements Layout.
func (l KubeIPTables) Load(ctx context.Context, agent *netns.NS, st *scenario.State) (Loaded, error) {
	if err := l.Clear(ctx, agent); err != nil {
		return Loaded{}, err
	}
	var b bytes.Buffer
	if err := l.Kube.WriteKubeIPTables(&b, st.Ordered(l.Middle)); err != nil {
		return Loaded{}, err
	}
	d, err := runScript(ctx, agent, b.Bytes(), "iptables-restore", "-w", "60")
	if err != nil {
		return Loaded{}, fmt.Errorf("load kube-proxy iptables ruleset: %w", err)
	}
	return Loaded{Duration: d, ScriptBytes: b.Len()}, nil
}

// VIPAddr implements Layout.
func (KubeIPTables) VIPAddr(_ context.Context, _ *netns.NS, st *scenario.State, name string) (netip.AddrPort, error) {
	return stateAddr(st, name)
}

// Clear implements Layout: with the nf_tables backend the iptables tables
// are nftables tables and `nft flush ruleset` removes them in one
// transaction; with the legacy backend an empty restore flushes them.
func (KubeIPTables) Clear(ctx context.Context, agent *netns.NS) error {
	if IPTablesBackend() == "nf_tables" {
		_, err := run(ctx, agent, "nft", "flush", "ruleset")
		return err
	}
	_, err := runScript(ctx, agent, []byte("*filter\nCOMMIT\n*nat\nCOMMIT\n"), "iptables-restore", "-w", "60")
	return err
}

// IPTablesBackend is "nf_tables" or "legacy", as `iptables --version`
// says, or "" when iptables is missing.
func IPTablesBackend() string {
	out, err := exec.Command("iptables", "--version").Output()
	if err != nil {
		return ""
	}
	switch {
	case bytes.Contains(out, []byte("nf_tables")):
		return "nf_tables"
	case bytes.Contains(out, []byte("legacy")):
		return "legacy"
	}
	return ""
}

// ErrNoDaemon says bin/l4lb cannot run the daemon yet.
var ErrNoDaemon = errors.New("bin/l4lb has no `run` command yet (the daemon has not landed on this branch)")

// absPath resolves a binary path for use inside `ip netns exec`.
func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", p, err)
	}
	if _, err := os.Stat(a); err != nil {
		return "", fmt.Errorf("l4lb binary: %w (run `make build`)", err)
	}
	return a, nil
}
