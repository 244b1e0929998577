package mesos_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/mesos"
	mt "github.com/l4lb/l4lb/mesos/mesostest"
	"github.com/l4lb/l4lb/vip"
)

const (
	fwKafka = "fw-0002"
	fwMar   = "fw-0000"
	agent1  = "S1"
	agent2  = "S2"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

type mapResolver map[string][]netip.Addr

func (r mapResolver) LookupHost(h string) ([]netip.Addr, error) {
	if a, ok := r[h]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

// show lists the declarations of every task as "vip backend state task"
// lines and the problems as "problem: ..." lines, sorted.
func show(m *mesos.Model, r vip.Resolver) string {
	decls, problems := m.AllDeclarations(vip.Config{Resolver: r})
	var lines []string
	for _, d := range decls {
		v := d.Spec.Name
		if v == "" {
			v = d.Spec.IP.String()
		}
		head := fmt.Sprintf("%s:%d/%s app=%s", v, d.Spec.Port, d.Proto, d.App)
		if len(d.Backends) == 0 {
			lines = append(lines, head+" -")
		}
		for _, b := range d.Backends {
			lines = append(lines, fmt.Sprintf("%s %s %s %s", head, b.AddrPort(), b.State, b.Task))
		}
	}
	for _, p := range problems {
		lines = append(lines, "problem: "+p.Error())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func expect(t *testing.T, m *mesos.Model, r vip.Resolver, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := show(m, r); got != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

func broker(id, agent string, port uint32) mesos.Task {
	return mt.Task(fwKafka, id, agent, "TASK_RUNNING", mt.Port(port, "tcp", "VIP_6e0f8a42", "broker:9092", "network-scope", "host"))
}

func baseState(tasks ...mesos.Task) *mesos.GetState {
	gs := mt.State(tasks,
		[]mesos.Framework{mt.Framework(fwKafka, "kafka"), mt.Framework(fwMar, "marathon")},
		[]mesos.Agent{mt.Agent(agent1, "198.19.0.11"), mt.Agent(agent2, "198.19.0.12")})
	return &gs
}

func TestSnapshotThenDeltas(t *testing.T) {
	m := mesos.NewModel()
	b0 := broker("kafka-0-broker", agent1, 1025)
	b0.Statuses = []mesos.TaskStatus{mt.Status("kafka-0-broker", "TASK_RUNNING", 1, nil, "198.19.0.11")}
	plain := mt.Task(fwKafka, "zk-0", agent1, "TASK_RUNNING", mt.Port(2181, "tcp"))
	ch := m.Apply(mesos.Event{Type: mesos.EventSubscribed, Subscribed: &mesos.Subscribed{GetState: baseState(b0, plain)}}, t0)
	if !ch.Full {
		t.Fatalf("SUBSCRIBED is not a full list: %+v", ch)
	}
	if m.Len() != 1 {
		t.Errorf("model holds %d tasks, want 1: a task without VIP labels is not kept", m.Len())
	}
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 active kafka-0-broker")

	ch = m.Apply(mt.Added(broker("kafka-1-broker", agent2, 1026)), t0)
	if ch.Full || !slices.Equal(ch.Tasks, []mesos.TaskKey{{Framework: fwKafka, Task: "kafka-1-broker"}}) {
		t.Errorf("TASK_ADDED changed %+v, want that task alone", ch)
	}
	expect(t, m, nil,
		"broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 active kafka-0-broker",
		"broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.12:1026 active kafka-1-broker")

	// TASK_KILLING drains, then a terminal state removes.
	ch = m.Apply(mt.Updated(fwKafka, "TASK_KILLING", mt.Status("kafka-0-broker", "TASK_KILLING", 2, nil)), t0)
	if len(ch.Tasks) != 1 {
		t.Errorf("TASK_UPDATED changed %v", ch.Tasks)
	}
	expect(t, m, nil,
		"broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 draining kafka-0-broker",
		"broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.12:1026 active kafka-1-broker")
	m.Apply(mt.Updated(fwKafka, "TASK_KILLED", mt.Status("kafka-0-broker", "TASK_KILLED", 3, nil)), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.12:1026 active kafka-1-broker")

	// An update of a task without VIPs, or never announced, changes nothing.
	if ch := m.Apply(mt.Updated(fwKafka, "TASK_FAILED", mt.Status("zk-0", "TASK_FAILED", 4, nil)), t0); len(ch.Tasks) != 0 {
		t.Errorf("update of an unknown task changed %v", ch.Tasks)
	}
}

func TestTaskAddedWithoutStatusesThenUpdated(t *testing.T) {
	m := mesos.NewModel()
	m.Reset(baseState(), t0)
	// A container network: no network-scope label, no host port.
	tk := mt.Task(fwKafka, "web-0", agent1, "TASK_STAGING", mt.Port(8080, "tcp", "VIP_0", "web:80"))
	m.Apply(mt.Added(tk), t0)
	expect(t, m, nil, "web.kafka.l4lb.thisdcos.directory:80/tcp app=kafka -")
	m.Apply(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("web-0", "TASK_RUNNING", 10, nil, "198.19.9.2")), t0)
	expect(t, m, nil, "web.kafka.l4lb.thisdcos.directory:80/tcp app=kafka 198.19.9.2:8080 active web-0")
	// A later status without container_status keeps the addresses (merge
	// field by field); an older status is ignored.
	m.Apply(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("web-0", "TASK_RUNNING", 11, nil)), t0)
	m.Apply(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("web-0", "TASK_RUNNING", 5, nil, "198.19.9.99")), t0)
	expect(t, m, nil, "web.kafka.l4lb.thisdcos.directory:80/tcp app=kafka 198.19.9.2:8080 active web-0")
}

func TestStatusAndStateDisagree(t *testing.T) {
	m := mesos.NewModel()
	m.Reset(baseState(broker("b", agent1, 1025)), t0)
	// The status says RUNNING (an old health update relayed late) but the
	// task's state is KILLING: trust the state.
	m.Apply(mt.Updated(fwKafka, "TASK_KILLING", mt.Status("b", "TASK_RUNNING", 5, mt.Bool(true))), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 draining b")
	// The status says FAILED but the state is RUNNING: the task stays.
	m.Apply(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("b", "TASK_FAILED", 6, nil)), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 active b")
}

func TestHealth(t *testing.T) {
	m := mesos.NewModel()
	tk := broker("b", agent1, 1025)
	tk.HealthCheck = &struct{}{}
	m.Reset(baseState(tk), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 starting b")
	m.Apply(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("b", "TASK_RUNNING", 1, mt.Bool(true))), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 active b")
	m.Apply(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("b", "TASK_RUNNING", 2, mt.Bool(false))), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 unhealthy b")
	m.Apply(mt.Updated(fwKafka, "TASK_UNREACHABLE", mt.Status("b", "TASK_UNREACHABLE", 3, nil)), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 unhealthy b")
	m.Apply(mt.Updated(fwKafka, "TASK_RUNNING", mt.Status("b", "TASK_RUNNING", 4, mt.Bool(true))), t0)
	// A new snapshot (master failover) whose statuses lack healthy keeps
	// the last known health: unknown is not unhealthy.
	m.Reset(baseState(tk), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 active b")
}

func TestTaskBeforeItsFramework(t *testing.T) {
	m := mesos.NewModel()
	gs := baseState()
	gs.GetFrameworks = nil
	m.Reset(gs, t0)
	tk := mt.Task("fw-new", "svc-0", agent1, "TASK_RUNNING",
		mt.Port(31000, "tcp", "VIP_0", "svc:80", "VIP_1", "198.18.255.7:80", "network-scope", "host"))
	m.Apply(mt.Added(tk), t0)
	expect(t, m, nil,
		"198.18.255.7:80/tcp app=fw-new 198.19.0.11:31000 active svc-0",
		"problem: framework fw-new label VIP_0 task svc-0: framework fw-new is not known (yet): its name is part of the VIP name")
	ch := m.Apply(mt.FrameworkAdded("fw-new", "/dev/svc"), t0)
	if !slices.Equal(ch.Tasks, []mesos.TaskKey{{Framework: "fw-new", Task: "svc-0"}}) {
		t.Errorf("FRAMEWORK_ADDED changed %v, want its task", ch.Tasks)
	}
	expect(t, m, nil,
		"198.18.255.7:80/tcp app=/dev/svc 198.19.0.11:31000 active svc-0",
		"svc.devsvc.l4lb.thisdcos.directory:80/tcp app=/dev/svc 198.19.0.11:31000 active svc-0")
	// The same name again changes nothing.
	if ch := m.Apply(mt.FrameworkAdded("fw-new", "/dev/svc"), t0); len(ch.Tasks) != 0 {
		t.Errorf("unchanged framework changed %v", ch.Tasks)
	}
	ch = m.Apply(mesos.Event{Type: mesos.EventFrameworkRemoved, FrameworkRemoved: &mesos.FrameworkRemoved{FrameworkInfo: mesos.FrameworkInfo{ID: mt.ID("fw-new")}}}, t0)
	if len(ch.Tasks) != 1 || m.Len() != 0 {
		t.Errorf("FRAMEWORK_REMOVED changed %v, model holds %d tasks", ch.Tasks, m.Len())
	}
}

func TestAgentHostnameIsADNSName(t *testing.T) {
	m := mesos.NewModel()
	gs := baseState(broker("b", "S9", 1025))
	gs.GetAgents.Agents = append(gs.GetAgents.Agents, mt.Agent("S9", "agent-9.example.internal"))
	m.Reset(gs, t0)
	r := mapResolver{"agent-9.example.internal": {netip.MustParseAddr("fd00:198:19::9"), netip.MustParseAddr("198.19.0.9")}}
	expect(t, m, r, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.9:1025 active b")
	expect(t, m, mapResolver{},
		"broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka -",
		`problem: framework kafka label VIP_6e0f8a42 task b: agent S9: resolve task host "agent-9.example.internal": no such host`)
	// The agent re-registers under another name: its tasks change.
	ch := m.Apply(mt.AgentAdded("S9", "198.19.0.99"), t0)
	if len(ch.Tasks) != 1 {
		t.Errorf("AGENT_ADDED with a new hostname changed %v", ch.Tasks)
	}
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.99:1025 active b")
	m.Apply(mesos.Event{Type: mesos.EventAgentRemoved, AgentRemoved: &mesos.AgentRemoved{AgentID: mesos.ID{Value: "S9"}}}, t0)
	if m.Len() != 0 {
		t.Errorf("AGENT_REMOVED left %d tasks", m.Len())
	}
}

func TestNetworkScopesAndPortMappings(t *testing.T) {
	m := mesos.NewModel()
	// Docker bridge: the port mapping gives the host port.
	bridge := mt.Task(fwMar, "bridge", agent1, "TASK_RUNNING", mt.Port(80, "tcp", "VIP_0", "/bridge:8080", "network-scope", "container"))
	bridge.Container = &mesos.ContainerInfo{Type: "DOCKER", Docker: &mesos.DockerInfo{Network: "BRIDGE",
		PortMappings: []mesos.PortMapping{{HostPort: 31080, ContainerPort: 80, Protocol: "tcp"}}}}
	bridge.Statuses = []mesos.TaskStatus{mt.Status("bridge", "TASK_RUNNING", 1, nil, "172.17.0.2")}
	// UCR on a CNI network with a port mapping in network_infos.
	ucr := mt.Task(fwMar, "ucr", agent2, "TASK_RUNNING", mt.Port(53, "udp", "VIP_0", "dns:53"))
	ucr.Container = &mesos.ContainerInfo{Type: "MESOS", NetworkInfos: []mesos.NetworkInfo{{Name: "mesos-bridge",
		PortMappings: []mesos.PortMapping{{HostPort: 31053, ContainerPort: 53, Protocol: "udp"}}}}}
	// A container network without host ports: the container's addresses.
	overlay := mt.Task(fwMar, "overlay", agent2, "TASK_RUNNING", mt.Port(8443, "tcp", "vip_0", "secure:443", "network-scope", "container"))
	overlay.Container = &mesos.ContainerInfo{Type: "MESOS", NetworkInfos: []mesos.NetworkInfo{{Name: "dcos"}}}
	overlay.Statuses = []mesos.TaskStatus{mt.Status("overlay", "TASK_RUNNING", 1, nil, "198.19.200.5", "fd00:198:19::200:5")}
	// Host networking.
	host := mt.Task(fwMar, "host", agent1, "TASK_RUNNING", mt.Port(31999, "TCP", "VIP_0", "hostnet:99", "network-scope", "HOST"))
	m.Reset(baseState(bridge, ucr, overlay, host), t0)
	expect(t, m, nil,
		"bridge.marathon.l4lb.thisdcos.directory:8080/tcp app=marathon 198.19.0.11:31080 active bridge",
		"dns.marathon.l4lb.thisdcos.directory:53/udp app=marathon 198.19.0.12:31053 active ucr",
		"secure.marathon.l4lb.thisdcos.directory:443/tcp app=marathon 198.19.200.5:8443 active overlay",
		"secure.marathon.l4lb.thisdcos.directory:443/tcp app=marathon [fd00:198:19::200:5]:8443 active overlay",
		"hostnet.marathon.l4lb.thisdcos.directory:99/tcp app=marathon 198.19.0.11:31999 active host")
}

func TestIPv6TaskAddresses(t *testing.T) {
	m := mesos.NewModel()
	tk := mt.Task(fwKafka, "v6", agent1, "TASK_RUNNING", mt.Port(9092, "tcp", "VIP_0", "broker6:9092", "VIP_1", "[fd00:198:18::7]:9092"))
	tk.Statuses = []mesos.TaskStatus{mt.Status("v6", "TASK_RUNNING", 1, nil, "fd00:198:19::42")}
	m.Reset(baseState(tk), t0)
	expect(t, m, nil,
		"broker6.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka [fd00:198:19::42]:9092 active v6",
		"fd00:198:18::7:9092/tcp app=kafka [fd00:198:19::42]:9092 active v6")
}

func TestLegacyVIPPortLabels(t *testing.T) {
	m := mesos.NewModel()
	tk := mt.Task(fwMar, "legacy", agent1, "TASK_RUNNING")
	tk.Discovery = nil
	tk.Labels = mt.Labels("VIP_PORT1", "udp://198.18.255.9:5000", "vip_port0", "tcp://legacy-svc:8080", "VIP_PORTX", "tcp://x:1", "VIP_PORT5", "tcp://far:1")
	tk.Resources = []mesos.Resource{{Name: "cpus"}, {Name: "ports", Ranges: &mesos.Ranges{Range: []mesos.Range{{Begin: 31000, End: 31001}}}}}
	m.Reset(baseState(tk), t0)
	expect(t, m, nil,
		"198.18.255.9:5000/udp app=marathon 198.19.0.11:31001 active legacy",
		"legacy-svc.marathon.l4lb.thisdcos.directory:8080/tcp app=marathon 198.19.0.11:31000 active legacy",
		"far.marathon.l4lb.thisdcos.directory:1/tcp app=marathon -",
		"problem: framework marathon label VIP_PORT5 task legacy: the task has 2 host ports, the label needs port index 5")
}

func TestBadPortsNameFrameworkAndTask(t *testing.T) {
	m := mesos.NewModel()
	tk := mt.Task(fwKafka, "bad", agent1, "TASK_RUNNING",
		mt.Port(0, "tcp", "VIP_0", "zero:80", "network-scope", "host"),
		mt.Port(80, "sctp", "VIP_0", "sctp:80", "network-scope", "host"),
		mt.Port(81, "tcp", "VIP_0", "noport", "network-scope", "host"),
		mt.Port(82, "tcp", "VIP_0", "good:82", "network-scope", "host"))
	m.Reset(baseState(tk), t0)
	expect(t, m, nil,
		"good.kafka.l4lb.thisdcos.directory:82/tcp app=kafka 198.19.0.11:82 active bad",
		`problem: framework kafka label VIP_0 task bad: port "p": number 0 out of range 1..65535`,
		`problem: framework kafka label VIP_0 task bad: port 80 (p): protocol "sctp": want tcp or udp`,
		`problem: framework kafka label VIP_0 task bad: value "noport" has no port: want NAME:PORT or IP:PORT`)
}

func TestRecoveredAgentsPartialSnapshot(t *testing.T) {
	m := mesos.NewModel()
	m.Reset(baseState(broker("b0", agent1, 1025), broker("b1", agent2, 1025)), t0)
	// Master failover: agent S2 has not re-registered; its task is missing.
	gs := baseState(broker("b0", agent1, 1025))
	gs.GetAgents.Agents = gs.GetAgents.Agents[:1]
	gs.GetAgents.RecoveredAgents = []mesos.AgentInfo{{ID: mt.ID(agent2), Hostname: "198.19.0.12"}}
	m.Apply(mesos.Event{Type: mesos.EventSubscribed, Subscribed: &mesos.Subscribed{GetState: gs}}, t0.Add(time.Minute))
	both := []string{
		"broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 active b0",
		"broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.12:1025 active b1",
	}
	expect(t, m, nil, both...)
	if h := m.Held(); len(h) != 1 || h[0].Task != "b1" {
		t.Errorf("held %v, want b1", h)
	}
	next, ok := m.NextExpiry()
	if !ok || !next.Equal(t0.Add(time.Minute+mesos.RecoveredHold)) {
		t.Errorf("hold ends %v %v", next, ok)
	}
	// A resubscription during the failover does not extend the hold.
	m.Apply(mesos.Event{Type: mesos.EventSubscribed, Subscribed: &mesos.Subscribed{GetState: gs}}, t0.Add(5*time.Minute))
	if next2, _ := m.NextExpiry(); !next2.Equal(next) {
		t.Errorf("hold moved from %v to %v", next, next2)
	}
	expect(t, m, nil, both...)
	if gone := m.Expire(t0.Add(5 * time.Minute)); len(gone) != 0 {
		t.Errorf("expired early: %v", gone)
	}
	// Ten minutes pass: the task goes.
	gone := m.Expire(next)
	if len(gone) != 1 || gone[0].Task != "b1" {
		t.Errorf("expired %v", gone)
	}
	expect(t, m, nil, both[0])
}

func TestRecoveredAgentReregisters(t *testing.T) {
	m := mesos.NewModel()
	m.Reset(baseState(broker("b0", agent1, 1025), broker("b1", agent2, 1025)), t0)
	gs := baseState(broker("b0", agent1, 1025))
	gs.GetAgents.Agents = gs.GetAgents.Agents[:1]
	gs.GetAgents.RecoveredAgents = []mesos.AgentInfo{{ID: mt.ID(agent2), Hostname: "198.19.0.12"}}
	m.Reset(gs, t0)
	ch := m.Apply(mt.AgentAdded(agent2, "198.19.0.12"), t0)
	if !ch.Relist {
		t.Errorf("a recovered agent with held tasks re-registered without asking for a relist: %+v", ch)
	}
	// The fresh state does not have b1: it is gone.
	m.Reset(baseState(broker("b0", agent1, 1025)), t0)
	expect(t, m, nil, "broker.kafka.l4lb.thisdcos.directory:9092/tcp app=kafka 198.19.0.11:1025 active b0")
	if _, ok := m.NextExpiry(); ok {
		t.Error("a hold is left")
	}
}
