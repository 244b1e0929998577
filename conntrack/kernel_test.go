package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/l4lb/l4lb/vip"
)

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestKernelLists compares what Kernel lists with what the conntrack tool
// shows, flow by flow (ids included), for both families and protocols.
func TestKernelLists(t *testing.T) {
	sy := newSynth(t, 3, 2)
	sy.send(t, vip.TCP, sy.vip4[vip.TCP], 60)
	sy.send(t, vip.UDP, sy.vip4[vip.UDP], 30)
	sy.send(t, vip.TCP, sy.vip6[vip.TCP], 20)
	sy.send(t, vip.UDP, sy.vip6[vip.UDP], 10)
	// Not DNATed: straight to a backend. Listed by neither.
	sy.send(t, vip.TCP, netip.AddrPortFrom(sy.backends[0], 8080), 5)
	k := kernelFor(t, sy.ns)

	all, err := k.Flows(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := toolFlows(t, sy.ns)
	if len(want) != 120 || sy.count(t) != 125 {
		t.Fatalf("tool sees %d DNATed flows of %d, want 120 of 125", len(want), sy.count(t))
	}
	sameFlows(t, "Flows", all, want)

	for _, addrs := range [][]netip.Addr{
		{sy.backends[0]},
		{sy.backends[3]},
		{sy.backends[1], sy.backends[4], sy.backends[1]},
		sy.backends, // more IPv4 addresses than filtered dumps: a family dump
		{netip.MustParseAddr("198.19.0.99")},
	} {
		got, err := k.FlowsFrom(ctx(t), addrs)
		if err != nil {
			t.Fatal(err)
		}
		var want []Flow
		seen := map[netip.Addr]bool{}
		for _, a := range addrs {
			if !seen[a] {
				seen[a] = true
				want = append(want, toolFlows(t, sy.ns, "--reply-src", a.String())...)
			}
		}
		sameFlows(t, fmt.Sprint("FlowsFrom ", addrs), got, want)
	}
}

// TestKernelDeletes deletes one backend's flows and checks with the tool
// that exactly those are gone; deleting them again is no error.
func TestKernelDeletes(t *testing.T) {
	for _, batch := range []int{1, 7, 256} {
		sy := newSynth(t, 3, 2)
		sy.send(t, vip.TCP, sy.vip4[vip.TCP], 100)
		sy.send(t, vip.UDP, sy.vip4[vip.UDP], 50)
		sy.send(t, vip.TCP, sy.vip6[vip.TCP], 40)
		k := kernelFor(t, sy.ns, WithDeleteBatch(batch))
		before := toolFlows(t, sy.ns)
		for _, b := range []netip.Addr{sy.backends[1], sy.backends[4]} {
			victims, err := k.FlowsFrom(ctx(t), []netip.Addr{b})
			if err != nil || len(victims) == 0 {
				t.Fatalf("batch %d: flows of %s: %d, %v", batch, b, len(victims), err)
			}
			n, err := k.Delete(ctx(t), victims)
			if err != nil || n != len(victims) {
				t.Fatalf("batch %d: delete %d flows of %s: %d, %v", batch, len(victims), b, n, err)
			}
			if left := toolFlows(t, sy.ns, "--reply-src", b.String()); len(left) != 0 {
				t.Errorf("batch %d: %d flows of %s left:%s", batch, len(left), b, flowsString(left))
			}
			// Again: every entry is already gone, which is not a failure.
			if n, err := k.Delete(ctx(t), victims); n != 0 || err != nil {
				t.Errorf("batch %d: deleting again: %d, %v", batch, n, err)
			}
		}
		var want []Flow
		for _, f := range before {
			if a := f.ReplySrc.Addr(); a != sy.backends[1] && a != sy.backends[4] {
				want = append(want, f)
			}
		}
		sameFlows(t, "left after deletes", toolFlows(t, sy.ns), want)
	}
}

// TestKernelDeleteExact checks that Delete touches only the entry it was
// given: an entry whose id changed (a new flow with the same tuple) is left
// alone, and a request the kernel refuses is reported after the others
// were done.
func TestKernelDeleteExact(t *testing.T) {
	sy := newSynth(t, 2, 1)
	sy.send(t, vip.TCP, sy.vip4[vip.TCP], 20)
	k := kernelFor(t, sy.ns)
	flows, err := k.Flows(ctx(t))
	if err != nil || len(flows) != 20 {
		t.Fatalf("flows: %d, %v", len(flows), err)
	}
	reused := flows[0]
	reused.ID++
	// ICMP needs type, code and id in a tuple: the kernel refuses this one.
	refused := flows[1]
	refused.Proto = 1
	n, err := k.Delete(ctx(t), []Flow{reused, refused, flows[2], flows[3]})
	de, ok := errors.AsType[*DeleteError](err)
	if n != 2 || !ok || de.Failed != 1 {
		t.Fatalf("delete: %d, %v; want 2 deleted and 1 failure", n, err)
	}
	left := toolFlows(t, sy.ns)
	for i, f := range flows[:4] {
		if kept := slices.Contains(left, f); kept != (i < 2) {
			t.Errorf("flow %d (%s): in the table %v", i, f, kept)
		}
	}
}

// TestKernelContext checks that a cancelled or expired context stops a call
// and that the Kernel works again afterwards.
func TestKernelContext(t *testing.T) {
	sy := newSynth(t, 2, 1)
	sy.send(t, vip.TCP, sy.vip4[vip.TCP], 2000)
	k := kernelFor(t, sy.ns)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.Flows(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	expired, cancel2 := context.WithTimeout(context.Background(), time.Microsecond)
	defer cancel2()
	time.Sleep(time.Millisecond)
	if _, err := k.Delete(expired, []Flow{{Proto: vip.TCP, OrigSrc: client(0, false), OrigDst: sy.vip4[vip.TCP]}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("expired: %v", err)
	}
	flows, err := k.Flows(ctx(t))
	if err != nil || len(flows) != 2000 {
		t.Errorf("after cancellations: %d flows, %v", len(flows), err)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Flows(ctx(t)); err == nil {
		t.Error("Flows after Close")
	}
}

// TestCleanerRestartLive is a daemon restart: the table holds flows from
// before, some to backends that went away meanwhile. The first pass is a
// full one and deletes exactly those; then every IPv6 backend goes (N to 0).
func TestCleanerRestartLive(t *testing.T) {
	sy := newSynth(t, 3, 2)
	sy.send(t, vip.TCP, sy.vip4[vip.TCP], 60)
	sy.send(t, vip.UDP, sy.vip4[vip.UDP], 30)
	sy.send(t, vip.TCP, sy.vip6[vip.TCP], 20)
	sy.send(t, vip.UDP, sy.vip6[vip.UDP], 20)
	before := toolFlows(t, sy.ns)
	gone4, six1, six2 := sy.backends[1], sy.backends[3], sy.backends[4]
	split := func(flows []Flow, gone ...netip.Addr) (stale, kept []Flow) {
		for _, f := range flows {
			if slices.Contains(gone, f.ReplySrc.Addr()) {
				stale = append(stale, f)
			} else {
				kept = append(kept, f)
			}
		}
		return stale, kept
	}

	c := NewCleaner(kernelFor(t, sy.ns), true, nil)
	s := stateOf(t, sy.apps(gone4, six1), sy.state)
	stale, kept := split(before, gone4, six1)
	r, err := c.Applied(ctx(t), s)
	if err != nil || !r.Full || r.Deleted != len(stale) || len(stale) == 0 {
		t.Fatalf("first pass: %+v, %v; want a full pass deleting %d", r, err, len(stale))
	}
	sameFlows(t, "after the first pass", toolFlows(t, sy.ns), kept)

	s = stateOf(t, sy.apps(gone4, six1, six2), s)
	stale, kept = split(kept, six2)
	r, err = c.Applied(ctx(t), s)
	if err != nil || r.Full || r.Deleted != len(stale) || len(stale) == 0 {
		t.Fatalf("IPv6 N to 0: %+v, %v; want a suspects pass deleting %d", r, err, len(stale))
	}
	sameFlows(t, "after IPv6 N to 0", toolFlows(t, sy.ns), kept)
}
