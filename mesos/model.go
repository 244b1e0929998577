package mesos

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/l4lb/l4lb/vip"
)

// Problem is vip's problem: here it names the framework and the task.
type Problem = vip.Problem

// RecoveredHold is how long the tasks of an agent that a partial snapshot
// lists as recovered keep their last state, unless the agent re-registers
// first.
const RecoveredHold = 10 * time.Minute

// TaskKey identifies a task: its framework's id and its own id.
type TaskKey struct {
	Framework string
	Task      string
}

func (k TaskKey) String() string { return k.Framework + "/" + k.Task }

// Compare orders keys by framework, then task.
func (k TaskKey) Compare(o TaskKey) int {
	return cmp.Or(strings.Compare(k.Framework, o.Framework), strings.Compare(k.Task, o.Task))
}

// terminal task states: the task is gone.
var terminal = map[string]bool{
	"TASK_FINISHED": true, "TASK_FAILED": true, "TASK_KILLED": true, "TASK_LOST": true,
	"TASK_ERROR": true, "TASK_DROPPED": true, "TASK_GONE": true, "TASK_GONE_BY_OPERATOR": true,
}

// IsTerminal reports whether a task state means the task is gone.
func IsTerminal(state string) bool { return terminal[state] }

// Model is what l4lb knows of a Mesos cluster: frameworks' names, agents'
// hosts and the tasks that declare VIPs, with only what VIPs need. Tasks
// without a VIP label are not kept at all. A Model is not safe for
// concurrent use.
type Model struct {
	frameworks  map[string]string // id -> name
	agents      map[string]*agent
	tasks       map[TaskKey]*task
	byFramework map[string]map[TaskKey]struct{}
	byAgent     map[string]map[TaskKey]struct{}
}

type agent struct {
	hostname  string
	heldUntil time.Time // non-zero: listed as recovered; its tasks are held until then
}

// task is a task that declares at least one VIP.
type task struct {
	agent       string
	state       string
	healthCheck bool
	healthy     int8    // -1 unknown, 0 false, 1 true
	timestamp   float64 // of the latest status merged
	addrs       []netip.Addr
	badAddrs    []string
	ports       []port
	mappings    []mapping
	hostPorts   []uint64 // the task's host ports in order; kept for legacy labels only
	legacy      []Label  // VIP_PORT<n> task labels
	held        bool     // kept from before a partial snapshot
}

type port struct {
	number    uint32
	name      string
	proto     string
	hostScope bool
	vips      []Label
}

type mapping struct {
	host, container uint32
	proto           string
}

// NewModel returns an empty model.
func NewModel() *Model {
	return &Model{
		frameworks:  map[string]string{},
		agents:      map[string]*agent{},
		tasks:       map[TaskKey]*task{},
		byFramework: map[string]map[TaskKey]struct{}{},
		byAgent:     map[string]map[TaskKey]struct{}{},
	}
}

// Len returns the number of tasks that declare VIPs.
func (m *Model) Len() int { return len(m.tasks) }

// Keys returns the keys of every task that declares VIPs, sorted.
func (m *Model) Keys() []TaskKey {
	return slices.SortedFunc(maps.Keys(m.tasks), TaskKey.Compare)
}

// Change is what an event changed.
type Change struct {
	// Full: the whole model was replaced (a SUBSCRIBED): every task may have
	// changed.
	Full bool
	// Tasks whose VIP declarations may have changed, when not Full.
	Tasks []TaskKey
	// Relist asks for a new snapshot: an agent whose tasks are held since a
	// partial snapshot has re-registered, and only a fresh state says which
	// of its tasks still run.
	Relist bool
	// HeartbeatInterval is set by SUBSCRIBED.
	HeartbeatInterval time.Duration
}

