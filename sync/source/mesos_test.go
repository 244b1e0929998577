package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/mesos"
	mt "github.com/l4lb/l4lb/mesos/mesostest"
	"github.com/l4lb/l4lb/vip"
)

const (
	fwKafka = "fw-kafka"
	agentA  = "S1"
	agentB  = "S2"
)

// mesosSink records what a source delivers.
type mesosSink struct {
	mu       sync.Mutex
	groups   map[Key]Group
	replaces int
	updates  [][]Key // keys of each Update, changed then gone
	stale    []error
	fresh    int     // Stale(nil) calls
	broken   []error // OnStreamError
}

func newMesosSink() *mesosSink { return &mesosSink{groups: map[Key]Group{}} }

func (s *mesosSink) Replace(gs []Group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaces++
	s.groups = map[Key]Group{}
	for _, g := range gs {
		s.groups[g.Key] = g
	}
}

func (s *mesosSink) Update(changed []Group, gone []Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []Key
	for _, g := range changed {
		s.groups[g.Key] = g
		keys = append(keys, g.Key)
	}
	for _, k := range gone {
		delete(s.groups, k)
		keys = append(keys, "-"+k)
	}
	s.updates = append(s.updates, keys)
}

func (s *mesosSink) Stale(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.fresh++
		return
	}
	s.stale = append(s.stale, err)
}

