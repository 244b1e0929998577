package vip

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var (
	testPool4 = netip.MustParsePrefix("198.18.0.0/16")
	testPool6 = netip.MustParsePrefix("fd00:198:18::/64")
)

// fakeResolver answers from a map; hosts not in it fail.
type fakeResolver map[string][]string

func (f fakeResolver) LookupHost(host string) ([]netip.Addr, error) {
	addrs, ok := f[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	var out []netip.Addr
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

func desired(t *testing.T, input string, mod ...func(*Config)) (State, []Problem) {
	t.Helper()
	apps, problems, err := ParseApps([]byte(input))
	if err != nil {
		t.Fatalf("ParseApps: %v", err)
	}
	cfg := Config{Pool4: testPool4, Pool6: testPool6, Resolver: fakeResolver{
		"agent1.example": {"198.19.0.11"},
		"agent2.example": {"fd00:198:19::12", "198.19.0.12"},
		"agent6.example": {"fd00:198:19::16"},
	}}
	for _, m := range mod {
		m(&cfg)
	}
	state, more := Desired(apps, cfg)
	return state, append(problems, more...)
}

// summary renders VIPs compactly: "name:port/proto@addr [backend state task, ...]".
func summary(s State) []string {
	var out []string
	for _, v := range s.VIPs {
		var bs []string
		for _, b := range v.Backends {
			bs = append(bs, fmt.Sprintf("%s %s %s", b.AddrPort(), b.State, b.Task))
		}
		out = append(out, fmt.Sprintf("%s@%s [%s]", v, v.Addr, strings.Join(bs, ", ")))
	}
	return out
}

// vipsOf strips addresses of named VIPs, which come from the hash.
func vipsOf(s State) []string {
	var out []string
	for _, v := range s.VIPs {
		var bs []string
		for _, b := range v.Backends {
			bs = append(bs, fmt.Sprintf("%s %s", b.AddrPort(), b.State))
		}
		fam := "v4"
		if v.Addr.Is6() {
			fam = "v6"
		}
		out = append(out, fmt.Sprintf("%s %s [%s]", v, fam, strings.Join(bs, ", ")))
	}
	slices.Sort(out)
	return out
}

func problemsOf(ps []Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Error())
	}
	return out
}

func readExample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDesiredDocumentationExamples(t *testing.T) {
	for _, file := range []string{"dcos-appc.json", "dcos-docker.json"} {
		t.Run(file, func(t *testing.T) {
			s, problems := desired(t, readExample(t, file))
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problemsOf(problems))
			}
			want := []string{
				"myservice.marathon.l4lb.thisdcos.directory:6666/tcp v4 []",
				"myservice.marathon.l4lb.thisdcos.directory:7777/tcp v4 []",
			}
			if got := vipsOf(s); !slices.Equal(got, want) {
				t.Fatalf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if s.VIPs[0].Addr != s.VIPs[1].Addr {
				t.Errorf("one name must have one address for all its ports: %v and %v", s.VIPs[0].Addr, s.VIPs[1].Addr)
			}
			if !testPool4.Contains(s.VIPs[0].Addr) {
				t.Errorf("address %v is not from the pool %v", s.VIPs[0].Addr, testPool4)
			}
			if got := s.VIPs[0].Apps; !slices.Equal(got, []string{"/myservice"}) {
				t.Errorf("apps = %v", got)
			}
		})
	}
}

