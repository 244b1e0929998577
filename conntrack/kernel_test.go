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
	// Not DNATed: straight to a backend, and pings, whose tuples have no
	// ports. Listed by neither, and ti-mo's decoding of them must not fail.
	sy.send(t, vip.TCP, netip.AddrPortFrom(sy.backends[0], 8080), 5)
	sy.sendFrom(t, 1, client(9000, false), netip.AddrPortFrom(sy.backends[0], 0))
	sy.sendFrom(t, 58, client(9000, true), netip.AddrPortFrom(sy.backends[3], 0))
	k := kernelFor(t, sy.ns)

	all, err := k.Flows(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := toolFlows(t, sy.ns)
	if len(want) != 120 || sy.count(t) != 127 {
		t.Fatalf("tool sees %d DNATed flows of %d, want 120 of 127", len(want), sy.count(t))
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

	// FlowsOf narrows to backends (protocol, address and port): the
	// kernel filters by reply port too, and a backend of another protocol
	// or port on the same host is left out.
	var backends []Suspect
	seen := map[Suspect]bool{}
	for _, f := range all {
		s := Suspect{Proto: f.Proto, Backend: f.ReplySrc}
		if !seen[s] {
			seen[s] = true
			backends = append(backends, s)
		}
	}
	if len(backends) < 4 {
		t.Fatalf("only %d backends in the flows", len(backends))
	}
	for _, set := range [][]Suspect{
		backends[:1],
		backends[1:3],
		backends, // more than filtered dumps: family dumps
		{{Proto: vip.TCP, Backend: netip.AddrPortFrom(sy.backends[0], 1)}}, // a port without flows
	} {
		got, err := k.FlowsOf(ctx(t), set)
		if err != nil {
			t.Fatal(err)
		}
		var want []Flow
		for _, f := range all {
			if slices.Contains(set, Suspect{Proto: f.Proto, Backend: f.ReplySrc}) {
				want = append(want, f)
			}
		}
		sameFlows(t, fmt.Sprint("FlowsOf ", set), got, want)
	}
	if k.filtered.noTuple {
		t.Errorf("the kernel refused a CTA_FILTER on the reply address or port (Linux 5.8 or later knows it): FlowsOf dumps whole families")
	}
}

// TestKernelDeletes deletes one backend's flows and checks with the tool
// that exactly those are gone; deleting them again is no error.
func TestKernelDeletes(t *testing.T) {
	sy := newSynth(t, 3, 2)
	sy.send(t, vip.TCP, sy.vip4[vip.TCP], 100)
	sy.send(t, vip.UDP, sy.vip4[vip.UDP], 50)
	sy.send(t, vip.TCP, sy.vip6[vip.TCP], 40)
	sy.send(t, vip.UDP, sy.vip6[vip.UDP], 20)
	k := kernelFor(t, sy.ns)
	before := toolFlows(t, sy.ns)
	gone := []netip.Addr{sy.backends[1], sy.backends[4]}
	for _, b := range gone {
		victims, err := k.FlowsFrom(ctx(t), []netip.Addr{b})
		if err != nil || len(victims) == 0 {
			t.Fatalf("flows of %s: %d, %v", b, len(victims), err)
		}
		n, err := k.Delete(ctx(t), victims)
		if err != nil || n != len(victims) {
			t.Fatalf("delete %d flows of %s: %d, %v", len(victims), b, n, err)
		}
		if left := toolFlows(t, sy.ns, "--reply-src", b.String()); len(left) != 0 {
			t.Errorf("%d flows of %s left:%s", len(left), b, flowsString(left))
		}
		// Again: every entry is already gone, which is not a failure.
		if n, err := k.Delete(ctx(t), victims); n != 0 || err != nil {
			t.Errorf("deleting again: %d, %v", n, err)
		}
	}
	var want []Flow
	for _, f := range before {
		if !slices.Contains(gone, f.ReplySrc.Addr()) {
			want = append(want, f)
		}
	}
	sameFlows(t, "left after deletes", toolFlows(t, sy.ns), want)
}

// TestKernelDeleteExact checks that Delete touches only the entries it was
// given, as they were listed: an entry that now answers from another
// backend is left alone, a request the kernel refuses is reported after the
// others were done, and a flow without complete tuples never reaches the
// kernel (a delete request without a tuple would flush the table).
func TestKernelDeleteExact(t *testing.T) {
	sy := newSynth(t, 2, 1)
	sy.send(t, vip.TCP, sy.vip4[vip.TCP], 20)
	k := kernelFor(t, sy.ns)
	flows, err := k.Flows(ctx(t))
	if err != nil || len(flows) != 20 {
		t.Fatalf("flows: %d, %v", len(flows), err)
	}
	elsewhere := flows[0]
	other := sy.backends[0]
	if elsewhere.ReplySrc.Addr() == other {
		other = sy.backends[1]
	}
	elsewhere.ReplySrc = netip.AddrPortFrom(other, elsewhere.ReplySrc.Port())
	// An ICMPv6 tuple in an IPv4 request: the kernel refuses it.
	refused := flows[1]
	refused.Proto = 58
	incomplete := flows[2]
	incomplete.ReplySrc = netip.AddrPort{}
	n, err := k.Delete(ctx(t), []Flow{elsewhere, refused, incomplete, flows[3], flows[4]})
	de, ok := errors.AsType[*DeleteError](err)
	if n != 2 || !ok || de.Failed != 2 {
		t.Fatalf("delete: %d, %v; want 2 deleted and 2 failures", n, err)
	}
	if !errors.Is(err, errRefused) {
		t.Errorf("first failure %v, want the kernel's refusal", de.Err)
	}
	left := toolFlows(t, sy.ns)
	if len(left) != 18 {
		t.Errorf("%d flows left, want 18", len(left))
	}
	for i, f := range flows[:5] {
		if kept := slices.Contains(left, f); kept != (i < 3) {
			t.Errorf("flow %d (%s): in the table %v", i, f, kept)
		}
	}
}

// TestKernelDeleteSkipsNewFlow is the race that ti-mo's delete, which does
// not send the entry's id, would open: between the listing and the delete,
// the listed entries end and their clients come back on the same ports,
// DNATed by the new ruleset to the live backend. Delete, naming entries by
// their reply tuple, leaves these new flows alone; a delete by original
// tuple would reset them.
func TestKernelDeleteSkipsNewFlow(t *testing.T) {
	sy := newSynth(t, 2, 1)
	sy.send(t, vip.TCP, sy.vip4[vip.TCP], 30)
	sy.send(t, vip.UDP, sy.vip4[vip.UDP], 30)
	dead, live := sy.backends[0], sy.backends[1]
	k := kernelFor(t, sy.ns)
	listed, err := k.FlowsFrom(ctx(t), []netip.Addr{dead})
	if err != nil || len(listed) == 0 {
		t.Fatalf("flows of %s: %d, %v", dead, len(listed), err)
	}
	sy.dp.apply(t, stateOf(t, sy.apps(dead), sy.state))
	if _, err := sy.ns.Run("conntrack", "-D", "--reply-src", dead.String()); err != nil {
		t.Fatal(err)
	}
	for _, f := range listed {
		sy.sendFrom(t, f.Proto, f.OrigSrc, f.OrigDst)
	}
	newcomers := toolFlows(t, sy.ns, "--reply-src", live.String())
	for _, f := range listed {
		if !slices.ContainsFunc(newcomers, func(n Flow) bool { return n.Proto == f.Proto && n.OrigSrc == f.OrigSrc }) {
			t.Fatalf("no new flow from %s via %s", f.OrigSrc, live)
		}
	}

	n, err := k.Delete(ctx(t), listed)
	if n != 0 || err != nil {
		t.Errorf("delete the listed flows: %d, %v; want nothing deleted", n, err)
	}
	sameFlows(t, "after the delete", toolFlows(t, sy.ns, "--reply-src", live.String()), newcomers)
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
