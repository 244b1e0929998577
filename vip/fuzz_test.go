package vip

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	fuzzLocal = &LocalNets{
		Own:       []netip.Prefix{netip.MustParsePrefix("198.19.0.1/32"), netip.MustParsePrefix("fd00:198:19::1/128")},
		Connected: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/24"), netip.MustParsePrefix("fd00:198:19::/112")},
	}
	fuzzRanges = []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24"), netip.MustParsePrefix("fd00:198:18::/64")}
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// FuzzDesired feeds arbitrary bytes through the parser and the model: no
// panic, and every VIP that comes out is well formed and traceable to a
// label (a valid name under the zone or an IP literal, a port in range, a
// known protocol, an address from the pool for named VIPs), and no IP VIP
// takes an address that the guard refuses (static rules, the agent's
// networks, a task host or backend, outside --ip-vip-ranges).
func FuzzDesired(f *testing.F) {
	for _, dir := range []string{"../examples", "testdata"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		for _, file := range files {
			if data, err := os.ReadFile(file); err == nil {
				f.Add(data)
			}
		}
	}
	for _, s := range []string{
		`{"id": "/a", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "a:80", "VIP_1": "[fd00:198:18::1]:53"}}],
		  "tasks": [{"id": "t", "host": "198.19.0.1", "ports": [31000], "state": "TASK_RUNNING"}]}`,
		`[{"id": "/b", "networks": [{"mode": "container"}], "container": {"portMappings": [{"containerPort": 80, "labels": {"vip": "b.c:1"}}]},
		  "tasks": [{"id": "t", "state": "TASK_KILLING", "ipAddresses": [{"ipAddress": "fd00:198:19::2"}]}]}]`,
		`{"apps": [{"id": "/c", "container": {"docker": {"network": "BRIDGE", "portMappings": [{"containerPort": 1, "labels": {"VIP_0": "_:65535"}}]}}}]}`,
		`{"apps": [{"id": "/d", "healthChecks": [{}], "portDefinitions": [{"labels": {"VIP_0": "198.18.255.1:1"}}],
		  "tasks": [{"id": "t", "host": "198.19.0.1", "ports": [1], "state": "TASK_RUNNING", "healthCheckResults": [{"alive": true}]}]}]}`,
		`{"id": "/ip", "portDefinitions": [{"port": 0, "protocol": "udp,tcp", "labels": {"VIP_0": "127.0.0.1:22", "VIP_1": "169.254.169.254:80",
		  "VIP_2": "224.0.0.1:80", "VIP_3": "0.0.0.0:80", "VIP_4": "[::1]:80", "VIP_5": "[fe80::1]:80", "VIP_6": "198.19.0.1:8080",
		  "VIP_7": "198.18.255.1:80", "VIP_8": "[fd00:198:18::ff:1]:80", "VIP_9": "::ffff:127.0.0.1:80", "VIP_10": "255.255.255.255:1",
		  "VIP_11": "198.19.0.2:80", "VIP_12": "[ff02::1]:80", "VIP_13": "198.20.0.1:80", "VIP_14": "[fd00:198:19::5]:80"}}],
		  "tasks": [{"id": "t", "host": "198.19.0.1", "ports": [31000], "state": "TASK_RUNNING"}]}`,
		`{"apps": [{"id": 5}]}`, `[[[]]]`, `{"app": null}`, `{"id": "/e", "portDefinitions": [{"labels": {"VIP_0": "::::"}}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		apps, _, err := ParseApps(data)
		if err != nil {
			if len(apps) != 0 {
				t.Fatalf("apps returned with an error: %v", err)
			}
			return
		}
		s, problems := Desired(apps, Config{Pool4: testPool4, Pool6: testPool6, Guard: Guard{Local: fuzzLocal}})
		ranged, _ := Desired(apps, Config{Pool4: testPool4, Pool6: testPool6, Guard: Guard{Ranges: fuzzRanges}})
		for _, v := range ranged.VIPs {
			if v.Name == "" && (Guard{Ranges: fuzzRanges}).RangeReason(v.Addr) != "" {
				t.Fatalf("IP VIP %v outside the ranges %v", v, fuzzRanges)
			}
		}
		hosts := map[netip.Addr]bool{}
		for _, v := range s.VIPs {
			for _, b := range v.Backends {
				hosts[b.Addr] = true
			}
		}
		for _, v := range s.VIPs {
			if v.Name != "" {
				continue
			}
			if r := StaticReason(v.Addr); r != "" {
				t.Fatalf("IP VIP %v kept: %s", v, r)
			}
			if r := fuzzLocal.Reason(v.Addr); r != "" {
				t.Fatalf("IP VIP %v kept: %s", v, r)
			}
			if hosts[v.Addr] {
				t.Fatalf("IP VIP %v kept at a backend's address", v)
			}
		}
		for _, p := range problems {
			if p.Reason == "" {
				t.Fatalf("problem without a reason: %+v", p)
			}
		}
		seen := map[Key]bool{}
		for _, v := range s.VIPs {
			if seen[v.Key()] {
				t.Fatalf("duplicate VIP key %v", v.Key())
			}
			seen[v.Key()] = true
			if v.Port == 0 || (v.Proto != TCP && v.Proto != UDP) || !v.Addr.IsValid() || len(v.Apps) == 0 {
				t.Fatalf("malformed VIP %+v", v)
			}
			if v.Name != "" {
				suffix := "." + FrameworkMarathon + "." + DefaultDomain
				if !strings.HasSuffix(v.Name, suffix) {
					t.Fatalf("name %q outside the zone", v.Name)
				}
				for _, l := range strings.Split(strings.TrimSuffix(v.Name, suffix), ".") {
					if !dnsLabel.MatchString(l) {
						t.Fatalf("name %q has invalid label %q", v.Name, l)
					}
				}
				if !testPool4.Contains(v.Addr) && !testPool6.Contains(v.Addr) {
					t.Fatalf("named VIP %s at %s outside the pools", v.Name, v.Addr)
				}
			}
			for _, b := range v.Backends {
				if b.Port == 0 || !b.Addr.IsValid() || b.Addr.Is4() != v.Addr.Is4() {
					t.Fatalf("malformed backend %+v of %v", b, v)
				}
			}
		}
	})
}
