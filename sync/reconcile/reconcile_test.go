package reconcile

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/conntrack"
	"github.com/l4lb/l4lb/dns"
	"github.com/l4lb/l4lb/localnet"
	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/nat/forward"
	"github.com/l4lb/l4lb/sync/runner"
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

// The agent's networks are read again at every sync: an IP VIP inside a
// network that appears later is refused from the next sync on (its rules
// go), l4lb's routes never refuse anything, and a failed read keeps the
// last good networks.
func TestLocalNetworksReadEverySync(t *testing.T) {
	src := &fakeSource{}
	fk := nat.NewFake()
	local := &localnet.Fake{Nets: &vip.LocalNets{Own: []netip.Prefix{netip.MustParsePrefix("198.19.0.1/32")}}}
	reg := prometheus.NewRegistry()
	r := New(Config{
		Sources: []source.Source{src},
		NAT:     fk,
		Local:   local,
		Metrics: NewMetrics(reg),
		Model:   vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/17"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")},
	})
	src.attach(r, 0)
	src.set(`{"id": "/ip", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.18.255.1:80", "VIP_1": "198.19.0.1:80"}}]}`, nil)
	ctx := context.Background()
	if err := r.Sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	st := r.Status()
	if len(st.State.VIPs) != 1 || st.State.VIPs[0].Addr.String() != "198.18.255.1" {
		t.Fatalf("VIPs = %+v", st.State.VIPs)
	}
	if len(st.Problems) != 1 || st.Problems[0].Label != "VIP_1" || !strings.Contains(st.Problems[0].Reason, "an address of this agent") {
		t.Fatalf("problems = %+v", st.Problems)
	}
	if strings.Contains(fk.Dump(), "198.19.0.1") {
		t.Errorf("the refused address is programmed:\n%s", fk.Dump())
	}
	if got := refusedSeries(t, reg); !slices.Equal(got, []string{"/ip VIP_1 198.19.0.1"}) {
		t.Errorf("l4lb_ip_vips_refused: %v", got)
	}

	// A new interface puts the IP VIP inside a connected network.
	local.Nets = &vip.LocalNets{Own: local.Nets.Own, Connected: []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24")}}
	if err := r.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); len(st.State.VIPs) != 0 || len(st.Problems) != 2 {
		t.Fatalf("after the new network: VIPs %+v problems %+v", st.State.VIPs, st.Problems)
	}
	if strings.Contains(fk.Dump(), "198.18.255.1") {
		t.Errorf("the IP VIP inside a connected network is still programmed:\n%s", fk.Dump())
	}
	if got := refusedSeries(t, reg); !slices.Equal(got, []string{"/ip VIP_0 198.18.255.1", "/ip VIP_1 198.19.0.1"}) {
		t.Errorf("l4lb_ip_vips_refused: %v", got)
	}

	// A failed read keeps the last networks.
	local.Err = errors.New("netlink down")
	if err := r.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); len(st.State.VIPs) != 0 || len(st.Problems) != 2 {
		t.Fatalf("after a failed read: VIPs %+v problems %+v", st.State.VIPs, st.Problems)
	}
	if local.Reads != 3 {
		t.Errorf("networks read %d times in 3 syncs", local.Reads)
	}
}

// refusedSeries lists the l4lb_ip_vips_refused series as "app label address".
func refusedSeries(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range families {
		if f.GetName() != "l4lb_ip_vips_refused" {
			continue
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			out = append(out, l["app"]+" "+l["label"]+" "+l["address"])
		}
	}
	slices.Sort(out)
	return out
}

// While the sources fail, the last good state is kept, but the agent's
// networks are still read: an IP VIP inside a network that appeared since
// goes at once.
func TestLocalNetworksWhileSourcesFail(t *testing.T) {
	src := &fakeSource{}
	fk := nat.NewFake()
	local := &localnet.Fake{Nets: &vip.LocalNets{}}
	r := New(Config{
		Sources: []source.Source{src},
		NAT:     fk,
		Local:   local,
		Model:   vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/17"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")},
	})
	src.attach(r, 0)
	src.set(`{"id": "/ip", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.18.255.1:80", "VIP_1": "web:80"}}]}`, nil)
	ctx := context.Background()
	if err := r.Sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Status().State.VIPs); n != 2 {
		t.Fatalf("%d VIPs, want 2", n)
	}
	src.set("", errors.New("marathon down"))
	local.Nets = &vip.LocalNets{Connected: []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24")}}
	if err := r.Sync(ctx, false); err == nil || !strings.Contains(err.Error(), "marathon down") {
		t.Fatalf("Sync = %v, want the source error", err)
	}
	st := r.Status()
	if len(st.State.VIPs) != 1 || st.State.VIPs[0].Name == "" {
		t.Errorf("VIPs = %+v, want only the named one", st.State.VIPs)
	}
	if len(st.Problems) != 1 || st.Problems[0].Refused != "198.18.255.1" || st.Problems[0].App != "/ip" {
		t.Errorf("problems = %+v", st.Problems)
	}
	if strings.Contains(fk.Dump(), "198.18.255.1") {
		t.Errorf("the IP VIP inside the new network is still programmed:\n%s", fk.Dump())
	}
	// The sources come back: the refusal now names the label.
	src.set(`{"id": "/ip", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.18.255.1:80", "VIP_1": "web:80"}}]}`, nil)
	if err := r.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if ps := r.Status().Problems; len(ps) != 1 || ps[0].Label != "VIP_0" {
		t.Errorf("problems = %+v", ps)
	}
}