// backends lists "vip backend state" of every group, sorted.
func (s *mesosSink) backends() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lines []string
	for _, g := range s.groups {
		for _, d := range g.Decls {
			for _, b := range d.Backends {
				lines = append(lines, fmt.Sprintf("%s:%d %s %s", d.Spec.Name, d.Spec.Port, b.AddrPort(), b.State))
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func (s *mesosSink) snapshot() (replaces int, updates [][]Key, stale int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.replaces, slices.Clone(s.updates), len(s.stale)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitBackends(t *testing.T, s *mesosSink, want ...string) {
	t.Helper()
	w := strings.Join(want, "\n")
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := s.backends()
		if got == w {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends:\n%s\nwant:\n%s", got, w)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func brokerTask(id, agent string, port uint32) mesos.Task {
	return mt.Task(fwKafka, id, agent, "TASK_RUNNING", mt.Port(port, "tcp", "VIP_6e0f", "broker:9092", "network-scope", "host"))
}

func kafkaState(tasks ...mesos.Task) mesos.GetState {
	return mt.State(tasks, []mesos.Framework{mt.Framework(fwKafka, "kafka")},
		[]mesos.Agent{mt.Agent(agentA, "198.19.0.11"), mt.Agent(agentB, "198.19.0.12")})
}

// startMesos runs a Mesos source against master until the test ends.
func startMesos(t *testing.T, url string, opts MesosOptions) (*Mesos, *mesosSink) {
	t.Helper()
	if opts.BackoffMin == 0 {
		opts.BackoffMin, opts.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	}
	sink := newMesosSink()
	opts.OnStreamError = func(err error, _ time.Duration) {
		sink.mu.Lock()
		sink.broken = append(sink.broken, err)
		sink.mu.Unlock()
	}
	m, err := NewMesos(url, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, vip.Config{}, sink) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return m, sink
}

const (
	b0 = "broker.kafka.l4lb.thisdcos.directory:9092 198.19.0.11:1025"
	b1 = "broker.kafka.l4lb.thisdcos.directory:9092 198.19.0.12:1026"
)

func TestMesosSnapshotThenDeltas(t *testing.T) {
	master := mt.Start(nil)
	defer master.Close()
	master.SetChunk(7) // every record cut across many chunks
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025)))
	_, sink := startMesos(t, master.URL, MesosOptions{})
	waitBackends(t, sink, b0+" active")
	if r, _, _ := sink.snapshot(); r != 1 {
		t.Fatalf("%d Replace, want 1", r)
	}

	// A new task without statuses, then its update: deltas of that task
	// alone, keyed by framework id and task id.
	master.Send(mt.Added(brokerTask("b1", agentB, 1026)))
	waitBackends(t, sink, b0+" active", b1+" active")
	tk := brokerTask("b2", agentB, 9092)
	tk.Discovery.Ports.Ports[0].Labels = mt.Labels("VIP_6e0f", "broker:9092")
	tk.State = "TASK_STAGING"
	master.Send(mt.Added(tk))
	master.Send(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("b2", "TASK_RUNNING", 3, nil, "198.19.5.2")))
	waitBackends(t, sink, b0+" active", b1+" active", "broker.kafka.l4lb.thisdcos.directory:9092 198.19.5.2:9092 active")
	_, updates, _ := sink.snapshot()
	for _, u := range updates {
		if len(u) != 1 {
			t.Errorf("an update delivered %v: want one task per event", u)
		}
	}
	if got := updates[len(updates)-1]; got[0] != Key(fwKafka+"/b2") {
		t.Errorf("last update %v, want %s/b2", got, fwKafka)
	}

	// TASK_KILLING drains; TASK_FAILED removes.
	master.Send(mt.Updated(fwKafka, "TASK_KILLING", mt.Status("b0", "TASK_KILLING", 4, nil)))
	master.Send(mt.Updated(fwKafka, "TASK_FAILED", mt.Status("b2", "TASK_FAILED", 4, nil)))
	waitBackends(t, sink, b0+" draining", b1+" active")
	master.Send(mt.Updated(fwKafka, "TASK_KILLED", mt.Status("b0", "TASK_KILLED", 5, nil)))
	waitBackends(t, sink, b1+" active")
	if r, _, st := sink.snapshot(); r != 1 || st != 0 || master.Subscribes() != 1 {
		t.Errorf("%d Replace, %d stale, %d subscriptions: want one clean stream", r, st, master.Subscribes())
	}
}

func TestMesosRedirectToLeaderAnd503(t *testing.T) {
	leader := mt.Start(nil)
	defer leader.Close()
	leader.SetState(kafkaState(brokerTask("b0", agentA, 1025)))
	leader.Unavailable(2) // no leader elected yet, twice
	standby := mt.Start(nil)
	defer standby.Close()
	standby.RedirectTo(leader.Addr())
	_, sink := startMesos(t, standby.URL, MesosOptions{})
	waitBackends(t, sink, b0+" active")
	if standby.Subscribes() != 0 || leader.Subscribes() != 1 {
		t.Errorf("subscriptions: standby %d, leader %d", standby.Subscribes(), leader.Subscribes())
	}
	_, _, stale := sink.snapshot()
	if stale != 2 {
		t.Errorf("%d stale reports, want 2 (one per 503)", stale)
	}
	sink.mu.Lock()
	for _, err := range sink.stale {
		if !strings.Contains(err.Error(), "503") {
			t.Errorf("stale error %v does not say 503", err)
		}
	}
	sink.mu.Unlock()
}

func TestMesosGarbageRecordKeepsLastGoodState(t *testing.T) {
	master := mt.Start(nil)
	defer master.Close()
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025)))
	_, sink := startMesos(t, master.URL, MesosOptions{})
	waitBackends(t, sink, b0+" active")
	// The master's state changes while the stream breaks on garbage: the
	// groups stay until the new SUBSCRIBED replaces them.
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025), brokerTask("b1", agentB, 1026)))
	master.SendRaw([]byte("7\nnotjson"))
	if err := master.WaitSubscribes(2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitBackends(t, sink, b0+" active", b1+" active")
	r, _, stale := sink.snapshot()
	if r != 2 || stale != 0 {
		t.Errorf("%d Replace, %d stale; want 2 and 0 (the next subscription followed at once)", r, stale)
	}
	sink.mu.Lock()
	if len(sink.broken) != 1 || !strings.Contains(sink.broken[0].Error(), "mesos event") {
		t.Errorf("stream errors: %v", sink.broken)
	}
	sink.mu.Unlock()
	// A framing error too.
	master.SendRaw([]byte("x\n"))
	if err := master.WaitSubscribes(3, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "third Replace", func() bool { r, _, _ := sink.snapshot(); return r == 3 })
	waitBackends(t, sink, b0+" active", b1+" active")
}

