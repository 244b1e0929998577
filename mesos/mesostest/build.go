package mesostest

import "github.com/l4lb/l4lb/mesos"

// ID wraps a Mesos id.
func ID(v string) *mesos.ID { return &mesos.ID{Value: v} }

// Framework is a framework of GET_FRAMEWORKS.
func Framework(id, name string) mesos.Framework {
	return mesos.Framework{FrameworkInfo: mesos.FrameworkInfo{ID: ID(id), Name: name}}
}

// Agent is an agent of GET_AGENTS.
func Agent(id, hostname string) mesos.Agent {
	return mesos.Agent{AgentInfo: mesos.AgentInfo{ID: ID(id), Hostname: hostname}}
}

// Labels builds a label list from key, value pairs.
func Labels(kv ...string) *mesos.Labels {
	l := &mesos.Labels{}
	for i := 0; i+1 < len(kv); i += 2 {
		l.Labels = append(l.Labels, mesos.Label{Key: kv[i], Value: kv[i+1]})
	}
	return l
}

// Port is a discovery port with labels (key, value pairs).
func Port(number uint32, proto string, kv ...string) mesos.Port {
	return mesos.Port{Number: number, Name: "p", Protocol: proto, Labels: Labels(kv...)}
}

// Task is a task with discovery ports, in state, without statuses.
func Task(fw, id, agent, state string, ports ...mesos.Port) mesos.Task {
	return mesos.Task{
		Name: id, TaskID: mesos.ID{Value: id}, FrameworkID: mesos.ID{Value: fw}, AgentID: mesos.ID{Value: agent},
		State: state, Discovery: &mesos.DiscoveryInfo{Name: id, Ports: &mesos.Ports{Ports: ports}},
	}
}

// Status is a task status at timestamp, with container addresses.
func Status(task, state string, ts float64, healthy *bool, addrs ...string) mesos.TaskStatus {
	st := mesos.TaskStatus{TaskID: mesos.ID{Value: task}, State: state, Timestamp: ts, Healthy: healthy}
	if len(addrs) > 0 {
		ni := mesos.NetworkInfo{}
		for _, a := range addrs {
			ni.IPAddresses = append(ni.IPAddresses, mesos.IPAddress{IPAddress: a})
		}
		st.ContainerStatus = &mesos.ContainerStatus{NetworkInfos: []mesos.NetworkInfo{ni}}
	}
	return st
}

// Bool returns a pointer to b.
func Bool(b bool) *bool { return &b }

// Added is TASK_ADDED.
func Added(t mesos.Task) mesos.Event {
	return mesos.Event{Type: mesos.EventTaskAdded, TaskAdded: &mesos.TaskAdded{Task: t}}
}

// Updated is TASK_UPDATED of a task of fw: state and the latest status.
func Updated(fw, state string, st mesos.TaskStatus) mesos.Event {
	return mesos.Event{Type: mesos.EventTaskUpdated, TaskUpdated: &mesos.TaskUpdated{FrameworkID: mesos.ID{Value: fw}, Status: st, State: state}}
}

// FrameworkAdded is FRAMEWORK_ADDED.
func FrameworkAdded(id, name string) mesos.Event {
	return mesos.Event{Type: mesos.EventFrameworkAdded, FrameworkAdded: &mesos.FrameworkEvent{Framework: Framework(id, name)}}
}

// AgentAdded is AGENT_ADDED.
func AgentAdded(id, hostname string) mesos.Event {
	return mesos.Event{Type: mesos.EventAgentAdded, AgentAdded: &mesos.AgentAdded{Agent: Agent(id, hostname)}}
}

// State is a GET_STATE of tasks, frameworks and agents.
func State(tasks []mesos.Task, frameworks []mesos.Framework, agents []mesos.Agent) mesos.GetState {
	return mesos.GetState{
		GetTasks:      &mesos.GetTasks{Tasks: tasks},
		GetFrameworks: &mesos.GetFrameworks{Frameworks: frameworks},
		GetAgents:     &mesos.GetAgents{Agents: agents},
	}
}
