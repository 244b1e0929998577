package main

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/sync/api"
	"github.com/l4lb/l4lb/vip"
)

func TestRenderDocumentationExample(t *testing.T) {
	var out, errb bytes.Buffer
	err := runMain(context.Background(), []string{"render", "--source", "file:../../examples/dcos-appc.json",
		"--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64", "--state-dir", t.TempDir()}, &out, &errb)
	if err != nil {
		t.Fatalf("render: %v\n%s", err, errb.String())
	}
	golden, err := os.ReadFile("../../nat/testdata/dcos-appc.nft")
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(golden) {
		t.Errorf("render differs from the nat golden file:\n%s", out.String())
	}
	for _, want := range []string{"myservice.marathon.l4lb.thisdcos.directory:6666/tcp", "myservice.marathon.l4lb.thisdcos.directory:7777/tcp"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("render lacks %s", want)
		}
	}
}

func TestRenderProblemsOnStderr(t *testing.T) {
	dir := t.TempDir()
	apps := filepath.Join(dir, "apps.json")
	os.WriteFile(apps, []byte(`[{"id": "/ok", "portDefinitions": [{"labels": {"VIP_0": "ok:80"}}]},
	  {"id": "/bad", "portDefinitions": [{"labels": {"VIP_0": "bad:0"}}]}]`), 0o644)
	var out, errb bytes.Buffer
	if err := runMain(context.Background(), []string{"render", "--source", "file:" + apps, "--state-dir", dir}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errb.String(), "problem: app /bad label VIP_0") || !strings.Contains(out.String(), "ok.marathon.l4lb.thisdcos.directory:80/tcp") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	t.Setenv("L4LB_VIP_POOL", "198.18.0.0/16")
	t.Setenv("L4LB_DNS_LISTEN", "")
	t.Setenv("L4LB_DNS_UPSTREAM", "198.19.0.53:53,198.19.0.54:53")
	t.Setenv("L4LB_RESYNC", "45s")
	var f runFlags
	fs := newFlagSet("run")
	f.register(fs)
	if err := parseFlags(fs, []string{"--source", "file:x", "--resync", "10s"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if f.pool4 != netip.MustParsePrefix("198.18.0.0/16") {
		t.Errorf("pool from env: %v", f.pool4)
	}
	if len(f.dnsListen) != 0 {
		t.Errorf("empty L4LB_DNS_LISTEN must turn DNS off: %v", f.dnsListen)
	}
	if len(f.dnsUpstreams) != 2 {
		t.Errorf("upstreams: %v", f.dnsUpstreams)
	}
	if f.resync.String() != "10s" {
		t.Errorf("the command line wins over the environment: %v", f.resync)
	}
	if len(f.dnsListen) != 0 || f.apiListen != "127.0.0.1:62080" || !f.flushUnhealthy {
		t.Errorf("defaults: %+v", f)
	}
	t.Setenv("L4LB_VIP_POOL", "not-a-prefix")
	fs = newFlagSet("run")
	f = runFlags{}
	f.register(fs)
	if err := parseFlags(fs, []string{"--source", "file:x"}, &bytes.Buffer{}); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "L4LB_VIP_POOL") {
		t.Errorf("bad env value: %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"bogus"}, {"render"}, {"render", "--source", "ftp:x"}, {"render", "--source", "file:x", "--vip-pool", "fd00::/64"}, {"run", "--source", "file:x", "extra"}} {
		if err := runMain(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

func TestPrintVIPs(t *testing.T) {
	var b bytes.Buffer
	printVIPs(&b, []api.VIP{
		{VIP: "web.marathon.l4lb.thisdcos.directory:80", Protocol: "tcp", IP: "198.18.0.7", Port: 80, Apps: []string{"/web"},
			Backend: []api.Backend{{IP: "198.19.0.11", Port: 1, State: "active", Task: "t1"}, {IP: "fd00:198:19::1", Port: 2, State: "draining", Task: "t2"}}},
		{VIP: "198.18.255.1:53", Protocol: "udp", IP: "198.18.255.1", Port: 53, Apps: []string{"/dns"}},
	})
	out := b.String()
	for _, want := range []string{"198.18.0.7:80", "198.19.0.11:1", "active", "[fd00:198:19::1]:2", "draining", "no backend: refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// render applies the static part of the IP VIP guard and --ip-vip-ranges
// (also from L4LB_IP_VIP_RANGES); it has no kernel, so the agent's own
// networks are not checked.
func TestRenderRefusesIPVIPs(t *testing.T) {
	dir := t.TempDir()
	apps := filepath.Join(dir, "apps.json")
	os.WriteFile(apps, []byte(`[{"id": "/hijack", "portDefinitions": [{"labels": {"VIP_0": "127.0.0.1:22", "VIP_1": "169.254.169.254:80",
	  "VIP_2": "198.19.1.2:8080", "VIP_3": "224.0.0.1:80", "VIP_4": "0.0.0.0:80", "VIP_5": "[::1]:80", "VIP_6": "[fe80::1]:80",
	  "VIP_7": "198.18.255.7:80", "VIP_8": "198.20.0.1:80"}}]},
	  {"id": "/web", "portDefinitions": [{"labels": {"VIP_0": "web:80"}}],
	   "tasks": [{"id": "w.1", "host": "198.19.1.2", "ports": [8080], "state": "TASK_RUNNING"}]}]`), 0o644)
	t.Setenv("L4LB_IP_VIP_RANGES", "198.18.255.0/24, fd00:198:18::/64")
	var out, errb bytes.Buffer
	if err := runMain(context.Background(), []string{"render", "--source", "file:" + apps, "--state-dir", dir}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"problem: app /hijack label VIP_0: IP VIP address 127.0.0.1 refused: loopback address",
		"problem: app /hijack label VIP_1: IP VIP address 169.254.169.254 refused: link-local address",
		"problem: app /hijack label VIP_2: IP VIP address 198.19.1.2 refused: the address of backend 198.19.1.2:8080 of task w.1 of app /web",
		"problem: app /hijack label VIP_3: IP VIP address 224.0.0.1 refused: multicast address",
		"problem: app /hijack label VIP_4: IP VIP address 0.0.0.0 refused: unspecified address",
		"problem: app /hijack label VIP_5: IP VIP address ::1 refused: loopback address",
		"problem: app /hijack label VIP_6: IP VIP address fe80::1 refused: link-local address",
		"problem: app /hijack label VIP_8: IP VIP address 198.20.0.1 refused: outside --ip-vip-ranges 198.18.255.0/24,fd00:198:18::/64",
	} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
	text := out.String()
	if !strings.Contains(text, "198.18.255.7 . tcp . 80") {
		t.Errorf("the legitimate IP VIP is not rendered:\n%s", text)
	}
	for _, bad := range []string{"127.0.0.1", "169.254.169.254", "198.19.1.2", "224.0.0.1", "0.0.0.0", "::1", "fe80::1", "198.20.0.1"} {
		if strings.Contains(text, bad+" . tcp") || strings.Contains(text, bad+"/") {
			t.Errorf("render holds refused %s:\n%s", bad, text)
		}
	}
}

func TestPoolsNotMeantForVIPs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--vip-pool", "127.0.0.0/16"}, "--vip-pool 127.0.0.0/16 overlaps 127.0.0.0/8: loopback address"},
		{[]string{"--vip-pool", "169.254.0.0/16"}, "link-local"},
		{[]string{"--vip-pool", "224.1.0.0/16"}, "multicast"},
		{[]string{"--vip-pool6", "fe80::/64"}, "--vip-pool6 fe80::/64 overlaps fe80::/10: link-local address"},
		{[]string{"--vip-pool6", "ff02::/64"}, "multicast"},
		{[]string{"--ip-vip-ranges", "198.18.255.0/24,nope"}, "ip-vip-ranges"},
	} {
		err := runMain(context.Background(), append([]string{"render", "--source", "file:x"}, c.args...), &bytes.Buffer{}, &bytes.Buffer{})
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want a usage error with %q", c.args, err, c.want)
		}
	}
	var m modelFlags
	m.pool4, m.pool6 = netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("fd00:198:18::/64")
	err := m.checkPoolsLocal(&vip.LocalNets{Connected: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/24")}})
	if err == nil || !strings.Contains(err.Error(), "--vip-pool 198.19.0.0/16 overlaps 198.19.0.0/24, a network this agent is directly connected to") {
		t.Errorf("pool over a connected network: %v", err)
	}
	if err := m.checkPoolsLocal(&vip.LocalNets{Connected: []netip.Prefix{netip.MustParsePrefix("198.20.0.0/24")}}); err != nil {
		t.Errorf("pool beside the connected networks: %v", err)
	}
}
