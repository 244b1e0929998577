package dns

import (
	"encoding/json"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

// Test pools (DESIGN section 6).
var (
	testPool4 = netip.MustParsePrefix("198.18.0.0/16")
	testPool6 = netip.MustParsePrefix("fd00:198:18::/64")
)

const (
	nameMyservice = "myservice.marathon.l4lb.thisdcos.directory"
	nameDual      = "dual.marathon.l4lb.thisdcos.directory"
	nameSix       = "six.marathon.l4lb.thisdcos.directory"
	nameIdle      = "idle.marathon.l4lb.thisdcos.directory"
	nameHello     = "api.hello-world.marathon.l4lb.thisdcos.directory"
)

// desired computes the state of a JSON document of Marathon apps.
func desired(t testing.TB, data []byte) vip.State {
	t.Helper()
	apps, problems, err := vip.ParseApps(data)
	if err != nil {
		t.Fatalf("ParseApps: %v", err)
	}
	state, more := vip.Desired(apps, vip.Config{Pool4: testPool4, Pool6: testPool6})
	if problems = append(problems, more...); len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	return state
}

// testState is the state of testdata/apps.json; without is the same apps
// minus those whose ids are given.
func testState(t testing.TB, without ...string) vip.State {
	t.Helper()
	data, err := os.ReadFile("testdata/apps.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Apps []map[string]any `json:"apps"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	doc.Apps = slices.DeleteFunc(doc.Apps, func(a map[string]any) bool { return slices.Contains(without, a["id"].(string)) })
	data, err = json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return desired(t, data)
}

// addrOf is the address the state gives name in one family.
func addrOf(t testing.TB, s vip.State, name string, v6 bool) netip.Addr {
	t.Helper()
	for _, v := range s.VIPs {
		if v.Name == name && v.Addr.Is6() == v6 {
			return v.Addr
		}
	}
	t.Fatalf("no VIP %s (v6 %v) in the state", name, v6)
	return netip.Addr{}
}

func TestRecords(t *testing.T) {
	s := testState(t)
	z := Records(s, "")
	if z.Origin() != "l4lb.thisdcos.directory." {
		t.Errorf("origin %q", z.Origin())
	}
	wantNames := []string{nameHello + ".", nameDual + ".", nameIdle + ".", nameMyservice + ".", nameSix + "."}
	if got := z.Names(); !slices.Equal(got, wantNames) {
		t.Errorf("names:\n got %q\nwant %q", got, wantNames)
	}
	// myservice has three VIPs (6666/tcp, 7777/udp, 7777/tcp) and one
	// address; dual has both families; six only IPv6; idle (no task) IPv4.
	for _, tc := range []struct {
		name   string
		v4, v6 bool
	}{
		{nameMyservice, true, false},
		{nameDual, true, true},
		{nameSix, false, true},
		{nameIdle, true, false},
		{nameHello, true, false},
	} {
		v4, v6, ok := z.Lookup(tc.name)
		if !ok {
			t.Errorf("%s: not found", tc.name)
			continue
		}
		var want4, want6 []netip.Addr
		if tc.v4 {
			want4 = []netip.Addr{addrOf(t, s, tc.name, false)}
		}
		if tc.v6 {
			want6 = []netip.Addr{addrOf(t, s, tc.name, true)}
		}
		if !slices.Equal(v4, want4) || !slices.Equal(v6, want6) {
			t.Errorf("%s: got %v %v, want %v %v", tc.name, v4, v6, want4, want6)
		}
		for _, a := range append(v4, v6...) {
			if !testPool4.Contains(a) && !testPool6.Contains(a) {
				t.Errorf("%s: address %s outside the test pools", tc.name, a)
			}
		}
	}
	if z.Len() != 6 {
		t.Errorf("Len %d, want 6", z.Len())
	}
	// Lookups ignore case and the trailing dot; empty non-terminals and
	// IP VIPs have no addresses.
	if _, _, ok := z.Lookup("MyService.Marathon.L4LB.thisdcos.directory."); !ok {
		t.Error("mixed-case lookup failed")
	}
	for _, name := range []string{"hello-world.marathon.l4lb.thisdcos.directory", "marathon.l4lb.thisdcos.directory", "198.18.255.1"} {
		if _, _, ok := z.Lookup(name); ok {
			t.Errorf("%s has addresses", name)
		}
	}
}

func TestRecordsZoneName(t *testing.T) {
	s := testState(t)
	all := Records(s, "").Names()
	for _, zone := range []string{"L4LB.ThisDCOS.Directory.", "marathon.l4lb.thisdcos.directory", "directory"} {
		if got := Records(s, zone).Names(); !slices.Equal(got, all) {
			t.Errorf("zone %q: names %q, want %q", zone, got, all)
		}
	}
	// Names outside the zone are not served.
	for _, zone := range []string{"other.example", "thisdcos.directory.example", "l4lb.thisdcos"} {
		if z := Records(s, zone); z.Len() != 0 {
			t.Errorf("zone %q: names %q", zone, z.Names())
		}
	}
	if got := Records(s, "hello-world.marathon.l4lb.thisdcos.directory").Names(); !slices.Equal(got, []string{nameHello + "."}) {
		t.Errorf("sub-zone: names %q", got)
	}
	if z := Records(vip.State{}, ""); z.Len() != 0 || len(z.Names()) != 0 {
		t.Errorf("empty state: %d records", z.Len())
	}
}

func TestIntersect(t *testing.T) {
	old := Records(testState(t), "")
	// The new apps lose /myservice; /dual's tasks move to an IPv4-only
	// address, so dual loses its IPv6 VIP (and AAAA record).
	s := testState(t, "/myservice", "/dual")
	dual := desired(t, []byte(`{"id": "/dual", "networks": [{"mode": "container", "name": "dual"}],
	  "container": {"portMappings": [{"containerPort": 80, "labels": {"VIP_0": "dual:80"}}]},
	  "tasks": [{"id": "dual.2", "host": "198.19.0.11", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "198.19.1.8"}]}]}`))
	s.VIPs = append(s.VIPs, dual.VIPs...)
	cur := Records(s, "")

	both := old.Intersect(cur)
	want := []string{nameHello + ".", nameDual + ".", nameIdle + ".", nameSix + "."}
	if got := both.Names(); !slices.Equal(got, want) {
		t.Fatalf("names %q, want %q", got, want)
	}
	v4, v6, _ := both.Lookup(nameDual)
	if len(v4) != 1 || len(v6) != 0 {
		t.Errorf("dual: %v %v, want its IPv4 address only", v4, v6)
	}
	if !slices.Equal(both.Names(), cur.Intersect(old).Names()) || both.Len() != cur.Intersect(old).Len() {
		t.Error("Intersect is not symmetric in content")
	}
	if both.Len() != 4 {
		t.Errorf("Len %d, want 4", both.Len())
	}
	// A name whose address changed is withdrawn until the new one is
	// published.
	moved := build(old.Origin(), map[string][]netip.Addr{nameIdle + ".": {netip.MustParseAddr("198.18.9.9")}})
	if got := old.Intersect(moved); got.Len() != 0 {
		t.Errorf("moved address kept: %q", got.Names())
	}
	if got := old.Intersect(nil); got.Len() != 0 {
		t.Errorf("intersect with nil: %q", got.Names())
	}
	// An empty non-terminal of a withdrawn name goes with it.
	if n := both.nodes["hello-world.marathon.l4lb.thisdcos.directory."]; n == nil {
		t.Error("empty non-terminal of a kept name is missing")
	}
	onlyIdle := old.Intersect(build(old.Origin(), map[string][]netip.Addr{nameIdle + ".": {addrOf(t, testState(t), nameIdle, false)}}))
	if n := onlyIdle.nodes["hello-world.marathon.l4lb.thisdcos.directory."]; n != nil {
		t.Error("empty non-terminal of a withdrawn name is still there")
	}
}

func TestSerial(t *testing.T) {
	a, b := Records(testState(t), ""), Records(testState(t), "")
	if a.Serial() != b.Serial() {
		t.Error("same content, different serials")
	}
	if c := Records(testState(t, "/idle"), ""); c.Serial() == a.Serial() {
		t.Error("different content, same serial")
	}
}
