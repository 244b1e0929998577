package layout

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/bench/scenario"
	"github.com/l4lb/l4lb/internal/netns"
)

// buildL4LB builds the daemon into a temporary directory.
func buildL4LB(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "l4lb")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/l4lb/l4lb/cmd/l4lb").CombinedOutput()
	if err != nil {
		t.Fatalf("build l4lb: %v\n%s", err, out)
	}
	return bin
}

func TestDaemonUnsupported(t *testing.T) {
	// A binary without the run command is reported as ErrNoDaemon.
	fake := filepath.Join(t.TempDir(), "l4lb")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'l4lb: usage: unknown command \"run\"' >&2\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := (&Daemon{Bin: fake}).Supported(context.Background())
	if !errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("Supported: %v", err)
	}
	if err := (&Daemon{Bin: filepath.Join(t.TempDir(), "missing")}).Supported(context.Background()); err == nil {
		t.Error("a missing binary is supported")
	}
}

// TestDaemonLayout runs the real daemon through the layout: cold start,
// address from /v1/vips, traffic to both backends, a change through the
// file, RSS, and cleanup.
func TestDaemonLayout(t *testing.T) {
	topo := netns.TopologyForTest(t, "l4bt", 2, 1, "nft", "go")
	bin := buildL4LB(t)
	probe := scenario.Service{Name: "probe", Port: 80}
	for i, be := range topo.Backends {
		addr := netip.AddrPortFrom(be.Addr4, 9082)
		srv, err := be.Serve(fmt.Sprintf("be%d", i+1), addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		probe.Backends = append(probe.Backends, scenario.Backend{Addr: addr})
	}
	st, err := scenario.Spec{Total: 50, FillerBackends: 3, Services: []scenario.Service{probe}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Bin: bin, Dir: t.TempDir(), APIPort: 62181}
	if err := d.Supported(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := topo.Agent.NS
	t.Cleanup(func() { _ = d.Clear(context.Background(), agent) })
	ld, err := d.Load(ctx, agent, st)
	if err != nil {
		t.Fatal(err)
	}
	if ld.Duration <= 0 {
		t.Errorf("load took %s", ld.Duration)
	}
	vip, err := d.VIPAddr(ctx, agent, st, "probe")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := st.VIP("probe"); vip.Addr() != want.Addr || vip.Port() != 80 {
		t.Errorf("daemon's address %s, the scenario computed %s", vip, want.Addr)
	}
	if rss, err := d.RSS(); err != nil || rss <= 0 {
		t.Errorf("rss %d, %v", rss, err)
	}
	seen := map[string]bool{}
	for range 30 {
		name, err := topo.Containers[0].AskTCP(vip, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		seen[name] = true
	}
	if !seen["be1"] || !seen["be2"] {
		t.Errorf("VIP reached %v", seen)
	}
	// One backend goes: after the daemon re-reads the file only be2 answers.
	probe.Backends = probe.Backends[1:]
	changed, err := scenario.Spec{Total: 50, FillerBackends: 3, Services: []scenario.Service{probe}}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteApps(changed.AppsJSON); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ok := 0; ok < 20; {
		if time.Now().After(deadline) {
			t.Fatal("be1 still gets connections 10s after the change")
		}
		name, err := topo.Containers[0].AskTCP(vip, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if name == "be2" {
			ok++
		} else {
			ok = 0
		}
	}
	if err := d.Clear(ctx, agent); err != nil {
		t.Fatal(err)
	}
	if d.Pid() != 0 {
		t.Error("daemon still running after Clear")
	}
	if out, _ := agent.Run("nft", "list", "tables"); strings.Contains(out, "l4lb") {
		t.Errorf("table left after cleanup: %s", out)
	}
}
