package vip

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestStaticReason(t *testing.T) {
	for _, c := range []struct {
		addr, want string
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.0.9", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"}, // mapped addresses are unmapped first
		{"0.0.0.0", "unspecified"},
		{"0.1.2.3", "unspecified"},
		{"::", "unspecified"},
		{"169.254.169.254", "link-local"},
		{"fe80::1", "link-local"},
		{"febf::1", "link-local"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"ff02::1", "multicast"},
		{"ff05::2", "multicast"},
		{"255.255.255.255", "broadcast"},
		{"198.18.255.1", ""},
		{"fd00:198:18::1", ""},
		{"11.0.0.1", ""},
		{"fec0::1", ""},
	} {
		got := StaticReason(netip.MustParseAddr(c.addr))
		if c.want == "" && got != "" || !strings.Contains(got, c.want) {
			t.Errorf("StaticReason(%s) = %q, want %q", c.addr, got, c.want)
		}
	}
	if got := StaticReason(netip.Addr{}); got == "" {
		t.Error("the zero address passes")
	}
	if got := StaticReason(netip.MustParseAddr("fd00::1%eth0")); got == "" {
		t.Error("an address with a zone passes")
	}
}

func TestStaticPoolReason(t *testing.T) {
	for _, c := range []struct {
		pool, want string
	}{
		{"11.0.0.0/8", ""},
		{"198.18.0.0/16", ""},
		{"fd01:c::/64", ""},
		{"127.0.0.0/16", "loopback"},
		{"120.0.0.0/5", "loopback"}, // contains 127/8
		{"169.254.0.0/24", "link-local"},
		{"224.0.0.0/8", "multicast"},
		{"0.0.0.0/0", "unspecified"},
		{"255.255.255.0/24", "broadcast"},
		{"::/64", "unspecified"}, // holds ::1 as well
		{"fe80::/64", "link-local"},
		{"ff00::/64", "multicast"},
	} {
		got := StaticPoolReason(netip.MustParsePrefix(c.pool))
		if c.want == "" && got != "" || !strings.Contains(got, c.want) {
			t.Errorf("StaticPoolReason(%s) = %q, want %q", c.pool, got, c.want)
		}
	}
}

func testLocal() *LocalNets {
	return &LocalNets{
		Own: []netip.Prefix{
			netip.MustParsePrefix("198.19.0.1/32"), netip.MustParsePrefix("198.19.0.255/32"),
			netip.MustParsePrefix("198.18.100.0/24"), // an AnyIP local route
			netip.MustParsePrefix("fd00:198:19::1/128"),
		},
		Connected: []netip.Prefix{
			netip.MustParsePrefix("198.19.0.0/24"), netip.MustParsePrefix("198.19.7.7/32"),
			netip.MustParsePrefix("fd00:198:19::/112"),
		},
	}
}

func TestLocalNetsReason(t *testing.T) {
	l := testLocal()
	for _, c := range []struct {
		addr, want string
	}{
		{"198.19.0.1", "an address of this agent"},
		{"198.19.0.255", "an address of this agent"}, // the broadcast of a connected network
		{"198.18.100.7", "an address of this agent (local route 198.18.100.0/24)"},
		{"198.19.0.20", "inside 198.19.0.0/24, a network this agent is directly connected to"},
		{"198.19.7.7", "inside 198.19.7.7/32"}, // a routed pod address (Calico)
		{"fd00:198:19::1", "an address of this agent"},
		{"fd00:198:19::ffff", "inside fd00:198:19::/112"},
		{"::ffff:198.19.0.1", "an address of this agent"},
		{"198.19.7.8", ""},
		{"198.18.255.1", ""},
		{"fd00:198:19::1:0", ""},
		{"fd00:198:18::1", ""},
	} {
		got := l.Reason(netip.MustParseAddr(c.addr))
		if c.want == "" && got != "" || !strings.HasPrefix(got, c.want) {
			t.Errorf("Reason(%s) = %q, want %q", c.addr, got, c.want)
		}
	}
	var none *LocalNets
	if got := none.Reason(netip.MustParseAddr("198.19.0.1")); got != "" {
		t.Errorf("unknown local networks refuse: %q", got)
	}
}