func TestMesosHeartbeatsStop(t *testing.T) {
	master := mt.Start(nil)
	defer master.Close()
	master.SetHeartbeat(200 * time.Millisecond) // the stream is dead after 600 ms of silence
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025)))
	_, sink := startMesos(t, master.URL, MesosOptions{})
	waitBackends(t, sink, b0+" active")
	time.Sleep(time.Second) // heartbeats keep it alive
	if n := master.Subscribes(); n != 1 {
		t.Fatalf("%d subscriptions while heartbeats flow, want 1", n)
	}
	master.StopHeartbeats()
	if err := master.WaitSubscribes(2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.broken) == 0 || !strings.Contains(sink.broken[0].Error(), "idle") {
		t.Errorf("stream errors: %v, want an idle timeout", sink.broken)
	}
	if len(sink.groups) != 1 {
		t.Errorf("groups lost: %v", sink.groups)
	}
}

func TestMesosRecoveredAgentsPartialSnapshot(t *testing.T) {
	master := mt.Start(nil)
	defer master.Close()
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025), brokerTask("b1", agentB, 1026)))
	m, sink := startMesos(t, master.URL, MesosOptions{})
	waitBackends(t, sink, b0+" active", b1+" active")

	// Master failover: the new leader has not heard from agent S2 yet.
	partial := kafkaState(brokerTask("b0", agentA, 1025))
	partial.GetAgents.Agents = partial.GetAgents.Agents[:1]
	partial.GetAgents.RecoveredAgents = []mesos.AgentInfo{{ID: mt.ID(agentB), Hostname: "198.19.0.12"}}
	master.SetState(partial)
	master.CloseStreams()
	if err := master.WaitSubscribes(2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "second Replace", func() bool { r, _, _ := sink.snapshot(); return r == 2 })
	waitBackends(t, sink, b0+" active", b1+" active") // b1 kept

	// S2 re-registers without b1 (it died meanwhile): a fresh state is
	// read, and b1 goes.
	m.relistEvery = 10 * time.Millisecond
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025)))
	master.Send(mt.AgentAdded(agentB, "198.19.0.12"))
	if err := master.WaitSubscribes(3, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitBackends(t, sink, b0+" active")
}

func TestMesosTokenAndLoad(t *testing.T) {
	master := mt.Start(nil)
	defer master.Close()
	master.RequireToken("s3cret")
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025)))
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("s3cret\n"), 0o600)
	m, err := NewMesos(master.URL, MesosOptions{TokenFile: tok})
	if err != nil {
		t.Fatal(err)
	}
	// Load without a subscription reads GET_STATE once.
	snap, err := m.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Decls) != 1 || snap.Decls[0].Spec.Name != "broker.kafka.l4lb.thisdcos.directory" {
		t.Errorf("decls %+v", snap.Decls)
	}
	bad, _ := NewMesos(master.URL, MesosOptions{})
	if _, err := bad.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("without the token: %v", err)
	}
	// The subscription sends the token too.
	_, sink := startMesos(t, master.URL, MesosOptions{TokenFile: tok})
	waitBackends(t, sink, b0+" active")
}