// Apply applies one event at time now (for the recovered agents' hold).
func (m *Model) Apply(ev Event, now time.Time) Change {
	var c Change
	switch ev.Type {
	case EventSubscribed:
		if ev.Subscribed == nil {
			return c
		}
		if s := ev.Subscribed.HeartbeatIntervalSeconds; s != nil && *s > 0 && *s < 3600 {
			c.HeartbeatInterval = time.Duration(*s * float64(time.Second))
		}
		if ev.Subscribed.GetState != nil {
			m.Reset(ev.Subscribed.GetState, now)
			c.Full = true
		}
	case EventTaskAdded:
		if ev.TaskAdded != nil {
			c.Tasks = m.addTask(ev.TaskAdded.Task)
		}
	case EventTaskUpdated:
		if u := ev.TaskUpdated; u != nil {
			c.Tasks = m.updateTask(u)
		}
	case EventFrameworkAdded, EventFrameworkUpdated:
		fe := ev.FrameworkAdded
		if ev.Type == EventFrameworkUpdated {
			fe = ev.FrameworkUpdated
		}
		if fe != nil {
			c.Tasks = m.setFramework(fe.Framework.FrameworkInfo)
		}
	case EventFrameworkRemoved:
		if fr := ev.FrameworkRemoved; fr != nil && fr.FrameworkInfo.ID != nil {
			id := fr.FrameworkInfo.ID.Value
			delete(m.frameworks, id)
			for k := range m.byFramework[id] {
				c.Tasks = append(c.Tasks, k)
				m.removeTask(k)
			}
		}
	case EventAgentAdded:
		if aa := ev.AgentAdded; aa != nil && aa.Agent.AgentInfo.ID != nil {
			c.Tasks, c.Relist = m.setAgent(aa.Agent.AgentInfo)
		}
	case EventAgentRemoved:
		if ar := ev.AgentRemoved; ar != nil {
			delete(m.agents, ar.AgentID.Value)
			for k := range m.byAgent[ar.AgentID.Value] {
				c.Tasks = append(c.Tasks, k)
				m.removeTask(k)
			}
		}
	}
	slices.SortFunc(c.Tasks, TaskKey.Compare)
	return c
}

// Reset replaces the model with a state (GET_STATE, or SUBSCRIBED's) read at
// time now. When the state lists recovered agents it is partial: tasks
// known before on those agents, and missing from the state, are held with
// their last state until the agent re-registers or RecoveredHold passes.
func (m *Model) Reset(gs *GetState, now time.Time) {
	old := m.tasks
	oldAgents := m.agents
	*m = *NewModel()
	if gs == nil {
		return
	}
	if f := gs.GetFrameworks; f != nil {
		for _, fi := range f.RecoveredFrameworks {
			if fi.ID != nil {
				m.frameworks[fi.ID.Value] = fi.Name
			}
		}
		for _, fw := range f.Frameworks {
			if fi := fw.FrameworkInfo; fi.ID != nil {
				m.frameworks[fi.ID.Value] = fi.Name
			}
		}
	}
	if a := gs.GetAgents; a != nil {
		for _, ag := range a.Agents {
			if ai := ag.AgentInfo; ai.ID != nil {
				m.agents[ai.ID.Value] = &agent{hostname: ai.Hostname}
			}
		}
		for _, ai := range a.RecoveredAgents {
			if ai.ID == nil {
				continue
			}
			until := now.Add(RecoveredHold)
			// A hold never grows by resubscribing during the failover.
			if prev := oldAgents[ai.ID.Value]; prev != nil && !prev.heldUntil.IsZero() && prev.heldUntil.Before(until) {
				until = prev.heldUntil
			}
			m.agents[ai.ID.Value] = &agent{hostname: ai.Hostname, heldUntil: until}
		}
	}
	if t := gs.GetTasks; t != nil {
		for _, list := range [][]Task{t.Tasks, t.UnreachableTasks, t.OrphanTasks} {
			for _, tk := range list {
				m.addTask(tk)
			}
		}
	}
	for k, t := range old {
		if nt, ok := m.tasks[k]; ok {
			nt.remember(t)
			continue
		}
		if a := m.agents[t.agent]; a != nil && !a.heldUntil.IsZero() && now.Before(a.heldUntil) {
			t.held = true
			m.insert(k, t)
		}
	}
}

