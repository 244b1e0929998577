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

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/dns"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/nat/forward"
	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// fakeSource delivers what it is told to, as a full list, to the sink of
// the reconciler it is attached to.
type fakeSource struct {
	mu   sync.Mutex
	sink source.Sink
	cfg  vip.Config
}

func (f *fakeSource) String() string { return "fake:" }

func (f *fakeSource) Run(ctx context.Context, cfg vip.Config, sink source.Sink) error {
	<-ctx.Done()
	return nil
}

func (f *fakeSource) Relist() {}

func (f *fakeSource) attach(r *Reconciler, i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sink, f.cfg = r.Sink(i), r.cfg.Model
}

func (f *fakeSource) set(data string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.sink.Stale(err)
		return
	}
	apps, problems, perr := vip.ParseApps([]byte(data))
	if perr != nil {
		f.sink.Stale(perr)
		return
	}
	f.sink.Replace(source.AppGroups(apps, problems, f.cfg))
	f.sink.Stale(nil)
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
	src.attach(r, 0)
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
	src.attach(r2, 0)
	src.set(oneApp, nil)
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

func TestForwardRulesFollowTheSync(t *testing.T) {
	src := &fakeSource{}
	fwd := forward.NewFake()
	fwd.SetPolicy(false, "DROP")
	r := New(Config{Sources: []source.Source{src}, NAT: nat.NewFake(), Forward: fwd,
		Model: vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/16"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")}})
	src.attach(r, 0)
	src.set(oneApp, nil)
	if err := r.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if dump := fwd.Dump(false); !strings.Contains(dump, "-A L4LB-FORWARD") || !strings.Contains(dump, "198.18.0.0/16") {
		t.Errorf("iptables after a sync with FORWARD dropping:\n%s", dump)
	}
	// A failure to sync iptables does not fail the sync: the table is right.
	fwd.Err = errors.New("iptables: resource busy")
	if err := r.Sync(context.Background(), true); err != nil {
		t.Errorf("Sync with a failing iptables: %v", err)
	}
}

func TestConntrackFollowsTheSync(t *testing.T) {
	twoTasks := func(t2state string) string {
		return `{"id": "/web", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "web:80"}}], "tasks": [
		  {"id": "t1", "host": "198.19.0.11", "ports": [31000], "state": "TASK_RUNNING"},
		  {"id": "t2", "host": "198.19.0.12", "ports": [31000], "state": "` + t2state + `"}]}`
	}
	src := &fakeSource{}
	ct := conntrack.NewFake()
	r := New(Config{Sources: []source.Source{src}, NAT: nat.NewFake(), Conntrack: conntrack.NewCleaner(ct, true, nil),
		Model: vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/16"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")}})
	src.attach(r, 0)
	src.set(twoTasks("TASK_RUNNING"), nil)
	if err := r.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	vipAddr := r.Status().State.VIPs[0].Addr
	flow := func(client string, backend string) conntrack.Flow {
		c := netip.MustParseAddrPort(client)
		return conntrack.Flow{Proto: vip.TCP, OrigSrc: c, OrigDst: netip.AddrPortFrom(vipAddr, 80),
			ReplySrc: netip.MustParseAddrPort(backend), ReplyDst: c}
	}
	toT1, toT2 := flow("198.19.1.11:40000", "198.19.0.11:31000"), flow("198.19.1.11:40001", "198.19.0.12:31000")
	ct.Add(toT1, toT2)

	// Draining: t2 keeps its connection.
	src.set(twoTasks("TASK_KILLING"), nil)
	if err := r.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if d := ct.Deleted(); len(d) != 0 {
		t.Errorf("a draining backend lost flows: %v", d)
	}
	// Gone: its flows go, t1's stay.
	src.set(twoTasks("TASK_KILLED"), nil)
	if err := r.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if d := ct.Deleted(); len(d) != 1 || d[0] != toT2 {
		t.Errorf("deleted %v, want only the flow to t2", d)
	}
	// A failing cleanup fails the sync, and the retry does a full pass.
	ct.FailNext(errors.New("netlink: no buffer space"), nil)
	src.set(strings.Replace(twoTasks("TASK_RUNNING"), `"t1", "host": "198.19.0.11", "ports": [31000], "state": "TASK_RUNNING"`,
		`"t1", "host": "198.19.0.11", "ports": [31000], "state": "TASK_FAILED"`, 1), nil)
	if err := r.Sync(context.Background(), false); err == nil || !strings.Contains(err.Error(), "conntrack") {
		t.Fatalf("Sync with a failing conntrack: %v", err)
	}
	full, _ := ct.Lists()
	if err := r.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if f2, _ := ct.Lists(); f2 != full+1 {
		t.Errorf("the retry after a failed pass did not list everything (%d -> %d full listings)", full, f2)
	}
}

// orderNAT checks, at every Apply, what DNS answers: names whose VIPs the
// ruleset removes must already be withdrawn, names it adds not yet
// published.
type orderNAT struct {
	*nat.Fake
	dns *recordingDNS
	t   *testing.T
}

func (o *orderNAT) Apply(ctx context.Context, r *nat.Ruleset, full bool) (nat.Result, error) {
	o.t.Helper()
	want := map[netip.Addr]bool{}
	for _, v := range r.VIPs {
		want[v.Key.Addr] = true
	}
	if z := o.dns.last(); z != nil {
		for _, name := range z.Names() {
			v4, v6, _ := z.Lookup(name)
			for _, a := range append(v4, v6...) {
				if !want[a] {
					o.t.Errorf("while applying, DNS still answers %s with %s, whose rules are being removed", name, a)
				}
			}
		}
	}
	if cur := o.Fake.Current(); cur != nil {
		have := map[netip.Addr]bool{}
		for _, v := range cur.VIPs {
			have[v.Key.Addr] = true
		}
		if z := o.dns.last(); z != nil {
			for _, name := range z.Names() {
				v4, v6, _ := z.Lookup(name)
				for _, a := range append(v4, v6...) {
					if !have[a] {
						o.t.Errorf("DNS answers %s with %s before its rules are in", name, a)
					}
				}
			}
		}
	}
	return o.Fake.Apply(ctx, r, full)
}

type recordingDNS struct {
	mu    sync.Mutex
	zones []*dns.Zone
}

func (d *recordingDNS) Publish(z *dns.Zone) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.zones = append(d.zones, z)
}

func (d *recordingDNS) last() *dns.Zone {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.zones) == 0 {
		return nil
	}
	return d.zones[len(d.zones)-1]
}

func TestDNSPublishOrder(t *testing.T) {
	app := func(name string) string {
		return `{"id": "/` + name + `", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "` + name + `:80"}}]}`
	}
	src := &fakeSource{}
	rec := &recordingDNS{}
	r := New(Config{Sources: []source.Source{src}, NAT: &orderNAT{Fake: nat.NewFake(), dns: rec, t: t}, DNS: rec,
		Model: vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/16"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")}})
	src.attach(r, 0)
	for _, apps := range []string{"[" + app("a") + "]", "[" + app("a") + "," + app("b") + "]", "[" + app("b") + "]", "[]"} {
		src.set(apps, nil)
		if err := r.Sync(context.Background(), false); err != nil {
			t.Fatal(err)
		}
		z := rec.last()
		if z == nil || z.Len() != len(r.Status().State.VIPs) {
			t.Errorf("after syncing %s: DNS has %v, want every VIP's name", apps, z)
		}
	}
}
