package cluster_test

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/cluster"
	"github.com/l4lb/l4lb/sync/api"
	"github.com/l4lb/l4lb/vip"
)

func mustLayout(t *testing.T, prefix string) cluster.Layout {
	t.Helper()
	l, err := cluster.NewLayout(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLayoutKeys(t *testing.T) {
	for _, prefix := range []string{"/l4lb", "/l4lb/", "/"} {
		l := mustLayout(t, prefix)
		want := strings.TrimRight(prefix, "/")
		if got := l.Config(); got != want+"/v1/config" {
			t.Errorf("%q: config %q", prefix, got)
		}
		if got := l.Alloc("a.marathon.l4lb.thisdcos.directory"); got != want+"/v1/alloc/a.marathon.l4lb.thisdcos.directory" {
			t.Errorf("%q: alloc %q", prefix, got)
		}
		if got := l.Leader(); got != want+"/v1/leader" {
			t.Errorf("%q: leader %q", prefix, got)
		}
		for _, k := range []vip.Key{
			{Addr: netip.MustParseAddr("198.18.0.1"), Proto: vip.TCP, Port: 80},
			{Addr: netip.MustParseAddr("fd00:198:18::1"), Proto: vip.UDP, Port: 65535},
		} {
			key := l.VIPKey(k)
			back, err := l.ParseVIPKey(key)
			if err != nil || back != k {
				t.Errorf("%q: %s -> %q -> %v, %v", prefix, k, key, back, err)
			}
		}
	}
	if got := mustLayout(t, "/l4lb").VIPKey(vip.Key{Addr: netip.MustParseAddr("fd00:198:18::1"), Proto: vip.UDP, Port: 53}); got != "/l4lb/v1/vips/fd00:198:18::1/udp/53" {
		t.Errorf("ipv6 key %q", got)
	}
	for _, bad := range []string{"l4lb", "", "/a b"} {
		if _, err := cluster.NewLayout(bad); err == nil {
			t.Errorf("prefix %q accepted", bad)
		}
	}
}

func TestParseVIPKeyErrors(t *testing.T) {
	l := mustLayout(t, "/l4lb")
	for _, key := range []string{
		"/other/v1/vips/198.18.0.1/tcp/80",
		"/l4lb/v1/vips/198.18.0.1/tcp",
		"/l4lb/v1/vips/198.18.0.1/tcp/80/x",
		"/l4lb/v1/vips/nope/tcp/80",
		"/l4lb/v1/vips/198.18.0.1/sctp/80",
		"/l4lb/v1/vips/198.18.0.1/tcp/0",
		"/l4lb/v1/vips/198.18.0.1/tcp/65536",
		"/l4lb/v1/vips/198.18.0.1/tcp/080",
		"/l4lb/v1/vips/fe80::1%eth0/tcp/80",
		"/l4lb/v1/vips/::ffff:198.18.0.1/tcp/80",
	} {
		if k, err := l.ParseVIPKey(key); err == nil {
			t.Errorf("%q parsed as %v", key, k)
		} else if !strings.Contains(err.Error(), key) {
			t.Errorf("%q: error does not name the key: %v", key, err)
		}
	}
}

func sampleVIP() vip.VIP {
	return vip.VIP{
		Name: "web.marathon.l4lb.thisdcos.directory", Addr: netip.MustParseAddr("198.18.0.7"), Port: 80, Proto: vip.TCP,
		Apps: []string{"/web", "/web2"},
		Backends: []vip.Backend{
			{Addr: netip.MustParseAddr("198.19.0.11"), Port: 31000, State: vip.Active, Task: "web.1", App: "/web"},
			{Addr: netip.MustParseAddr("198.19.0.12"), Port: 31001, State: vip.Draining, Task: "web2.1", App: "/web2"},
			{Addr: netip.MustParseAddr("198.19.0.13"), Port: 31002, State: vip.Starting, Task: "web2.2", App: "/web2"},
			{Addr: netip.MustParseAddr("198.19.0.14"), Port: 31003, State: vip.Unhealthy, Task: "web2.3", App: "/web2"},
		},
	}
}

// A VIP value is what GET /v1/vips shows, and reads back to the same VIP.
func TestVIPValue(t *testing.T) {
	v := sampleVIP()
	data := cluster.EncodeVIP(v)
	want, _ := json.Marshal(api.VIPs(vip.State{VIPs: []vip.VIP{v}})[0])
	if string(data) != string(want) {
		t.Errorf("value\n%s\nis not /v1/vips'\n%s", data, want)
	}
	back, err := cluster.DecodeVIP(v.Key(), data)
	if err != nil {
		t.Fatal(err)
	}
	if !vip.VIPEqual(back, v) {
		t.Errorf("round trip:\n%+v\n%+v", back, v)
	}
	// One app: the backends' app is said once, and comes back.
	one := sampleVIP()
	one.Apps = []string{"/web"}
	for i := range one.Backends {
		one.Backends[i].App = "/web"
	}
	data = cluster.EncodeVIP(one)
	if strings.Contains(string(data), `"app":"/web"}`) || strings.Count(string(data), `"/web"`) != 2 {
		t.Errorf("one app said per backend: %s", data)
	}
	if back, err := cluster.DecodeVIP(one.Key(), data); err != nil || !vip.VIPEqual(back, one) {
		t.Errorf("one app round trip: %+v %v", back, err)
	}
	ipv := vip.VIP{Addr: netip.MustParseAddr("198.18.255.3"), Port: 53, Proto: vip.UDP}
	back, err = cluster.DecodeVIP(ipv.Key(), cluster.EncodeVIP(ipv))
	if err != nil || !vip.VIPEqual(back, ipv) {
		t.Errorf("ip vip round trip: %+v %v", back, err)
	}
}

func TestDecodeVIPErrors(t *testing.T) {
	k := vip.Key{Addr: netip.MustParseAddr("198.18.0.7"), Proto: vip.TCP, Port: 80}
	good := string(cluster.EncodeVIP(sampleVIP()))
	for name, value := range map[string]string{
		"not json":      `{"vip":`,
		"wrong type":    `{"port":"80"}`,
		"other address": strings.Replace(good, `"ip":"198.18.0.7"`, `"ip":"198.18.0.8"`, 1),
		"other port":    strings.Replace(good, `"port":80,`, `"port":81,`, 1),
		"other proto":   strings.Replace(good, `"protocol":"tcp"`, `"protocol":"udp"`, 1),
		"backend ip":    strings.Replace(good, `"198.19.0.11"`, `"x"`, 1),
		"backend v6":    strings.Replace(good, `"198.19.0.11"`, `"fd00:198:19::1"`, 1),
		"backend port":  strings.Replace(good, `"port":31000`, `"port":0`, 1),
		"backend state": strings.Replace(good, `"state":"active"`, `"state":"happy"`, 1),
		"bad name":      strings.Replace(good, `"name":"web.marathon`, `"name":"w b.marathon`, 1),
	} {
		if v, err := cluster.DecodeVIP(k, []byte(value)); err == nil {
			t.Errorf("%s: decoded %+v", name, v)
		}
	}
}

func TestConfigAndAllocValues(t *testing.T) {
	c := cluster.Config{Pool4: netip.MustParsePrefix("198.18.0.0/24"), Pool6: netip.MustParsePrefix("fd00:198:18::/64"), Domain: "l4lb.thisdcos.directory"}
	data := cluster.EncodeConfig(c)
	if string(data) != `{"pool4":"198.18.0.0/24","pool6":"fd00:198:18::/64","domain":"l4lb.thisdcos.directory"}` {
		t.Errorf("config value %s", data)
	}
	if back, err := cluster.DecodeConfig(data); err != nil || back != c {
		t.Errorf("config round trip %+v %v", back, err)
	}
	for _, bad := range []string{`{`, `{"pool4":"198.18.0.0/24"}`, `{"pool4":"fd00::/64","pool6":"fd00::/64","domain":"x"}`,
		`{"pool4":"198.18.0.0/24","pool6":"fd00::/64","domain":"x","extra":1}`} {
		if back, err := cluster.DecodeConfig([]byte(bad)); err == nil {
			t.Errorf("config %s decoded: %+v", bad, back)
		}
	}
	a := cluster.Alloc{IP4: netip.MustParseAddr("198.18.0.7"), IP6: netip.MustParseAddr("fd00:198:18::7")}
	if back, err := cluster.DecodeAlloc(cluster.EncodeAlloc(a)); err != nil || back != a {
		t.Errorf("alloc round trip %+v %v", back, err)
	}
	if got := string(cluster.EncodeAlloc(cluster.Alloc{IP4: a.IP4})); got != `{"ip4":"198.18.0.7"}` {
		t.Errorf("alloc value %s", got)
	}
	for _, bad := range []string{`{}`, `{"ip4":"fd00::1"}`, `{"ip4":"x"}`, `[]`} {
		if back, err := cluster.DecodeAlloc([]byte(bad)); err == nil {
			t.Errorf("alloc %s decoded: %+v", bad, back)
		}
	}
	allocs := cluster.Allocs(vip.Allocations{V4: map[string]netip.Addr{"a": a.IP4, "b": a.IP4.Next()}, V6: map[string]netip.Addr{"a": a.IP6}})
	want := map[string]cluster.Alloc{"a": a, "b": {IP4: a.IP4.Next()}}
	if !reflect.DeepEqual(allocs, want) {
		t.Errorf("allocs %v", allocs)
	}
}

// What the controller writes rebuilds, through an agent's Index, exactly
// the VIPs the controller computed, at the controller's addresses; a bad
// key or value is a problem for that key alone.
func TestVIPGroupsRebuildState(t *testing.T) {
	l := mustLayout(t, "/l4lb")
	v := sampleVIP()
	v6 := vip.VIP{Name: v.Name, Addr: netip.MustParseAddr("fd00:198:18::9"), Port: 80, Proto: vip.TCP, Apps: []string{"/web", "/web2"}, // the controller gives both families the same apps
		Backends: []vip.Backend{{Addr: netip.MustParseAddr("fd00:198:19::11"), Port: 31000, Task: "web.1", App: "/web"}}}
	ipv := vip.VIP{Addr: netip.MustParseAddr("198.18.255.3"), Port: 53, Proto: vip.UDP, Apps: []string{"/dns"},
		Backends: []vip.Backend{{Addr: netip.MustParseAddr("198.19.0.21"), Port: 53, Task: "dns.1", App: "/dns"}}}
	empty := vip.VIP{Name: "idle.marathon.l4lb.thisdcos.directory", Addr: netip.MustParseAddr("198.18.0.200"), Port: 8080, Proto: vip.TCP, Apps: []string{"/idle"}}
	x := vip.NewIndex(vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/24"), Pool6: netip.MustParsePrefix("fd00:198:18::/64")})
	for _, w := range []vip.VIP{v, v6, ipv, empty} {
		g := l.VIPGroup(l.VIPKey(w.Key()), cluster.EncodeVIP(w))
		if len(g.Problems) > 0 {
			t.Fatalf("%s: %v", w, g.Problems)
		}
		x.Set(string(g.Key), g.Decls, g.Problems)
	}
	for _, bad := range []struct{ key, value string }{
		{"/l4lb/v1/vips/198.18.0.1/tcp", `{}`},
		{"/l4lb/v1/vips/198.18.0.1/tcp/80", `{"vip":`},
	} {
		g := l.VIPGroup(bad.key, []byte(bad.value))
		if len(g.Decls) != 0 || len(g.Problems) != 1 || g.Problems[0].Label != bad.key || !strings.Contains(g.Problems[0].Reason, bad.key) {
			t.Fatalf("bad %s: %+v", bad.key, g)
		}
		x.Set(string(g.Key), g.Decls, g.Problems)
	}
	x.Commit()
	got := x.State().VIPs
	want := []vip.VIP{v, empty, ipv, v6}
	if len(got) != len(want) {
		t.Fatalf("got %d VIPs: %+v", len(got), got)
	}
	for i := range want {
		if !vip.VIPEqual(got[i], want[i]) {
			t.Errorf("VIP %d:\n%+v\nwant\n%+v", i, got[i], want[i])
		}
	}
	if ps := x.Problems(); len(ps) != 2 {
		t.Errorf("problems %v", ps)
	}
}
