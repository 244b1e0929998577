package reconcile

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// fakeSource returns what it is told to.
type fakeSource struct {
	mu   sync.Mutex
	data string
	err  error
}

func (f *fakeSource) String() string { return "fake:" }

func (f *fakeSource) Load(ctx context.Context) (source.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return source.Snapshot{}, f.err
	}
	apps, problems, err := vip.ParseApps([]byte(f.data))
	if err != nil {
		return source.Snapshot{}, err
	}
	return source.Snapshot{Apps: apps, Problems: problems}, nil
}

func (f *fakeSource) Watch(ctx context.Context, changed func()) error { <-ctx.Done(); return nil }

func (f *fakeSource) set(data string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data, f.err = data, err
}

const oneApp = `{"id": "/web", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "web:80"}}],
  "tasks": [{"id": "t1", "host": "198.19.0.11", "ports": [31000], "state": "TASK_RUNNING"}]}`

func newTest(t *testing.T) (*Reconciler, *fakeSource, *nat.Fake, string) {
	src := &fakeSource{}
	fk := nat.NewFake()
	dir := t.TempDir()
	r := New(Config{
		Sources:  []source.Source{src},
		NAT:      fk,
		Model:    vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/16"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")},
		StateDir: dir,
	})
	return r, src, fk, dir
}

func TestNothingWrittenBeforeFirstGoodRead(t *testing.T) {
	r, src, fk, _ := newTest(t)
	src.set("", errors.New("marathon down"))
	err := r.Sync(context.Background(), true)
	if !errors.Is(err, ErrNoGoodState) {
		t.Fatalf("Sync = %v, want ErrNoGoodState", err)
	}
	if fk.Applies() != 0 {
		t.Errorf("the kernel was written before a good read")
	}
	if st := r.Status(); st.Synced || !st.Stale || !strings.Contains(st.LastError, "marathon down") {
		t.Errorf("status %+v", st)
	}
}

func TestFailingSourceKeepsLastGoodState(t *testing.T) {
	r, src, fk, _ := newTest(t)
	src.set(oneApp, nil)
	if err := r.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	good := fk.Dump()
	for _, bad := range []error{errors.New("connection refused"), errors.New("invalid json")} {
		src.set("", bad)
		if err := r.Sync(context.Background(), true); err == nil {
			t.Fatal("Sync with a failing source returned no error")
		}
		if got := fk.Dump(); got != good {
			t.Errorf("state changed after %v:\n%s", bad, got)
		}
		if st := r.Status(); !st.Stale || !st.Synced || len(st.State.VIPs) != 1 {
			t.Errorf("status after %v: %+v", bad, st)
		}
	}
	// An empty but valid answer is a real change: the VIP goes.
	src.set(`{"apps": []}`, nil)
	if err := r.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Stale || len(st.State.VIPs) != 0 {
		t.Errorf("status %+v", st)
	}
}

func TestAllocationsPersistAcrossRestarts(t *testing.T) {
	r, src, _, dir := newTest(t)
	src.set(oneApp, nil)
	if err := r.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	addr := r.Status().State.VIPs[0].Addr
	data, err := os.ReadFile(filepath.Join(dir, "allocations.json"))
	if err != nil || !strings.Contains(string(data), addr.String()) {
		t.Fatalf("allocations.json: %s %v", data, err)
	}
	// Move it in the file: a restart keeps whatever was saved.
	moved := netip.MustParseAddr("198.18.99.99")
	if err := vip.SaveAllocations(dir, vip.Allocations{V4: map[string]netip.Addr{"web.marathon.l4lb.thisdcos.directory": moved}}); err != nil {
		t.Fatal(err)
	}
	r2 := New(Config{Sources: []source.Source{src}, NAT: nat.NewFake(), StateDir: dir,
		Model: vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/16")}})
	if err := r2.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if got := r2.Status().State.VIPs[0].Addr; got != moved {
		t.Errorf("after restart %s, want the saved %s", got, moved)
	}
}

func TestApplyFailureIsReported(t *testing.T) {
	r, src, fk, _ := newTest(t)
	src.set(oneApp, nil)
	fk.Err = errors.New("netlink: no buffer space")
	if err := r.Sync(context.Background(), false); err == nil || !strings.Contains(err.Error(), "no buffer space") {
		t.Fatalf("Sync = %v", err)
	}
	if st := r.Status(); st.Synced {
		t.Errorf("status says synced after a failed apply")
	}
	if err := r.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if !r.Status().Synced {
		t.Error("not synced after a successful retry")
	}
}
