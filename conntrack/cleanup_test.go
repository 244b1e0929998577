package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/l4lb/l4lb/vip"
	"github.com/prometheus/client_golang/prometheus"
)

func TestCleanupWithFake(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	w := allHealthy()
	w.web[0] = unhealthy
	s := desired(t, w, base)
	fake := NewFake(tb.all()...)
	ctx := context.Background()

	r, err := Cleanup(ctx, fake, s, Options{FlushUnhealthy: true})
	if err != nil {
		t.Fatal(err)
	}
	want := tb.to("198.19.0.11")
	if !r.Full || r.Flows != len(tb.flows)+2 || r.Stale != len(want) || r.Deleted != len(want) || r.Failed != 0 {
		// The two foreign Docker flows are DNATed, so the fake lists them too.
		t.Errorf("result %+v, want full, %d listed, %d stale and deleted", r, len(tb.flows)+2, len(want))
	}
	sameFlows(t, "deleted", fake.Deleted(), want)
	for _, f := range want {
		if slices.Contains(fake.Table(), f) {
			t.Errorf("%s still in the table", f)
		}
	}

	// Level-triggered: a second pass finds nothing more.
	r, err = Cleanup(ctx, fake, s, Options{FlushUnhealthy: true})
	if err != nil || r.Stale != 0 || r.Deleted != 0 {
		t.Errorf("second pass: %+v, %v", r, err)
	}
}

func TestCleanupSuspectsOnly(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	w := allHealthy()
	w.web[0], w.web[1] = unhealthy, ""
	s := desired(t, w, base)
	fake := NewFake(tb.all()...)
	r, err := Cleanup(context.Background(), fake, s, Options{FlushUnhealthy: true,
		Suspects: []netip.Addr{netip.MustParseAddr("198.19.0.11")}})
	if err != nil {
		t.Fatal(err)
	}
	if full, narrowed := fake.Lists(); full != 0 || narrowed != 1 || r.Full {
		t.Errorf("lists: full %d narrowed %d, result %+v", full, narrowed, r)
	}
	sameFlows(t, "deleted", fake.Deleted(), tb.to("198.19.0.11"))
}

