package forward

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var testWant = Want{
	Pool4:  netip.MustParsePrefix("198.18.0.0/16"),
	Pool6:  netip.MustParsePrefix("fd00:198:18::/64"),
	IPVIPs: []netip.Addr{netip.MustParseAddr("198.18.255.10"), netip.MustParseAddr("198.19.200.1")},
}

const (
	jumpLine  = `-A FORWARD -m comment --comment "l4lb: accept connections to VIPs that l4lb DNATed" -j L4LB-FORWARD`
	pool4Line = `-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.18.0.0/16 -m comment --comment "l4lb: VIP pool" -j ACCEPT`
	ipvipLine = `-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst 198.19.200.1 -m comment --comment "l4lb: IP VIP" -j ACCEPT`
	pool6Line = `-A L4LB-FORWARD -m conntrack --ctstate DNAT --ctorigdst fd00:198:18::/64 -m comment --comment "l4lb: VIP pool" -j ACCEPT`
)

func mustSync(t *testing.T, f *Fake, w Want) Result {
	t.Helper()
	res, err := f.Sync(context.Background(), w)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return res
}

// The whole cycle on the fake: nothing while FORWARD accepts, the chain and
// jump once Docker sets DROP, nothing more on the next Sync, only the
// difference when the IP VIPs change, removal when the policy goes back,
// and other rules untouched throughout.
func TestSyncCycle(t *testing.T) {
	f := NewFake()
	accept := "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
	if res := mustSync(t, f, testWant); res.Changed() || len(res.Active) > 0 || f.Dump(false) != accept || f.Dump(true) != accept {
		t.Fatalf("policy ACCEPT: %+v\n%s", res, f.Dump(false))
	}

	// Docker arrives: its rules, then the policy.
	if err := f.AppendRule(false, "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	f.SetPolicy(false, "DROP")
	res := mustSync(t, f, testWant)
	if !slices.Equal(res.Active, []string{"iptables-nft"}) || res.Changes != 4 {
		t.Errorf("after DROP: %+v", res)
	}
	want := strings.Join([]string{"-P INPUT ACCEPT", "-P FORWARD DROP", "-P OUTPUT ACCEPT", "-N L4LB-FORWARD",
		jumpLine, "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT", pool4Line, ipvipLine}, "\n") + "\n"
	if got := f.Dump(false); got != want {
		t.Errorf("IPv4 table:\n%s\nwant\n%s", got, want)
	}
	if f.Dump(true) != accept {
		t.Errorf("IPv6 changed while its policy accepts:\n%s", f.Dump(true))
	}

	// Idempotent, and cheap: two listings, no change.
	calls := f.mem[0].calls
	if res := mustSync(t, f, testWant); res.Changed() || !slices.Equal(res.Active, []string{"iptables-nft"}) {
		t.Errorf("second Sync: %+v", res)
	}
	if n := f.mem[0].calls - calls; n != 2 {
		t.Errorf("steady Sync ran %d commands, want 2 listings", n)
	}
	// IPv6 accepts: one listing a Sync, and one look for a chain left over.
	if n := f.mem[1].calls; n != 4 {
		t.Errorf("IPv6 (nothing needed) ran %d commands over three Syncs, want 4", n)
	}

	// An IP VIP replaced: one delete, one append.
	w2 := testWant
	w2.IPVIPs = []netip.Addr{netip.MustParseAddr("198.19.200.2")}
	if res := mustSync(t, f, w2); res.Changes != 2 {
		t.Errorf("IP VIP replaced: %+v\n%s", res, f.Dump(false))
	}
	if got := f.Dump(false); strings.Contains(got, "198.19.200.1") || !strings.Contains(got, "198.19.200.2") {
		t.Errorf("after replacing the IP VIP:\n%s", got)
	}

	// IPv6 too.
	f.SetPolicy(true, "DROP")
	if res := mustSync(t, f, w2); !slices.Equal(res.Active, []string{"iptables-nft", "ip6tables-nft"}) {
		t.Errorf("both families: %+v", res)
	}
	if got := f.Dump(true); !strings.Contains(got, pool6Line) || !strings.Contains(got, "-A FORWARD -m comment") {
		t.Errorf("IPv6 table:\n%s", got)
	}

	// The policy goes back to ACCEPT: l4lb's rules go, Docker's stay.
	f.SetPolicy(false, "ACCEPT")
	if res := mustSync(t, f, w2); res.Changes != 3 || !slices.Equal(res.Active, []string{"ip6tables-nft"}) {
		t.Errorf("policy back to ACCEPT: %+v", res)
	}
	want = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-A FORWARD -i docker0 ! -o docker0 -j ACCEPT\n"
	if got := f.Dump(false); got != want {
		t.Errorf("after removal:\n%s\nwant\n%s", got, want)
	}
	calls = f.mem[0].calls
	mustSync(t, f, w2)
	if n := f.mem[0].calls - calls; n != 1 {
		t.Errorf("steady Sync with nothing installed ran %d commands, want 1", n)
	}

	// Cleanup removes the rest.
	if err := f.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.Dump(true); got != "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n" {
		t.Errorf("IPv6 after Cleanup:\n%s", got)
	}
	if f.Syncs() != 7 {
		t.Errorf("Syncs = %d", f.Syncs())
	}
}

// Whatever state an interrupted run or a hand left behind, one Sync puts
// l4lb's part right and leaves the rest alone.
func TestSyncRepairs(t *testing.T) {
	foreign := []string{"-i", "eth9", "-m", "comment", "--comment", "someone else's", "-j", "ACCEPT"}
	const foreignLine = `-A FORWARD -i eth9 -m comment --comment "someone else\'s" -j ACCEPT`
	for _, c := range []struct {
		name  string
		setup func(m *memTables)
	}{
		{"chain left without jump", func(m *memTables) {
			m.chains[chainForward] = m.chains[chainForward][1:]
			_ = m.Append(tableFilter, Chain, "-j", "ACCEPT")
		}},
		{"rule deleted from the chain", func(m *memTables) { m.chains[Chain] = m.chains[Chain][:1] }},
		{"rule added to the chain", func(m *memTables) {
			_ = m.Append(tableFilter, Chain, "-s", "198.19.0.0/16", "-j", "ACCEPT")
		}},
		{"chain flushed", func(m *memTables) { m.chains[Chain] = nil }},
		{"jump deleted", func(m *memTables) { m.chains[chainForward] = m.chains[chainForward][1:] }},
		{"jump duplicated", func(m *memTables) { _ = m.Insert(tableFilter, chainForward, 3, jumpSpec()...) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := NewFake()
			f.SetPolicy(false, "DROP")
			if err := f.AppendRule(false, "FORWARD", foreign...); err != nil {
				t.Fatal(err)
			}
			mustSync(t, f, testWant)
			good := f.Dump(false)
			c.setup(f.mem[0])
			if f.Dump(false) == good {
				t.Fatal("setup changed nothing")
			}
			mustSync(t, f, testWant)
			got := f.Dump(false)
			if c.name == "jump duplicated" {
				// iptables deletes the first of identical rules: the jump
				// left is the lower one, which is where it stays.
				got = strings.Replace(got, foreignLine+"\n"+jumpLine, jumpLine+"\n"+foreignLine, 1)
			}
			if got != good {
				t.Errorf("after repair:\n%s\nwant\n%s", got, good)
			}
			if !strings.Contains(f.Dump(false), foreignLine) {
				t.Errorf("foreign rule lost:\n%s", f.Dump(false))
			}
			if res := mustSync(t, f, testWant); res.Changed() {
				t.Errorf("Sync after repair changed %d", res.Changes)
			}
		})
	}
}

// A jump that someone moved below other rules stays where it is: whoever
// put rules above it did so on purpose.
func TestSyncLeavesMovedJump(t *testing.T) {
	f := NewFake()
	f.SetPolicy(false, "DROP")
	_ = f.AppendRule(false, "FORWARD", "-i", "eth9", "-j", "DROP")
	mustSync(t, f, testWant)
	m := f.mem[0]
	m.chains[chainForward] = append(m.chains[chainForward][1:], m.chains[chainForward][0])
	res := mustSync(t, f, testWant)
	if res.Changed() || !strings.Contains(f.Dump(false), "-A FORWARD -i eth9 -j DROP\n"+jumpLine+"\n") {
		t.Errorf("%+v\n%s", res, f.Dump(false))
	}
}

func TestSyncNothingWanted(t *testing.T) {
	f := NewFake()
	f.SetPolicy(false, "DROP")
	mustSync(t, f, testWant)
	// No pools and no IP VIPs: nothing to let through, nothing installed.
	if res := mustSync(t, f, Want{}); res.Changes != 3 || len(res.Active) > 0 {
		t.Errorf("nothing wanted: %+v\n%s", res, f.Dump(false))
	}
	if got := f.Dump(false); strings.Contains(got, Chain) {
		t.Errorf("chain left:\n%s", got)
	}
}

func TestSyncFirewalldReject(t *testing.T) {
	f := NewFake()
	_ = f.AppendRule(false, "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	_ = f.AppendRule(false, "FORWARD", "-j", "REJECT", "--reject-with", "icmp-host-prohibited")
	res := mustSync(t, f, testWant)
	if !slices.Equal(res.Active, []string{"iptables-nft"}) {
		t.Errorf("trailing REJECT: %+v", res)
	}
	if got := f.Dump(false); !strings.Contains(got, "-N L4LB-FORWARD\n"+jumpLine+"\n") {
		t.Errorf("jump not first:\n%s", got)
	}
}

// A legacy backend whose table does not exist is not read at all (reading
// would create it); one in use without its binary is reported.
func TestLegacyPresence(t *testing.T) {
	m := newMemTables()
	m.policy[chainForward] = "DROP"
	present := false
	b := &backend{name: "iptables-legacy", t: m, present: func() (bool, error) { return present, nil }}
	res, err := syncAll(context.Background(), []*backend{b}, testWant)
	if err != nil || res.Changed() || m.calls != 0 {
		t.Errorf("absent table: %+v %v, %d commands", res, err, m.calls)
	}
	present = true
	if res, err := syncAll(context.Background(), []*backend{b}, testWant); err != nil || !slices.Equal(res.Active, []string{"iptables-legacy"}) {
		t.Errorf("present table: %+v %v", res, err)
	}
	b.t = nil
	if res, err := syncAll(context.Background(), []*backend{b}, testWant); err != nil || !slices.Equal(res.Unchecked, []string{"iptables-legacy"}) {
		t.Errorf("no binary: %+v %v", res, err)
	}
	b.present = func() (bool, error) { return false, errors.New("boom") }
	if _, err := syncAll(context.Background(), []*backend{b}, testWant); err == nil || !strings.Contains(err.Error(), "iptables-legacy: boom") {
		t.Errorf("presence error: %v", err)
	}
}

// One failing backend does not keep the others from syncing.
func TestSyncErrorsPerBackend(t *testing.T) {
	broken := newMemTables()
	delete(broken.chains, chainForward) // every listing fails
	good := newMemTables()
	good.policy[chainForward] = "DROP"
	bs := []*backend{{name: "iptables-nft", t: broken}, {name: "ip6tables-nft", v6: true, t: good}}
	res, err := syncAll(context.Background(), bs, testWant)
	if err == nil || !strings.Contains(err.Error(), "iptables-nft: list FORWARD") {
		t.Errorf("err = %v", err)
	}
	if !slices.Equal(res.Active, []string{"ip6tables-nft"}) {
		t.Errorf("res = %+v", res)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := syncAll(ctx, bs, testWant); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestFakeErr(t *testing.T) {
	f := NewFake()
	f.Err = errors.New("injected")
	if _, err := f.Sync(context.Background(), testWant); err == nil {
		t.Error("no injected error")
	}
	if _, err := f.Sync(context.Background(), testWant); err != nil {
		t.Errorf("error not cleared: %v", err)
	}
}