// Held returns the keys of the tasks held for recovered agents, sorted.
func (m *Model) Held() []TaskKey {
	var out []TaskKey
	for k, t := range m.tasks {
		if t.held {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, TaskKey.Compare)
	return out
}

// NextExpiry returns when the earliest hold of a recovered agent ends, and
// false when nothing is held.
func (m *Model) NextExpiry() (time.Time, bool) {
	var next time.Time
	for _, a := range m.agents {
		if !a.heldUntil.IsZero() && (next.IsZero() || a.heldUntil.Before(next)) {
			next = a.heldUntil
		}
	}
	return next, !next.IsZero()
}

// Expire ends the holds that are over at now: the held tasks of those agents
// are removed. It returns their keys.
func (m *Model) Expire(now time.Time) []TaskKey {
	var out []TaskKey
	for id, a := range m.agents {
		if a.heldUntil.IsZero() || now.Before(a.heldUntil) {
			continue
		}
		a.heldUntil = time.Time{}
		for k := range m.byAgent[id] {
			if m.tasks[k].held {
				out = append(out, k)
				m.removeTask(k)
			}
		}
	}
	slices.SortFunc(out, TaskKey.Compare)
	return out
}

func (m *Model) setFramework(fi FrameworkInfo) []TaskKey {
	if fi.ID == nil {
		return nil
	}
	id := fi.ID.Value
	if old, ok := m.frameworks[id]; ok && old == fi.Name {
		return nil
	}
	m.frameworks[id] = fi.Name
	return slices.Collect(maps.Keys(m.byFramework[id]))
}

func (m *Model) setAgent(ai AgentInfo) ([]TaskKey, bool) {
	id := ai.ID.Value
	a := m.agents[id]
	if a == nil {
		m.agents[id] = &agent{hostname: ai.Hostname}
		return slices.Collect(maps.Keys(m.byAgent[id])), false
	}
	relist := false
	if !a.heldUntil.IsZero() {
		// Re-registered: its tasks are no longer in doubt, but which of
		// them still run only a fresh state tells.
		a.heldUntil = time.Time{}
		for k := range m.byAgent[id] {
			if m.tasks[k].held {
				relist = true
				break
			}
		}
	}
	if a.hostname == ai.Hostname {
		return nil, relist
	}
	a.hostname = ai.Hostname
	return slices.Collect(maps.Keys(m.byAgent[id])), relist
}

// addTask stores a task that declares VIPs (replacing what was known of it)
// and returns its key; a task without VIP labels, or terminal, is dropped.
func (m *Model) addTask(tk Task) []TaskKey {
	k := TaskKey{Framework: tk.FrameworkID.Value, Task: tk.TaskID.Value}
	if k.Task == "" {
		return nil
	}
	t := newTask(tk)
	prev, had := m.tasks[k]
	if t == nil || terminal[tk.State] {
		if had {
			m.removeTask(k)
			return []TaskKey{k}
		}
		return nil
	}
	if had {
		t.remember(prev)
		m.removeTask(k)
	}
	m.insert(k, t)
	return []TaskKey{k}
}

func (m *Model) insert(k TaskKey, t *task) {
	m.tasks[k] = t
	if m.byFramework[k.Framework] == nil {
		m.byFramework[k.Framework] = map[TaskKey]struct{}{}
	}
	m.byFramework[k.Framework][k] = struct{}{}
	if m.byAgent[t.agent] == nil {
		m.byAgent[t.agent] = map[TaskKey]struct{}{}
	}
	m.byAgent[t.agent][k] = struct{}{}
}

func (m *Model) removeTask(k TaskKey) {
	t, ok := m.tasks[k]
	if !ok {
		return
	}
	delete(m.tasks, k)
	if s := m.byFramework[k.Framework]; s != nil {
		delete(s, k)
		if len(s) == 0 {
			delete(m.byFramework, k.Framework)
		}
	}
	if s := m.byAgent[t.agent]; s != nil {
		delete(s, k)
		if len(s) == 0 {
			delete(m.byAgent, t.agent)
		}
	}
}

// updateTask applies TASK_UPDATED: the state is the truth; the status is
// merged into the known task field by field when it is not older than what
// was merged before.
func (m *Model) updateTask(u *TaskUpdated) []TaskKey {
	k := TaskKey{Framework: u.FrameworkID.Value, Task: u.Status.TaskID.Value}
	t, ok := m.tasks[k]
	if !ok {
		return nil // a task without VIPs, or one never announced
	}
	state := u.State
	if state == "" {
		state = u.Status.State
	}
	if terminal[state] {
		m.removeTask(k)
		return []TaskKey{k}
	}
	t.state = state
	t.held = false
	t.merge(u.Status)
	return []TaskKey{k}
}

// newTask keeps what VIPs need of a task, or returns nil when it declares
// no VIP.
func newTask(tk Task) *task {
	t := &task{agent: tk.AgentID.Value, state: tk.State, healthCheck: tk.HealthCheck != nil, healthy: -1}
	if d := tk.Discovery; d != nil && d.Ports != nil {
		for _, p := range d.Ports.Ports {
			var pp port
			if p.Labels != nil {
				for _, l := range p.Labels.Labels {
					switch {
					case vip.IsLabelKey(l.Key):
						pp.vips = append(pp.vips, l)
					case strings.EqualFold(l.Key, "network-scope"):
						pp.hostScope = strings.EqualFold(strings.TrimSpace(l.Value), "host")
					}
				}
			}
			if len(pp.vips) == 0 {
				continue
			}
			pp.number, pp.name, pp.proto = p.Number, p.Name, p.Protocol
			t.ports = append(t.ports, pp)
		}
	}
	if tk.Labels != nil {
		for _, l := range tk.Labels.Labels {
			if isLegacyKey(l.Key) {
				t.legacy = append(t.legacy, l)
			}
		}
	}
	if len(t.ports) == 0 && len(t.legacy) == 0 {
		return nil
	}
	if c := tk.Container; c != nil {
		if c.Docker != nil {
			for _, pm := range c.Docker.PortMappings {
				t.mappings = append(t.mappings, mapping{host: pm.HostPort, container: pm.ContainerPort, proto: pm.Protocol})
			}
		}
		for _, ni := range c.NetworkInfos {
			for _, pm := range ni.PortMappings {
				t.mappings = append(t.mappings, mapping{host: pm.HostPort, container: pm.ContainerPort, proto: pm.Protocol})
			}
		}
	}
	if len(t.legacy) > 0 {
		for _, r := range tk.Resources {
			if r.Name != "ports" || r.Ranges == nil {
				continue
			}
			for _, rg := range r.Ranges.Range {
				// Bounded: a port range never holds more than 65536 ports.
				for p := rg.Begin; p <= rg.End && p <= 65535 && len(t.hostPorts) <= 65535; p++ {
					t.hostPorts = append(t.hostPorts, p)
				}
			}
		}
	}
	// The statuses in the order they happened: the latest wins field by
	// field.
	sts := slices.Clone(tk.Statuses)
	slices.SortStableFunc(sts, func(a, b TaskStatus) int { return cmp.Compare(a.Timestamp, b.Timestamp) })
	for _, st := range sts {
		t.merge(st)
	}
	return t
}

// remember keeps what was known of a task's health when a new version of
// it (a snapshot after a master failover) does not say: unknown health is
// not unhealthy, and never resets connections.
func (t *task) remember(prev *task) {
	if t.healthy < 0 && prev.healthy >= 0 {
		t.healthy = prev.healthy
	}
}

// merge takes the fields that a status sets, unless an even later status
// was merged already.
func (t *task) merge(st TaskStatus) {
	if st.Timestamp < t.timestamp {
		return
	}
	t.timestamp = st.Timestamp
	if st.Healthy != nil {
		t.healthy = 0
		if *st.Healthy {
			t.healthy = 1
		}
	}
	if cs := st.ContainerStatus; cs != nil {
		var addrs []netip.Addr
		var bad []string
		for _, ni := range cs.NetworkInfos {
			for _, ip := range ni.IPAddresses {
				a, err := netip.ParseAddr(ip.IPAddress)
				if err != nil || a.Zone() != "" {
					bad = append(bad, ip.IPAddress)
					continue
				}
				addrs = append(addrs, a.Unmap())
			}
		}
		if len(addrs) > 0 || len(bad) > 0 {
			t.addrs, t.badAddrs = addrs, bad
		}
	}
}

// isLegacyKey recognises VIP_PORT<n> task labels, any case.
func isLegacyKey(key string) bool {
	const prefix = "VIP_PORT"
	if len(key) <= len(prefix) || !strings.EqualFold(key[:len(prefix)], prefix) {
		return false
	}
	for _, c := range key[len(prefix):] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