func TestCleanupErrors(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	w := allHealthy()
	w.web = [3]string{}
	s := desired(t, w, base)
	ctx := context.Background()
	boom := errors.New("boom")

	fake := NewFake(tb.all()...)
	fake.FailNext(boom, nil)
	if _, err := Cleanup(ctx, fake, s, Options{FlushUnhealthy: true}); !errors.Is(err, boom) {
		t.Errorf("list failure: %v", err)
	}
	if len(fake.Deleted()) != 0 {
		t.Error("deleted after a failed listing")
	}

	fake.FailNext(nil, boom)
	r, err := Cleanup(ctx, fake, s, Options{FlushUnhealthy: true})
	stale := len(tb.to("198.19.0.11", "198.19.0.12", "198.19.0.13"))
	if !errors.Is(err, boom) || r.Failed != stale || r.Deleted != 0 {
		t.Errorf("delete failure: %+v, %v", r, err)
	}

	// Entries that disappeared between listing and deleting are no failure.
	gone := tb.to("198.19.0.11")
	fake = NewFake()
	if n, err := fake.Delete(ctx, gone); n != 0 || err != nil {
		t.Errorf("deleting absent entries: %d, %v", n, err)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Cleanup(cancelled, NewFake(tb.all()...), s, Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestFakeDeleteMatchesReplyTuple(t *testing.T) {
	listed := dnat(vip.TCP, 1, ap("198.18.0.1", 80), ap("198.19.0.11", 31000))
	// Since the listing, the entry ended and a new flow from the same
	// client port went to another backend.
	newcomer := dnat(vip.TCP, 1, ap("198.18.0.1", 80), ap("198.19.0.12", 31000))
	fake := NewFake(newcomer)
	if n, _ := fake.Delete(context.Background(), []Flow{listed}); n != 0 || len(fake.Table()) != 1 {
		t.Error("deleted the new flow that took the listed one's original tuple")
	}
	if n, _ := fake.Delete(context.Background(), []Flow{newcomer}); n != 1 || len(fake.Table()) != 0 {
		t.Error("did not delete the entry")
	}
}

func TestCleaner(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	ctx := context.Background()
	fake := NewFake(tb.all()...)
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCleaner(fake, true, m)
	state := func(f func(w *world)) vip.State {
		w := allHealthy()
		f(&w)
		return desired(t, w, base)
	}
	lists := func(wantFull, wantNarrowed int) {
		t.Helper()
		if full, narrowed := fake.Lists(); full != wantFull || narrowed != wantNarrowed {
			t.Errorf("lists: full %d narrowed %d, want %d %d", full, narrowed, wantFull, wantNarrowed)
		}
	}

	// Start: a full pass, even with nothing stale (flows from before the
	// restart are found that way).
	ghost := dnat(vip.TCP, 1, netip.AddrPortFrom(tb.web80.Addr, 80), ap("198.19.0.99", 31000))
	fake.Add(ghost)
	if r, err := c.Applied(ctx, base); err != nil || !r.Full || r.Deleted != 1 {
		t.Errorf("first pass: %+v, %v", r, err)
	}
	lists(1, 0)

	// Nothing changed: no listing at all.
	if r, err := c.Applied(ctx, base); err != nil || r != (Result{}) {
		t.Errorf("no change: %+v, %v", r, err)
	}
	lists(1, 0)

	// web.1 unhealthy, web.2 draining: a pass narrowed to web.1.
	s := state(func(w *world) { w.web[0] = unhealthy; w.web[1] = killing })
	r, err := c.Applied(ctx, s)
	if err != nil || r.Full || r.Deleted != len(tb.to("198.19.0.11")) {
		t.Errorf("unhealthy: %+v, %v", r, err)
	}
	lists(1, 1)

	// A failed pass keeps what it had to do, and the next pass is full.
	s2 := state(func(w *world) { w.web[0] = unhealthy; w.web[1] = ""; w.ipvip = false })
	fake.FailNext(errors.New("boom"), nil)
	if _, err := c.Applied(ctx, s2); err == nil {
		t.Error("failure not reported")
	}
	lists(1, 2)
	r, err = c.Applied(ctx, s2)
	want := len(tb.to("198.19.0.12", "198.19.0.14", "fd00:198:19::e"))
	if err != nil || !r.Full || r.Deleted != want {
		t.Errorf("after failure: %+v, %v; want a full pass deleting %d", r, err, want)
	}
	lists(2, 2)

	// Reconcile always lists everything.
	if r, err := c.Reconcile(ctx, s2); err != nil || !r.Full || r.Deleted != 0 {
		t.Errorf("reconcile: %+v, %v", r, err)
	}
	lists(3, 2)

	// What the metrics saw.
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range mt.GetLabel() {
				key += " " + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case mt.Counter != nil:
				got[key] = mt.Counter.GetValue()
			case mt.Histogram != nil:
				got[key] = float64(mt.Histogram.GetSampleCount())
			}
		}
	}
	wantMetrics := map[string]float64{
		"l4lb_conntrack_flows_deleted_total":                                 float64(1 + len(tb.to("198.19.0.11")) + want),
		"l4lb_conntrack_delete_failures_total":                               0,
		"l4lb_conntrack_cleanup_duration_seconds pass=full result=ok":        3,
		"l4lb_conntrack_cleanup_duration_seconds pass=suspects result=ok":    1,
		"l4lb_conntrack_cleanup_duration_seconds pass=suspects result=error": 1,
	}
	for k, v := range wantMetrics {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

// Changed knows which backends lost their place, protocol and port: its
// pass asks a PortLister for those backends' flows alone, and deletes
// exactly the stale ones.
func TestCleanerChangedAsksForBackends(t *testing.T) {
	base := desired(t, allHealthy(), vip.State{})
	tb := newTable(t, base)
	ctx := context.Background()
	fake := NewFake(tb.all()...)
	c := NewCleaner(fake, true, nil)
	if r, err := c.Changed(ctx, base, nil); err != nil || !r.Full {
		t.Fatalf("first pass: %+v, %v", r, err)
	}
	w := allHealthy()
	w.web[0] = unhealthy
	s := desired(t, w, base)
	var before []vip.VIP
	for _, v := range base.VIPs {
		if slices.ContainsFunc(v.Backends, func(b vip.Backend) bool { return b.Addr == netip.MustParseAddr("198.19.0.11") }) {
			before = append(before, v)
		}
	}
	r, err := c.Changed(ctx, s, before)
	if err != nil || r.Full || r.Deleted != len(tb.to("198.19.0.11")) {
		t.Errorf("web.1 unhealthy: %+v, %v; want %d deleted", r, err, len(tb.to("198.19.0.11")))
	}
	asked := fake.Asked()
	if len(asked) == 0 {
		t.Fatal("the pass did not ask for backends")
	}
	for _, b := range asked {
		if b.Backend.Addr() != netip.MustParseAddr("198.19.0.11") || b.Backend.Port() == 0 || b.Proto == 0 {
			t.Errorf("asked for %+v, want web.1's backends only", b)
		}
	}
	sameFlows(t, "deleted", fake.Deleted(), append(tb.to("198.19.0.99"), tb.to("198.19.0.11")...))
}