// TestFileRunMesosState: a file holding a Mesos state is a full list of
// groups by task, and a change of the file another full list.
func TestFileRunMesosState(t *testing.T) {
	data, err := os.ReadFile("../../examples/mesos-state.json")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, data, 0o644)
	f := NewFile(path)
	f.Poll = 10 * time.Millisecond
	sink := newMesosSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, vip.Config{}, sink) }()
	defer func() { cancel(); <-done }()
	waitBackends(t, sink,
		"broker.kafka.l4lb.thisdcos.directory:9092 198.19.0.11:1025 active",
		"broker.kafka.l4lb.thisdcos.directory:9092 198.19.0.12:1025 active",
		"myservice.marathon.l4lb.thisdcos.directory:6666 198.19.0.11:31001 active")
	sink.mu.Lock()
	var keys []string
	for k := range sink.groups {
		keys = append(keys, string(k))
	}
	sink.mu.Unlock()
	slices.Sort(keys)
	want := []string{
		"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0000/myservice.1d2f3c4b-7a8e-11ef-9c1e-0242ac110002",
		"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002/kafka-0-broker__8c3a5e1f-2b4d-4f6a-9c8e-7d1b2a3c4e5f",
		"b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002/kafka-1-broker__4a9d2c7e-1f3b-4e8a-b6d5-9c0e1f2a3b4c",
	}
	if !slices.Equal(keys, want) {
		t.Errorf("groups %v, want %v", keys, want)
	}
	// kafka-1 is killed: the file changes, the list follows.
	os.WriteFile(path, []byte(strings.Replace(string(data), `"name": "kafka-1-broker",`+"\n"+`          "task_id": {"value": "kafka-1-broker__4a9d2c7e-1f3b-4e8a-b6d5-9c0e1f2a3b4c"},
          "framework_id": {"value": "b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002"},
          "agent_id": {"value": "b7c9a3e2-5d1f-4c8a-9e2b-000000000001-S2"},
          "state": "TASK_RUNNING"`, `"name": "kafka-1-broker",`+"\n"+`          "task_id": {"value": "kafka-1-broker__4a9d2c7e-1f3b-4e8a-b6d5-9c0e1f2a3b4c"},
          "framework_id": {"value": "b7c9a3e2-5d1f-4c8a-9e2b-000000000001-0002"},
          "agent_id": {"value": "b7c9a3e2-5d1f-4c8a-9e2b-000000000001-S2"},
          "state": "TASK_KILLING"`, 1)), 0o644)
	waitBackends(t, sink,
		"broker.kafka.l4lb.thisdcos.directory:9092 198.19.0.11:1025 active",
		"broker.kafka.l4lb.thisdcos.directory:9092 198.19.0.12:1025 draining",
		"myservice.marathon.l4lb.thisdcos.directory:6666 198.19.0.11:31001 active")
}

// TestMesosFrameworkAfterItsTask: a task whose framework is not known yet
// has a problem and no named VIP; FRAMEWORK_ADDED delivers that task again.
func TestMesosFrameworkAfterItsTask(t *testing.T) {
	master := mt.Start(nil)
	defer master.Close()
	gs := kafkaState()
	gs.GetFrameworks = nil
	master.SetState(gs)
	_, sink := startMesos(t, master.URL, MesosOptions{})
	waitUntil(t, "the first list", func() bool { r, _, _ := sink.snapshot(); return r == 1 })
	master.Send(mt.Added(brokerTask("b0", agentA, 1025)))
	waitUntil(t, "the task's problem", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		g := sink.groups[Key(fwKafka+"/b0")]
		return len(g.Problems) == 1 && strings.Contains(g.Problems[0].Error(), "framework fw-kafka is not known")
	})
	master.Send(mt.FrameworkAdded(fwKafka, "kafka"))
	waitBackends(t, sink, b0+" active")
}

// TestMesosRelist: the pipeline's relist resubscribes only when the
// subscription is older than RelistEvery.
func TestMesosRelist(t *testing.T) {
	master := mt.Start(nil)
	defer master.Close()
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025)))
	m, sink := startMesos(t, master.URL, MesosOptions{RelistEvery: 300 * time.Millisecond})
	waitBackends(t, sink, b0+" active")
	m.Relist() // too early: ignored
	time.Sleep(100 * time.Millisecond)
	if n := master.Subscribes(); n != 1 {
		t.Errorf("%d subscriptions after an early relist, want 1", n)
	}
	master.SetState(kafkaState(brokerTask("b0", agentA, 1025), brokerTask("b1", agentB, 1026)))
	time.Sleep(300 * time.Millisecond)
	m.Relist()
	if err := master.WaitSubscribes(2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitBackends(t, sink, b0+" active", b1+" active")
}