func TestDesiredNamesAndLabels(t *testing.T) {
	s, problems := desired(t, `[
	  {"id": "/mygroup/myapp", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "/mygroup/myapp:80"}}]},
	  {"id": "/api.hello-world", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "/api.hello-world:80"}}]},
	  {"id": "/svc", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"vip_0": "My_Service:53", "VIP_1": "198.18.255.10:5353", "NOT_A_VIP": "x:1"}}]}
	]`)
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problemsOf(problems))
	}
	want := []string{
		"198.18.255.10:5353/tcp v4 []",
		"198.18.255.10:5353/udp v4 []",
		"api.hello-world.marathon.l4lb.thisdcos.directory:80/tcp v4 []",
		"my-service.marathon.l4lb.thisdcos.directory:53/tcp v4 []",
		"my-service.marathon.l4lb.thisdcos.directory:53/udp v4 []",
		"mygroupmyapp.marathon.l4lb.thisdcos.directory:80/tcp v4 []",
	}
	if got := vipsOf(s); !slices.Equal(got, want) {
		t.Fatalf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDesiredNetworkingModes(t *testing.T) {
	for _, tc := range []struct {
		name string
		app  string
		want []string
		// problems expected, as substrings
		problems []string
	}{{
		name: "host networking uses task host and ports",
		app: `{"id": "/web", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "web:80"}}, {"port": 0, "protocol": "udp", "labels": {"VIP_1": "web:81"}}],
		  "tasks": [
		    {"id": "web.1", "host": "198.19.0.11", "ports": [31000, 31001], "state": "TASK_RUNNING"},
		    {"id": "web.2", "host": "agent2.example", "ports": [31002, 31003], "state": "TASK_RUNNING"}]}`,
		want: []string{
			"web.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.0.11:31000 active, 198.19.0.12:31002 active]",
			"web.marathon.l4lb.thisdcos.directory:81/udp v4 [198.19.0.11:31001 active, 198.19.0.12:31003 active]",
		},
	}, {
		name: "docker bridge uses host ports, never the bridge address",
		app: `{"id": "/br", "container": {"type": "DOCKER", "docker": {"network": "BRIDGE", "portMappings": [
		    {"containerPort": 80, "hostPort": 0, "labels": {"VIP_0": "br:80"}}]}},
		  "tasks": [{"id": "br.1", "host": "198.19.0.11", "ports": [31500], "state": "TASK_RUNNING",
		    "ipAddresses": [{"ipAddress": "172.17.0.2", "protocol": "IPv4"}]}]}`,
		want: []string{"br.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.0.11:31500 active]"},
	}, {
		name: "marathon 1.5 bridge network",
		app: `{"id": "/br15", "networks": [{"mode": "container/bridge"}], "container": {"type": "MESOS", "portMappings": [
		    {"containerPort": 80, "labels": {}}, {"containerPort": 81, "labels": {"VIP_0": "br15:81"}}]},
		  "tasks": [{"id": "br15.1", "host": "agent1.example", "ports": [31600, 31601], "state": "TASK_RUNNING",
		    "ipAddresses": [{"ipAddress": "172.17.0.3", "protocol": "IPv4"}]}]}`,
		want: []string{"br15.marathon.l4lb.thisdcos.directory:81/tcp v4 [198.19.0.11:31601 active]"},
	}, {
		name: "container network uses task addresses and the container port",
		app: `{"id": "/overlay", "networks": [{"mode": "container", "name": "dcos"}], "container": {"type": "MESOS", "portMappings": [
		    {"containerPort": 8080, "name": "http", "labels": {"VIP_0": "overlay:80"}},
		    {"containerPort": 9090, "hostPort": 0, "name": "metrics", "labels": {"VIP_1": "overlay:90"}}]},
		  "tasks": [{"id": "overlay.1", "host": "198.19.0.11", "ports": [31700], "state": "TASK_RUNNING",
		    "ipAddresses": [{"ipAddress": "198.19.1.5", "protocol": "IPv4"}]}]}`,
		want: []string{
			"overlay.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.1.5:8080 active]",
			"overlay.marathon.l4lb.thisdcos.directory:90/tcp v4 [198.19.0.11:31700 active]",
		},
	}, {
		name: "docker USER network",
		app: `{"id": "/user", "container": {"type": "DOCKER", "docker": {"network": "USER", "portMappings": [
		    {"containerPort": 5000, "labels": {"VIP_0": "user:5000"}}]}},
		  "tasks": [{"id": "user.1", "host": "198.19.0.11", "ports": [], "state": "TASK_RUNNING",
		    "ipAddresses": [{"ipAddress": "198.19.1.6", "protocol": "IPv4"}]}]}`,
		want: []string{"user.marathon.l4lb.thisdcos.directory:5000/tcp v4 [198.19.1.6:5000 active]"},
	}, {
		name: "IPv6 container network gets an IPv6 VIP only",
		app: `{"id": "/six", "networks": [{"mode": "container", "name": "dcos6"}], "container": {"portMappings": [
		    {"containerPort": 80, "labels": {"VIP_0": "six:80"}}]},
		  "tasks": [{"id": "six.1", "host": "198.19.0.11", "state": "TASK_RUNNING",
		    "ipAddresses": [{"ipAddress": "fd00:198:19::1:5", "protocol": "IPv6"}]}]}`,
		want: []string{"six.marathon.l4lb.thisdcos.directory:80/tcp v6 [[fd00:198:19::1:5]:80 active]"},
	}, {
		name: "dual stack task gives both families",
		app: `{"id": "/dual", "networks": [{"mode": "container", "name": "dual"}], "container": {"portMappings": [
		    {"containerPort": 80, "labels": {"VIP_0": "dual:80"}}]},
		  "tasks": [{"id": "dual.1", "host": "198.19.0.11", "state": "TASK_RUNNING",
		    "ipAddresses": [{"ipAddress": "198.19.1.7", "protocol": "IPv4"}, {"ipAddress": "fd00:198:19::1:7", "protocol": "IPv6"}]}]}`,
		want: []string{
			"dual.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.1.7:80 active]",
			"dual.marathon.l4lb.thisdcos.directory:80/tcp v6 [[fd00:198:19::1:7]:80 active]",
		},
	}, {
		name: "host name resolving to IPv6 only",
		app: `{"id": "/h6", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "h6:80"}}],
		  "tasks": [{"id": "h6.1", "host": "agent6.example", "ports": [31000], "state": "TASK_RUNNING"}]}`,
		want: []string{"h6.marathon.l4lb.thisdcos.directory:80/tcp v6 [[fd00:198:19::16]:31000 active]"},
	}, {
		name: "a host that does not resolve is a problem for that task only",
		app: `{"id": "/res", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "res:80"}}],
		  "tasks": [{"id": "res.1", "host": "nowhere.example", "ports": [31000], "state": "TASK_RUNNING"},
		            {"id": "res.2", "host": "agent1.example", "ports": [31001], "state": "TASK_RUNNING"}]}`,
		want:     []string{"res.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.0.11:31001 active]"},
		problems: []string{`app /res task res.1: resolve task host "nowhere.example"`},
	}, {
		name: "missing task fields",
		app: `{"id": "/miss", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "miss:80"}}, {"port": 0, "labels": {"VIP_1": "miss:81"}}],
		  "tasks": [{"id": "miss.1", "ports": [31000, 31001], "state": "TASK_RUNNING"},
		            {"id": "miss.2", "host": "198.19.0.11", "ports": [31002], "state": "TASK_RUNNING"},
		            {"id": "miss.3", "host": "198.19.0.11", "ports": [31003, 31004]},
		            {"id": "miss.4", "host": "198.19.0.11", "ports": [31005, 70000], "state": "TASK_RUNNING"},
		            {"id": "miss.5", "host": "198.19.0.11", "ports": "31006", "state": "TASK_RUNNING"},
		            {"id": "miss.6", "host": "198.19.0.12", "ports": [31007, 31008], "state": "TASK_RUNNING"}]}`,
		want: []string{
			"miss.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.0.11:31002 active, 198.19.0.11:31005 active, 198.19.0.12:31007 active]",
			"miss.marathon.l4lb.thisdcos.directory:81/tcp v4 [198.19.0.12:31008 active]",
		},
		problems: []string{
			"app /miss task miss.1: task has no host",
			"app /miss task miss.2: task has 1 host ports, port 1 of the app needs index 1",
			"app /miss task miss.3: task has no state",
			"app /miss task miss.4: host port 70000 out of range 1..65535",
			"app /miss task miss.5: malformed task",
		},
	}, {
		name: "container network task without addresses",
		app: `{"id": "/noip", "networks": [{"mode": "container", "name": "dcos"}], "container": {"portMappings": [
		    {"containerPort": 80, "labels": {"VIP_0": "noip:80"}}]},
		  "tasks": [{"id": "noip.1", "host": "198.19.0.11", "state": "TASK_RUNNING"},
		            {"id": "noip.2", "host": "198.19.0.11", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "bogus"}]}]}`,
		want: []string{"noip.marathon.l4lb.thisdcos.directory:80/tcp v4 []"},
		problems: []string{
			"app /noip task noip.1: task on a container network has no ipAddresses",
			`app /noip task noip.2: task ipAddress "bogus" is not an IP address`,
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s, problems := desired(t, tc.app)
			if got := vipsOf(s); !slices.Equal(got, tc.want) {
				t.Errorf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			assertProblems(t, problems, tc.problems)
		})
	}
}

// assertProblems checks that every problem is expected (by prefix) and every
// expected one is there.
func assertProblems(t *testing.T, problems []Problem, want []string) {
	t.Helper()
	got := problemsOf(problems)
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("missing problem %q in:\n%s", w, strings.Join(got, "\n"))
		}
	}
	for _, g := range got {
		if !slices.ContainsFunc(want, func(w string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("unexpected problem %q", g)
		}
	}
}

func TestDesiredHealth(t *testing.T) {
	app := `{"id": "/hc", "healthChecks": [{"protocol": "HTTP"}, {"protocol": "TCP"}],
	  "portDefinitions": [{"port": 0, "labels": {"VIP_0": "hc:80"}}],
	  "tasks": [
	    {"id": "all-alive", "host": "198.19.0.1", "ports": [1], "state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}, {"alive": true}]},
	    {"id": "no-result-yet", "host": "198.19.0.2", "ports": [2], "state": "TASK_RUNNING"},
	    {"id": "one-result-of-two", "host": "198.19.0.3", "ports": [3], "state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}]},
	    {"id": "one-failing", "host": "198.19.0.4", "ports": [4], "state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}, {"alive": false}]},
	    {"id": "killing-unhealthy", "host": "198.19.0.5", "ports": [5], "state": "TASK_KILLING", "healthCheckResults": [{"alive": false}]},
	    {"id": "killing-healthy", "host": "198.19.0.6", "ports": [6], "state": "TASK_KILLING", "healthCheckResults": [{"alive": true}, {"alive": true}]},
	    {"id": "unreachable", "host": "198.19.0.7", "ports": [7], "state": "TASK_UNREACHABLE"},
	    {"id": "staging", "host": "198.19.0.8", "ports": [8], "state": "TASK_STAGING"},
	    {"id": "starting", "host": "198.19.0.9", "ports": [9], "state": "TASK_STARTING"},
	    {"id": "finished", "host": "198.19.0.10", "ports": [10], "state": "TASK_FINISHED"},
	    {"id": "failed", "host": "198.19.0.11", "ports": [11], "state": "TASK_FAILED"},
	    {"id": "killed", "host": "198.19.0.12", "ports": [12], "state": "TASK_KILLED"},
	    {"id": "lost", "host": "198.19.0.13", "ports": [13], "state": "TASK_LOST"},
	    {"id": "gone", "host": "198.19.0.14", "ports": [14], "state": "TASK_GONE"},
	    {"id": "weird", "host": "198.19.0.15", "ports": [15], "state": "TASK_WEIRD"}
	  ]}`
	s, problems := desired(t, app)
	want := []string{"hc.marathon.l4lb.thisdcos.directory:80/tcp@198.18.x [" + strings.Join([]string{
		"198.19.0.1:1 active all-alive",
		"198.19.0.2:2 starting no-result-yet",
		"198.19.0.3:3 starting one-result-of-two",
		"198.19.0.4:4 unhealthy one-failing",
		"198.19.0.5:5 draining killing-unhealthy",
		"198.19.0.6:6 draining killing-healthy",
		"198.19.0.7:7 unhealthy unreachable",
	}, ", ") + "]"}
	got := summary(s)
	for i := range got {
		got[i] = strings.Replace(got[i], "@"+s.VIPs[i].Addr.String(), "@198.18.x", 1)
	}
	if !slices.Equal(got, want) {
		t.Errorf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	assertProblems(t, problems, []string{`app /hc task weird: unknown task state "TASK_WEIRD"`})
	if a := s.VIPs[0].Active(); len(a) != 1 || a[0].Task != "all-alive" {
		t.Errorf("Active() = %v", a)
	}

	// Without health checks a running task is active at once.
	s, _ = desired(t, `{"id": "/nohc", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "nohc:80"}}],
	  "tasks": [{"id": "t", "host": "198.19.0.1", "ports": [1], "state": "TASK_RUNNING"}]}`)
	if got := vipsOf(s); !slices.Equal(got, []string{"nohc.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.0.1:1 active]"}) {
		t.Errorf("VIPs = %v", got)
	}
}

func TestDesiredProblemsKeepTheRest(t *testing.T) {
	input := `{"apps": [
	  {"id": "/good", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "good:80"}}]},
	  {"id": "/badlabels", "portDefinitions": [
	    {"port": 0, "labels": {"VIP_0": "noport", "VIP_1": "big:70000", "VIP_2": "ok:81", "VIP_3": 42, "VIP_4": "zero:0"}},
	    {"port": 0, "protocol": "sctp", "labels": {"VIP_5": "sctp:82"}}]},
	  {"id": "/badapp", "portDefinitions": "nope"},
	  {"portDefinitions": []},
	  {"id": "/mismatch", "networks": [{"mode": "container"}], "container": {"portMappings": [{"containerPort": 80, "labels": {"VIP_0": "198.18.255.1:80"}}]},
	   "tasks": [{"id": "m.1", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "fd00:198:19::9"}]},
	             {"id": "m.2", "state": "TASK_RUNNING", "ipAddresses": [{"ipAddress": "198.19.0.9"}]}]},
	  {"id": "/good", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "shadow:80"}}]}
	]}`
	s, problems := desired(t, input)
	want := []string{
		"198.18.255.1:80/tcp v4 [198.19.0.9:80 active]",
		"good.marathon.l4lb.thisdcos.directory:80/tcp v4 []",
		"ok.marathon.l4lb.thisdcos.directory:81/tcp v4 []",
	}
	if got := vipsOf(s); !slices.Equal(got, want) {
		t.Errorf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	assertProblems(t, problems, []string{
		"app #3: app has no id",
		"app /badapp: malformed app",
		`app /badlabels label VIP_0: value "noport" has no port`,
		`app /badlabels label VIP_1: value "big:70000": port 70000 out of range`,
		"app /badlabels label VIP_3: label value is not a string: 42",
		`app /badlabels label VIP_4: value "zero:0": port 0 out of range`,
		`app /badlabels label VIP_5: unknown protocol "sctp"`,
		"app /good: duplicate app id",
		"app /mismatch task m.1: backend [fd00:198:19::9]:80 does not match the address family of IP VIP 198.18.255.1:80/tcp",
	})
}

func TestDesiredMergesAppsOfOneVIP(t *testing.T) {
	s, problems := desired(t, `[
	  {"id": "/blue", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "shop:80"}}],
	   "tasks": [{"id": "b.1", "host": "198.19.0.1", "ports": [1000], "state": "TASK_RUNNING"}]},
	  {"id": "/green", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "shop:80"}}],
	   "tasks": [{"id": "g.1", "host": "198.19.0.2", "ports": [2000], "state": "TASK_RUNNING"},
	             {"id": "g.0", "host": "198.19.0.1", "ports": [1000], "state": "TASK_KILLING"}]}
	]`)
	if len(problems) > 0 {
		t.Fatal(problemsOf(problems))
	}
	if len(s.VIPs) != 1 {
		t.Fatalf("VIPs: %v", summary(s))
	}
	v := s.VIPs[0]
	if !slices.Equal(v.Apps, []string{"/blue", "/green"}) {
		t.Errorf("apps = %v", v.Apps)
	}
	if got := vipsOf(s); !slices.Equal(got, []string{"shop.marathon.l4lb.thisdcos.directory:80/tcp v4 [198.19.0.1:1000 active, 198.19.0.2:2000 active]"}) {
		t.Errorf("VIPs = %v", got)
	}
}

func TestAllocationStableAndOrderIndependent(t *testing.T) {
	var apps []string
	for i := range 40 {
		apps = append(apps, fmt.Sprintf(`{"id": "/app%d", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "svc%d:80"}}]}`, i, i))
	}
	// An IP VIP inside the pool: the allocator must never hand it out.
	apps = append(apps, `{"id": "/ipvip", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.18.0.5:80"}}]}`)
	small := func(c *Config) { c.Pool4 = netip.MustParsePrefix("198.18.0.0/26") } // 62 usable: many collisions
	base, problems := desired(t, "["+strings.Join(apps, ",")+"]", small)
	if len(problems) > 0 {
		t.Fatal(problemsOf(problems))
	}
	addrs := map[string]netip.Addr{}
	seen := map[netip.Addr]string{}
	for _, v := range base.VIPs {
		if v.Name == "" {
			continue
		}
		addrs[v.Name] = v.Addr
		if other, dup := seen[v.Addr]; dup {
			t.Errorf("%s and %s share %s", v.Name, other, v.Addr)
		}
		seen[v.Addr] = v.Name
		switch v.Addr {
		case netip.MustParseAddr("198.18.0.0"), netip.MustParseAddr("198.18.0.63"), netip.MustParseAddr("198.18.0.5"):
			t.Errorf("%s got reserved address %s", v.Name, v.Addr)
		}
	}
	if len(addrs) != 40 {
		t.Fatalf("%d named VIPs, want 40", len(addrs))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		rng.Shuffle(len(apps), func(i, j int) { apps[i], apps[j] = apps[j], apps[i] })
		s, _ := desired(t, "["+strings.Join(apps, ",")+"]", small)
		for _, v := range s.VIPs {
			if v.Name != "" && addrs[v.Name] != v.Addr {
				t.Fatalf("order changed the address of %s: %s, was %s", v.Name, v.Addr, addrs[v.Name])
			}
		}
	}
}

func TestAllocationKeepsLiveAddresses(t *testing.T) {
	one := `[{"id": "/a", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "a:80"}}]}]`
	s1, _ := desired(t, one)
	a := s1.VIPs[0].Addr
	// Pretend the address was assigned earlier somewhere else in the pool:
	// it must be kept, not recomputed from the hash.
	moved := netip.MustParseAddr("198.18.7.7")
	s2, _ := desired(t, one, func(c *Config) {
		c.Previous = Allocations{V4: map[string]netip.Addr{"a.marathon.l4lb.thisdcos.directory": moved}}
	})
	if s2.VIPs[0].Addr != moved {
		t.Errorf("live VIP moved from %s to %s", moved, s2.VIPs[0].Addr)
	}
	// A previous address outside the pool is not kept.
	s3, _ := desired(t, one, func(c *Config) {
		c.Previous = Allocations{V4: map[string]netip.Addr{"a.marathon.l4lb.thisdcos.directory": netip.MustParseAddr("11.0.0.1")}}
	})
	if s3.VIPs[0].Addr != a {
		t.Errorf("address outside the pool kept: %s", s3.VIPs[0].Addr)
	}
	// A later IP VIP on a live named address is refused, the named VIP stays.
	withIP := `[{"id": "/a", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "a:80"}}]},
	            {"id": "/b", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.18.7.7:80"}}]}]`
	s4, problems := desired(t, withIP, func(c *Config) { c.Previous = s2.Allocations })
	if len(s4.VIPs) != 1 || s4.VIPs[0].Addr != moved {
		t.Errorf("VIPs = %v", summary(s4))
	}
	assertProblems(t, problems, []string{"app /b label VIP_0: IP VIP address 198.18.7.7 is in use by named VIP a.marathon.l4lb.thisdcos.directory"})
	// Names that are gone free their address.
	s5, _ := desired(t, `[]`, func(c *Config) { c.Previous = s2.Allocations })
	if len(s5.Allocations.V4) != 0 {
		t.Errorf("allocations of gone names kept: %v", s5.Allocations)
	}
}

func TestAllocationPoolExhausted(t *testing.T) {
	var apps []string
	for i := range 4 {
		apps = append(apps, fmt.Sprintf(`{"id": "/app%d", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "svc%d:80"}}]}`, i, i))
	}
	tiny := func(c *Config) { c.Pool4 = netip.MustParsePrefix("198.18.0.0/30") } // two usable addresses
	s, problems := desired(t, "["+strings.Join(apps, ",")+"]", tiny)
	if len(s.VIPs) != 2 {
		t.Errorf("VIPs = %v, want 2 of 4", summary(s))
	}
	if len(problems) != 2 {
		t.Fatalf("problems = %v, want 2", problemsOf(problems))
	}
	for _, p := range problems {
		if !strings.Contains(p.Reason, "pool exhausted") || p.Label != "VIP_0" || p.App == "" {
			t.Errorf("problem %v does not name the app, label and reason", p)
		}
	}
}

func TestAllocationsPersist(t *testing.T) {
	dir := t.TempDir()
	got, err := LoadAllocations(dir)
	if err != nil || len(got.V4) != 0 {
		t.Fatalf("empty dir: %v, %v", got, err)
	}
	a := Allocations{
		V4: map[string]netip.Addr{"a.marathon.l4lb.thisdcos.directory": netip.MustParseAddr("198.18.0.9")},
		V6: map[string]netip.Addr{"b.marathon.l4lb.thisdcos.directory": netip.MustParseAddr("fd00:198:18::9")},
	}
	if err := SaveAllocations(filepath.Join(dir, "sub"), a); err != nil {
		t.Fatal(err)
	}
	got, err = LoadAllocations(filepath.Join(dir, "sub"))
	if err != nil || !got.Equal(a) {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, allocFile), []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAllocations(dir); err == nil || !strings.Contains(err.Error(), allocFile) {
		t.Errorf("corrupt file: error %v does not name the file", err)
	}
}

func TestParseAppsShapes(t *testing.T) {
	for _, tc := range []struct {
		in      string
		apps    int
		wantErr bool
	}{
		{`{"apps": []}`, 0, false},
		{`{"apps": [{"id": "/a"}, {"id": "/b"}]}`, 2, false},
		{`{"app": {"id": "/a"}}`, 1, false},
		{`{"id": "/a"}`, 1, false},
		{`[{"id": "/a"}]`, 1, false},
		{``, 0, true},
		{`null`, 0, true},
		{`"x"`, 0, true},
		{`{"foo": 1}`, 0, true},
		{`{"apps": 3}`, 0, true},
		{`[1, {"id": "/ok"}]`, 1, false},
	} {
		apps, _, err := ParseApps([]byte(tc.in))
		if (err != nil) != tc.wantErr || len(apps) != tc.apps {
			t.Errorf("ParseApps(%s) = %d apps, error %v; want %d, error %v", tc.in, len(apps), err, tc.apps, tc.wantErr)
		}
	}
}

func TestMarathonFixtures(t *testing.T) {
	// Real Marathon responses (shared/fixtures/marathon) carry no VIP labels:
	// they must parse cleanly and give no VIP.
	for _, name := range []string{"marathon15_apps.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		apps, problems, err := ParseApps(data)
		if err != nil || len(problems) > 0 || len(apps) != 1 {
			t.Fatalf("%s: %d apps, %v, %v", name, len(apps), problems, err)
		}
		s, problems := Desired(apps, Config{Pool4: testPool4})
		if len(s.VIPs) != 0 || len(problems) != 0 {
			t.Errorf("%s: VIPs %v problems %v", name, summary(s), problems)
		}
		// The same app with a VIP label: the task's host and host port are
		// the backend, not its bridge address.
		apps[0].Container.PortMappings[0].Labels = map[string]string{"VIP_0": "pyweb:80"}
		s, problems = Desired(apps, Config{Pool4: testPool4})
		want := []string{"pyweb.marathon.l4lb.thisdcos.directory:80/tcp v4 [10.0.2.148:1565 active]"}
		if got := vipsOf(s); len(problems) > 0 || !slices.Equal(got, want) {
			t.Errorf("%s with a VIP label: %v, problems %v; want %v", name, got, problemsOf(problems), want)
		}
	}
}

// A large list takes the parallel path; it must give what the one-pass
// decoder gives, and refuse what it refuses.
func TestParseAppsParallel(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"version": "x", "apps": [`)
	for a := range parallelMin + 10 {
		if a > 0 {
			sb.WriteString(",\n")
		}
		fmt.Fprintf(&sb, `{"id": "app%d", "cmd": "echo \"}]\\\"", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "a%d:80"}}], "healthChecks": [{}], "tasks": [{"id": "t", "host": "198.19.0.1", "ports": [31000], "state": "TASK_RUNNING"}]}`, a, a)
	}
	sb.WriteString(`], "more": {"x": [1, 2]}}`)
	data := []byte(sb.String())
	apps, problems, err := ParseApps(data)
	if err != nil || len(problems) != 0 || len(apps) != parallelMin+10 {
		t.Fatalf("%d apps, %v, %v", len(apps), problems, err)
	}
	var list struct{ Apps []App }
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	for i := range apps {
		want := list.Apps[i]
		want.ID = "/" + want.ID
		if !reflect.DeepEqual(apps[i], want) {
			t.Fatalf("app %d: %+v, want %+v", i, apps[i], want)
		}
	}
	// Cut short after the list: not valid JSON, refused.
	if _, _, err := ParseApps(data[:len(data)-1]); err == nil {
		t.Error("a truncated list was accepted")
	}
	// One bad app among many: a problem naming it, the others kept.
	bad := strings.Replace(string(data), `"ports": [31000]`, `"ports": ["x"]`, 1)
	apps, problems, err = ParseApps([]byte(bad))
	if err != nil || len(apps) != parallelMin+10 || len(problems) != 1 || problems[0].App != "/app0" {
		t.Fatalf("one bad task: %d apps, %v, %v", len(apps), problems, err)
	}
}