func TestLocalNetsPoolReason(t *testing.T) {
	l := testLocal()
	for _, c := range []struct {
		pool, want string
	}{
		{"198.18.0.0/16", "overlaps 198.18.100.0/24, addresses of this agent"},
		{"198.19.0.128/25", "overlaps 198.19.0.255/32, addresses"}, // own comes first
		{"198.19.0.0/16", "overlaps 198.19.0.1/32"},
		{"198.19.6.0/23", "overlaps 198.19.7.7/32, a network this agent is directly connected to"},
		{"fd00:198:19::/64", "overlaps fd00:198:19::1/128"},
		{"11.0.0.0/8", ""},
		{"fd00:198:18::/64", ""},
	} {
		got := l.PoolReason(netip.MustParsePrefix(c.pool))
		if c.want == "" && got != "" || !strings.HasPrefix(got, c.want) {
			t.Errorf("PoolReason(%s) = %q, want %q", c.pool, got, c.want)
		}
	}
}

func TestGuardReason(t *testing.T) {
	hosts := Hosts{}
	hosts.Add(netip.MustParseAddr("198.20.0.2"), "task host 198.20.0.2 of task t of app /a")
	hosts.Add(netip.MustParseAddr("198.20.0.2"), "second description is dropped")
	hosts.Add(netip.MustParseAddr("fd00:198:20::2"), "backend of task t6 of app /a")
	g := Guard{Local: testLocal()}
	ranged := Guard{Local: testLocal(), Ranges: []netip.Prefix{
		netip.MustParsePrefix("198.18.255.0/24"), netip.MustParsePrefix("fd00:198:18::/64"),
	}}
	for _, c := range []struct {
		g          Guard
		addr, want string
	}{
		{g, "127.0.0.1", "loopback address"},
		{g, "198.19.0.1", "an address of this agent"},
		{g, "198.20.0.2", "the address of task host 198.20.0.2 of task t of app /a"},
		{g, "fd00:198:20::2", "the address of backend of task t6 of app /a"},
		{g, "198.20.0.3", ""},
		{g, "fd00:198:20::3", ""},
		{ranged, "198.18.255.9", ""},
		{ranged, "fd00:198:18::9", ""},
		{ranged, "198.18.254.9", "outside --ip-vip-ranges 198.18.255.0/24,fd00:198:18::/64"},
		{ranged, "fd00:198:17::9", "outside --ip-vip-ranges"},
		{ranged, "198.20.0.2", "the address of task host"}, // more specific reasons first
		{Guard{}, "198.19.0.1", ""},                        // no local networks known (render)
		{Guard{Ranges: []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24")}}, "fd00:198:18::1", "outside --ip-vip-ranges 198.18.255.0/24"},
	} {
		got := c.g.Reason(netip.MustParseAddr(c.addr), hosts)
		if c.want == "" && got != "" || !strings.HasPrefix(got, c.want) {
			t.Errorf("Reason(%s) = %q, want %q", c.addr, got, c.want)
		}
	}
}

// The app of issue 15: labels that would take addresses not meant for VIPs
// are refused, each a problem naming the app and the label; the legitimate
// IP VIP and the named VIP are kept, and no refused address reaches the
// allocator's reserved set or the state.
func TestDesiredRefusesIPVIPs(t *testing.T) {
	input := `{"apps": [
	  {"id": "/hijack", "portDefinitions": [{"port": 0, "labels": {
	    "VIP_0": "127.0.0.1:22", "VIP_1": "169.254.169.254:80", "VIP_2": "224.0.0.1:80", "VIP_3": "0.0.0.0:80",
	    "VIP_4": "[::1]:80", "VIP_5": "[fe80::1]:80", "VIP_6": "198.19.0.12:8080", "VIP_7": "198.19.0.1:80",
	    "VIP_8": "198.19.0.77:80", "VIP_9": "255.255.255.255:80", "VIP_10": "[ff02::1]:80", "VIP_11": "[fd00:198:19::16]:80",
	    "VIP_12": "198.19.9.9:80", "VIP_13": "198.18.254.1:80", "VIP_14": "198.19.0.11:80",
	    "VIP_20": "198.18.255.1:8080", "VIP_21": "[fd00:198:18::ff:1]:80", "VIP_22": "ok:80"}}]},
	  {"id": "/web", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "web:80"}}],
	   "tasks": [{"id": "w.1", "host": "198.19.0.12", "ports": [8080], "state": "TASK_RUNNING"},
	             {"id": "w.2", "host": "agent6.example", "ports": [8080], "state": "TASK_RUNNING"}]},
	  {"id": "/novip", "tasks": [{"id": "n.1", "host": "198.19.9.9", "ports": [1], "state": "TASK_STAGING"}]},
	  {"id": "/ctr", "networks": [{"mode": "container"}], "container": {"portMappings": [{"containerPort": 80, "labels": {"VIP_0": "ctr:80"}}]},
	   "tasks": [{"id": "c.1", "host": "agent1.example", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "198.19.1.10"}]}]}
	]}`
	s, problems := desired(t, input, func(c *Config) {
		c.Guard = Guard{Local: &LocalNets{
			Own:       []netip.Prefix{netip.MustParsePrefix("198.19.0.1/32")},
			Connected: []netip.Prefix{netip.MustParsePrefix("198.19.0.64/26")},
		}, Ranges: []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24"), netip.MustParsePrefix("fd00:198:18::/64"),
			netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("fd00:198:19::/64")}}
	})
	assertProblems(t, problems, []string{
		"app /hijack label VIP_0: IP VIP address 127.0.0.1 refused: loopback address",
		"app /hijack label VIP_1: IP VIP address 169.254.169.254 refused: link-local address",
		"app /hijack label VIP_2: IP VIP address 224.0.0.1 refused: multicast address",
		"app /hijack label VIP_3: IP VIP address 0.0.0.0 refused: unspecified address",
		"app /hijack label VIP_4: IP VIP address ::1 refused: loopback address",
		"app /hijack label VIP_5: IP VIP address fe80::1 refused: link-local address",
		"app /hijack label VIP_6: IP VIP address 198.19.0.12 refused: the address of backend 198.19.0.12:8080 of task w.1 of app /web",
		"app /hijack label VIP_7: IP VIP address 198.19.0.1 refused: an address of this agent",
		"app /hijack label VIP_8: IP VIP address 198.19.0.77 refused: inside 198.19.0.64/26, a network this agent is directly connected to",
		"app /hijack label VIP_9: IP VIP address 255.255.255.255 refused: broadcast address",
		"app /hijack label VIP_10: IP VIP address ff02::1 refused: multicast address",
		"app /hijack label VIP_11: IP VIP address fd00:198:19::16 refused: the address of backend [fd00:198:19::16]:8080 of task w.2 of app /web",
		"app /hijack label VIP_12: IP VIP address 198.19.9.9 refused: the address of task host 198.19.9.9 of task n.1 of app /novip",
		"app /hijack label VIP_13: IP VIP address 198.18.254.1 refused: outside --ip-vip-ranges",
		// agent1.example is the host of a container task:
		// looked up although the backend is the container's address.
		"app /hijack label VIP_14: IP VIP address 198.19.0.11 refused: the address of task host agent1.example of task c.1 of app /ctr",
	})
	want := []string{
		"198.18.255.1:8080/tcp v4 []",
		"[fd00:198:18::ff:1]:80/tcp v6 []",
		"ctr.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.1.10:80 active]",
		"ok.marathon.l4lb.thisdcos.directory:80/tcp v4 []",
		"web.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.0.12:8080 active]",
		"web.marathon.l4lb.thisdcos.directory:80/tcp v6 [[fd00:198:19::16]:8080 active]",
	}
	if got := vipsOf(s); !slices.Equal(got, want) {
		t.Errorf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A backend address (a container's, not a host's) is refused too, and so is
// an IP VIP whose own task runs at its address.
func TestDesiredRefusesBackendAddresses(t *testing.T) {
	s, problems := desired(t, `[
	  {"id": "/ctr", "networks": [{"mode": "container"}], "container": {"portMappings": [{"containerPort": 80, "labels": {"VIP_0": "ctr:80"}}]},
	   "tasks": [{"id": "c.1", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "198.19.1.10"}, {"ipAddress": "fd00:198:19::1:10"}]}]},
	  {"id": "/steal", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.19.1.10:80", "VIP_1": "[fd00:198:19::1:10]:80"}}]},
	  {"id": "/self", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.19.0.5:80"}}],
	   "tasks": [{"id": "s.1", "host": "198.19.0.5", "ports": [31000], "state": "TASK_RUNNING"}]}
	]`)
	assertProblems(t, problems, []string{
		"app /steal label VIP_0: IP VIP address 198.19.1.10 refused: the address of backend 198.19.1.10:80 of task c.1 of app /ctr",
		"app /steal label VIP_1: IP VIP address fd00:198:19::1:10 refused: the address of backend [fd00:198:19::1:10]:80 of task c.1 of app /ctr",
		"app /self label VIP_0: IP VIP address 198.19.0.5 refused: the address of backend 198.19.0.5:31000 of task s.1 of app /self",
	})
	if got := vipsOf(s); len(got) != 2 || !strings.HasPrefix(got[0], "ctr.") {
		t.Errorf("VIPs = %v", got)
	}
}

// Two apps declaring the same refused IP VIP both get the problem; an IP
// VIP refused for one protocol is refused for both.
func TestDesiredRefusalNamesEveryLabel(t *testing.T) {
	_, problems := desired(t, `[
	  {"id": "/a", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "127.0.0.53:53"}}]},
	  {"id": "/b", "portDefinitions": [{"port": 0, "protocol": "udp", "labels": {"vip": "127.0.0.53:53"}}]}
	]`)
	got := problemsOf(problems)
	want := []string{
		"app /a label VIP_0: IP VIP address 127.0.0.53 refused: loopback address",
		"app /b label vip: IP VIP address 127.0.0.53 refused: loopback address",
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, p := range problems {
		if p.Refused != "127.0.0.53" {
			t.Errorf("problem %+v does not carry the refused address", p)
		}
	}
}

// An agent fed a ready-made state (cluster mode) applies its local part
// itself: IP VIPs inside its networks go, named VIPs and other IP VIPs stay.
func TestGuardFilter(t *testing.T) {
	s, problems := desired(t, `[
	  {"id": "/a", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.18.255.1:80", "VIP_1": "198.19.0.20:80", "VIP_2": "a:80"}}],
	   "tasks": [{"id": "t", "host": "198.20.0.2", "ports": [31000], "state": "TASK_RUNNING"}]},
	  {"id": "/b", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.19.0.20:80"}}]}
	]`)
	if len(problems) != 0 || len(s.VIPs) != 3 {
		t.Fatalf("without the agent's networks: VIPs %v problems %v", vipsOf(s), problemsOf(problems))
	}
	// The controller could not know the agent's networks; a state that
	// holds a backend's address as an IP VIP is refused too.
	s.VIPs = append(s.VIPs, VIP{Addr: netip.MustParseAddr("198.20.0.2"), Port: 81, Proto: TCP, Apps: []string{"/c"}})
	got, problems := Guard{Local: testLocal()}.Filter(s)
	if want := []string{"198.18.255.1:80/tcp v4 [198.20.0.2:31000 active]", "a.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.20.0.2:31000 active]"}; !slices.Equal(vipsOf(got), want) {
		t.Errorf("VIPs = %v, want %v", vipsOf(got), want)
	}
	want := []string{
		"app /a label 198.19.0.20:80/tcp: IP VIP address 198.19.0.20 refused: inside 198.19.0.0/24, a network this agent is directly connected to",
		"app /b label 198.19.0.20:80/tcp: IP VIP address 198.19.0.20 refused: inside 198.19.0.0/24, a network this agent is directly connected to",
		"app /c label 198.20.0.2:81/tcp: IP VIP address 198.20.0.2 refused: the address of backend 198.20.0.2:31000 of task t of app /a",
	}
	if got := problemsOf(problems); !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(s.VIPs) != 4 {
		t.Errorf("Filter changed its input: %d VIPs", len(s.VIPs))
	}
}

// The index answers like a scan would: the longest prefix that holds the
// address, of the right family, whatever the order of the list.
func TestLocalNetsLongestPrefix(t *testing.T) {
	l := &LocalNets{Connected: []netip.Prefix{
		netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("198.19.0.0/24"),
		netip.MustParsePrefix("c613::/16"), // an IPv6 /16 whose bits read like 198.19
		netip.MustParsePrefix("198.19.0.77/32"), netip.MustParsePrefix("fd00:198:19::/64"),
	}}
	for _, c := range []struct{ addr, want string }{
		{"198.19.0.77", "inside 198.19.0.77/32"},
		{"198.19.0.78", "inside 198.19.0.0/24"},
		{"198.19.5.1", "inside 198.19.0.0/16"},
		{"c613::1", "inside c613::/16"},
		{"fd00:198:19::1:2", "inside fd00:198:19::/64"},
		{"198.20.0.1", ""},
		{"fd00:198:20::1", ""},
	} {
		got := l.Reason(netip.MustParseAddr(c.addr))
		if c.want == "" && got != "" || !strings.HasPrefix(got, c.want) {
			t.Errorf("Reason(%s) = %q, want %q", c.addr, got, c.want)
		}
	}
}
