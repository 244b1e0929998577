package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files")

// TestRenderMesosState renders the Mesos example (a GET_STATE response with
// a Marathon task and two Kafka brokers) against a golden file: the Kafka
// VIP is broker.kafka.l4lb.thisdcos.directory:9092 with both brokers.
func TestRenderMesosState(t *testing.T) {
	var out, errb bytes.Buffer
	err := runMain(context.Background(), []string{"render", "--source", "file:../../examples/mesos-state.json",
		"--vip-pool", "198.18.0.0/16", "--vip-pool6", "fd00:198:18::/64", "--state-dir", t.TempDir()}, &out, &errb)
	if err != nil {
		t.Fatalf("render: %v\n%s", err, errb.String())
	}
	if errb.Len() > 0 {
		t.Errorf("problems on stderr:\n%s", errb.String())
	}
	const golden = "testdata/mesos-state.nft"
	if *updateGolden {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/l4lb -run RenderMesos -update)", err)
	}
	if out.String() != string(want) {
		t.Errorf("render differs from %s (run with -update if intended):\n%s", golden, out.String())
	}
	for _, s := range []string{
		`comment "broker.kafka.l4lb.thisdcos.directory:9092/tcp kafka"`,
		`comment "myservice.marathon.l4lb.thisdcos.directory:6666/tcp marathon"`,
		"198.19.0.11 . 1025", "198.19.0.12 . 1025", "198.19.0.11 . 31001",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("render lacks %s", s)
		}
	}
}

// TestRenderMarathonAndMesosMerge: the same VIP declared by a Marathon app
// (file of apps) and by a Mesos task (file of a Mesos state) is one VIP with
// the backends of both, not a conflict.
func TestRenderMarathonAndMesosMerge(t *testing.T) {
	dir := t.TempDir()
	apps := dir + "/apps.json"
	os.WriteFile(apps, []byte(`{"apps": [{"id": "/myservice", "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "/myservice:6666"}}],
	  "tasks": [{"id": "t1", "host": "198.19.0.21", "ports": [31500], "state": "TASK_RUNNING"}]}]}`), 0o644)
	var out, errb bytes.Buffer
	err := runMain(context.Background(), []string{"render", "--source", "file:" + apps, "--source", "file:../../examples/mesos-state.json",
		"--vip-pool", "198.18.0.0/16", "--state-dir", dir}, &out, &errb)
	if err != nil {
		t.Fatalf("render: %v\n%s", err, errb.String())
	}
	if errb.Len() > 0 {
		t.Errorf("problems on stderr:\n%s", errb.String())
	}
	if n := strings.Count(out.String(), "myservice.marathon.l4lb.thisdcos.directory:6666/tcp"); n != 1 {
		t.Errorf("myservice VIP appears %d times, want once:\n%s", n, out.String())
	}
	for _, s := range []string{"198.19.0.11 . 31001", "198.19.0.21 . 31500", `/myservice,marathon"`} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("render lacks %s:\n%s", s, out.String())
		}
	}
}