// A delta that brings a task host at an IP VIP's address (an app without
// VIPs) takes the IP VIP down at the next sync and names the task; the
// delta that removes the task brings it back. Nothing else is recomputed.
func TestTaskHostDeltaGuardsIPVIP(t *testing.T) {
	fk := nat.NewFake()
	reg := prometheus.NewRegistry()
	model := vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/17"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")}
	r := New(Config{Sources: []source.Source{&fakeSource{}}, NAT: fk, Metrics: NewMetrics(reg), Model: model})
	sink := r.Sink(0)
	groups := func(data string) []source.Group {
		apps, problems, err := vip.ParseApps([]byte(data))
		if err != nil {
			t.Fatal(err)
		}
		return source.AppGroups(apps, problems, model)
	}
	ctx := context.Background()
	sink.Replace(groups(`[{"id": "/ip", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.19.0.5:80", "VIP_1": "web:80"}}]}]`))
	if err := r.Sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if n := len(r.Status().State.VIPs); n != 2 || !strings.Contains(fk.Dump(), "198.19.0.5") {
		t.Fatalf("%d VIPs, want 2 with the IP VIP programmed:\n%s", n, fk.Dump())
	}
	sink.Update(groups(`[{"id": "/db", "tasks": [{"id": "db.1", "host": "198.19.0.5", "state": "TASK_STAGING"}]}]`), nil)
	if err := r.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	st := r.Status()
	if len(st.State.VIPs) != 1 || st.State.VIPs[0].Name == "" || strings.Contains(fk.Dump(), "198.19.0.5") {
		t.Fatalf("VIPs %+v, want only the named one; table:\n%s", st.State.VIPs, fk.Dump())
	}
	if len(st.Problems) != 1 || st.Problems[0].Refused != "198.19.0.5" ||
		st.Problems[0].Reason != "IP VIP address 198.19.0.5 refused: the address of task host 198.19.0.5 of task db.1 of app /db" {
		t.Fatalf("problems %+v", st.Problems)
	}
	if got := refusedSeries(t, reg); !slices.Equal(got, []string{"/ip VIP_0 198.19.0.5"}) {
		t.Errorf("l4lb_ip_vips_refused: %v", got)
	}
	sink.Update(nil, []source.Key{"/db"})
	if err := r.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); len(st.State.VIPs) != 2 || len(st.Problems) != 0 || !strings.Contains(fk.Dump(), "198.19.0.5") {
		t.Fatalf("after the task went: VIPs %+v problems %+v", st.State.VIPs, st.Problems)
	}
	if got := refusedSeries(t, reg); len(got) != 0 {
		t.Errorf("l4lb_ip_vips_refused after the task went: %v", got)
	}
}

// TestAfterListFollowsFullLists checks that the hook runs after a sync that
// took a source's full list, and not after one that took only deltas.
func TestAfterListFollowsFullLists(t *testing.T) {
	r, src, _, _ := newTest(t)
	calls := 0
	r.cfg.AfterList = func() { calls++ }
	ctx := context.Background()
	src.set(oneApp, nil)
	if err := r.Sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("after the first list: %d calls, want 1", calls)
	}
	src.sink.Update([]source.Group{{Key: "/other"}}, nil)
	if err := r.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Errorf("after a delta: %d calls, want still 1", calls)
	}
	src.set(oneApp, nil)
	if err := r.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Errorf("after a second list: %d calls, want 2", calls)
	}
}

// slowReadBack is the fake kernel with a read-back that takes 10 s.
type slowReadBack struct {
	*nat.Fake
	mu    sync.Mutex
	fulls []time.Time
}

func (s *slowReadBack) Apply(ctx context.Context, r *nat.Ruleset, full bool) (nat.Result, error) {
	if full {
		time.Sleep(10 * time.Second)
		s.mu.Lock()
		s.fulls = append(s.fulls, time.Now())
		s.mu.Unlock()
	}
	return s.Fake.Apply(ctx, r, full)
}

// A resync reads the kernel back only when 20 times the last read-back's
// duration has passed: with a read-back of 10 s and --resync 30s, every
// 200 s or so, and never twice within 200 s.
func TestResyncReadBackSpacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &fakeSource{}
		k := &slowReadBack{Fake: nat.NewFake()}
		r := New(Config{
			Sources: []source.Source{src},
			NAT:     k,
			Model:   vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/16")},
		})
		src.attach(r, 0)
		src.set(oneApp, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- r.Run(ctx, runner.Options{Resync: 30 * time.Second}) }()
		time.Sleep(1000 * time.Second)
		cancel()
		<-done
		k.mu.Lock()
		defer k.mu.Unlock()
		if len(k.fulls) < 4 || len(k.fulls) > 6 {
			t.Errorf("%d read-backs in 1000 s, want one at start and then one every 200 to 250 s: %v", len(k.fulls), k.fulls)
		}
		for i := 1; i < len(k.fulls); i++ {
			if gap := k.fulls[i].Sub(k.fulls[i-1]); gap < 200*time.Second {
				t.Errorf("read-backs %d and %d only %s apart", i-1, i, gap)
			}
		}
	})
}
