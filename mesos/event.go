// Package mesos reads the tasks of every framework from the Mesos master's
// operator API (DESIGN section 9): the RecordIO framing of its event stream,
// the events and GET_STATE with the field names of Mesos's master.proto and
// mesos.proto, a model of the cluster that keeps only what VIPs need, and
// the conversion of tasks to VIP declarations. Everything here is pure.
package mesos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Event types of mesos.master.Event that l4lb reads. Others are ignored.
const (
	EventSubscribed       = "SUBSCRIBED"
	EventTaskAdded        = "TASK_ADDED"
	EventTaskUpdated      = "TASK_UPDATED"
	EventFrameworkAdded   = "FRAMEWORK_ADDED"
	EventFrameworkUpdated = "FRAMEWORK_UPDATED"
	EventFrameworkRemoved = "FRAMEWORK_REMOVED"
	EventAgentAdded       = "AGENT_ADDED"
	EventAgentRemoved     = "AGENT_REMOVED"
	EventHeartbeat        = "HEARTBEAT"
)

// Event is a mesos.master.Event as JSON. Only the member of its type is set.
type Event struct {
	Type             string            `json:"type"`
	Subscribed       *Subscribed       `json:"subscribed,omitempty"`
	TaskAdded        *TaskAdded        `json:"task_added,omitempty"`
	TaskUpdated      *TaskUpdated      `json:"task_updated,omitempty"`
	FrameworkAdded   *FrameworkEvent   `json:"framework_added,omitempty"`
	FrameworkUpdated *FrameworkEvent   `json:"framework_updated,omitempty"`
	FrameworkRemoved *FrameworkRemoved `json:"framework_removed,omitempty"`
	AgentAdded       *AgentAdded       `json:"agent_added,omitempty"`
	AgentRemoved     *AgentRemoved     `json:"agent_removed,omitempty"`
}

// Subscribed is the first event of a subscription: the whole state.
type Subscribed struct {
	GetState                 *GetState `json:"get_state,omitempty"`
	HeartbeatIntervalSeconds *float64  `json:"heartbeat_interval_seconds,omitempty"`
}

// TaskAdded carries a whole task.
type TaskAdded struct {
	Task Task `json:"task"`
}

// TaskUpdated carries a task's latest status and its state. The state is
// the truth; the status is merged into what is known of the task.
type TaskUpdated struct {
	FrameworkID ID         `json:"framework_id"`
	Status      TaskStatus `json:"status"`
	State       string     `json:"state"`
}

// FrameworkEvent is FRAMEWORK_ADDED and FRAMEWORK_UPDATED.
type FrameworkEvent struct {
	Framework Framework `json:"framework"`
}

// FrameworkRemoved names the framework that is gone.
type FrameworkRemoved struct {
	FrameworkInfo FrameworkInfo `json:"framework_info"`
}

// AgentAdded carries a (re-)registered agent.
type AgentAdded struct {
	Agent Agent `json:"agent"`
}

// AgentRemoved names the agent that is gone.
type AgentRemoved struct {
	AgentID ID `json:"agent_id"`
}

// Response is a mesos.master.Response; l4lb reads GET_STATE.
type Response struct {
	Type     string    `json:"type"`
	GetState *GetState `json:"get_state,omitempty"`
}

// GetState is Response.GetState: tasks, frameworks and agents.
type GetState struct {
	GetTasks      *GetTasks      `json:"get_tasks,omitempty"`
	GetFrameworks *GetFrameworks `json:"get_frameworks,omitempty"`
	GetAgents     *GetAgents     `json:"get_agents,omitempty"`
}

// GetTasks lists tasks. Pending and completed tasks are not backends and
// are not read; unreachable tasks are (unhealthy), and so are orphan tasks
// (their framework has not re-registered since a master failover).
type GetTasks struct {
	Tasks            []Task `json:"tasks,omitempty"`
	UnreachableTasks []Task `json:"unreachable_tasks,omitempty"`
	OrphanTasks      []Task `json:"orphan_tasks,omitempty"`
}

// GetFrameworks lists frameworks; recovered ones are known from agents that
// re-registered after a failover, before the framework did.
type GetFrameworks struct {
	Frameworks          []Framework     `json:"frameworks,omitempty"`
	RecoveredFrameworks []FrameworkInfo `json:"recovered_frameworks,omitempty"`
}

// GetAgents lists agents. recovered_agents are agents of the previous
// master that have not re-registered with this one yet: their tasks are
// missing from GetTasks.
type GetAgents struct {
	Agents          []Agent     `json:"agents,omitempty"`
	RecoveredAgents []AgentInfo `json:"recovered_agents,omitempty"`
}

// ID is the {"value": ...} wrapper of Mesos ids.
type ID struct {
	Value string `json:"value"`
}

// Framework is GetFrameworks.Framework.
type Framework struct {
	FrameworkInfo FrameworkInfo `json:"framework_info"`
}

// FrameworkInfo names a framework.
type FrameworkInfo struct {
	ID   *ID    `json:"id,omitempty"`
	Name string `json:"name"`
}

// Agent is GetAgents.Agent.
type Agent struct {
	AgentInfo AgentInfo `json:"agent_info"`
}

// AgentInfo names an agent and its host.
type AgentInfo struct {
	ID       *ID    `json:"id,omitempty"`
	Hostname string `json:"hostname"`
}

// Task is the part of a mesos.Task that VIPs need.
type Task struct {
	Name        string         `json:"name"`
	TaskID      ID             `json:"task_id"`
	FrameworkID ID             `json:"framework_id"`
	AgentID     ID             `json:"agent_id"`
	State       string         `json:"state"`
	Statuses    []TaskStatus   `json:"statuses,omitempty"`
	Labels      *Labels        `json:"labels,omitempty"`
	Discovery   *DiscoveryInfo `json:"discovery,omitempty"`
	Container   *ContainerInfo `json:"container,omitempty"`
	HealthCheck *struct{}      `json:"health_check,omitempty"`
	Resources   []Resource     `json:"resources,omitempty"`
}

// TaskStatus is the part of a mesos.TaskStatus that VIPs need.
type TaskStatus struct {
	TaskID          ID               `json:"task_id"`
	AgentID         *ID              `json:"agent_id,omitempty"`
	State           string           `json:"state"`
	Timestamp       float64          `json:"timestamp"`
	Healthy         *bool            `json:"healthy,omitempty"`
	ContainerStatus *ContainerStatus `json:"container_status,omitempty"`
}

// ContainerStatus holds the addresses of a task's container.
type ContainerStatus struct {
	NetworkInfos []NetworkInfo `json:"network_infos,omitempty"`
}

// NetworkInfo is a network of a container: its addresses (in a status) or
// its port mappings (in a ContainerInfo).
type NetworkInfo struct {
	Name         string        `json:"name,omitempty"`
	IPAddresses  []IPAddress   `json:"ip_addresses,omitempty"`
	PortMappings []PortMapping `json:"port_mappings,omitempty"`
}

// IPAddress is NetworkInfo.IPAddress.
type IPAddress struct {
	Protocol  string `json:"protocol,omitempty"`
	IPAddress string `json:"ip_address"`
}

// PortMapping maps a host port to a container port.
type PortMapping struct {
	HostPort      uint32 `json:"host_port"`
	ContainerPort uint32 `json:"container_port"`
	Protocol      string `json:"protocol,omitempty"`
}

// ContainerInfo is the part of a task's container that holds port mappings.
type ContainerInfo struct {
	Type         string        `json:"type,omitempty"`
	Docker       *DockerInfo   `json:"docker,omitempty"`
	NetworkInfos []NetworkInfo `json:"network_infos,omitempty"`
}

// DockerInfo is ContainerInfo.DockerInfo.
type DockerInfo struct {
	Network      string        `json:"network,omitempty"`
	PortMappings []PortMapping `json:"port_mappings,omitempty"`
}

// DiscoveryInfo is where frameworks publish a task's ports.
type DiscoveryInfo struct {
	Name  string `json:"name,omitempty"`
	Ports *Ports `json:"ports,omitempty"`
}

// Ports is the {"ports": [...]} wrapper.
type Ports struct {
	Ports []Port `json:"ports"`
}

// Port is a discovery port: its number, protocol and labels (VIP_*,
// network-scope).
type Port struct {
	Number   uint32  `json:"number"`
	Name     string  `json:"name,omitempty"`
	Protocol string  `json:"protocol,omitempty"`
	Labels   *Labels `json:"labels,omitempty"`
}

// Labels is the {"labels": [...]} wrapper.
type Labels struct {
	Labels []Label `json:"labels"`
}

// Label is a key and a value.
type Label struct {
	Key   string `json:"key"`
	Value string `json:"value,omitempty"`
}

// Resource is the part of a resource that holds host ports.
type Resource struct {
	Name   string  `json:"name"`
	Ranges *Ranges `json:"ranges,omitempty"`
}

// Ranges is Value.Ranges.
type Ranges struct {
	Range []Range `json:"range"`
}

// Range is an inclusive range of values.
type Range struct {
	Begin uint64 `json:"begin"`
	End   uint64 `json:"end"`
}

// ErrDecode is wrapped by errors about records that are not JSON or not an
// event: they break the stream.
var ErrDecode = errors.New("mesos event")

// DecodeEvent decodes one record of the event stream. A record that is not
// JSON, or not an object with a type, is an error wrapping ErrDecode. A
// well-formed event in which a task does not decode keeps the other tasks:
// the culprits come back as problems naming the framework and the task.
func DecodeEvent(data []byte) (Event, []Problem, error) {
	var ev Event
	err := json.Unmarshal(data, &ev)
	if err == nil {
		if ev.Type == "" {
			return Event{}, nil, fmt.Errorf("%w: record has no type", ErrDecode)
		}
		return ev, nil, nil
	}
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &typeErr) {
		return Event{}, nil, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return decodeLenient(data)
}

// DecodeState decodes a document that holds a whole state: a GET_STATE
// response, a SUBSCRIBED event, or the bare GetState message. It reports
// whether data is one of those; the error is for one that does not decode.
func DecodeState(data []byte) (*GetState, []Problem, bool, error) {
	var probe struct {
		Type       string          `json:"type"`
		GetState   json.RawMessage `json:"get_state"`
		Subscribed *struct {
			GetState json.RawMessage `json:"get_state"`
		} `json:"subscribed"`
		GetTasks json.RawMessage `json:"get_tasks"`
	}
	if json.Unmarshal(data, &probe) != nil {
		return nil, nil, false, nil
	}
	var raw json.RawMessage
	switch {
	case probe.Type == "GET_STATE" && probe.GetState != nil:
		raw = probe.GetState
	case probe.Type == EventSubscribed && probe.Subscribed != nil && probe.Subscribed.GetState != nil:
		raw = probe.Subscribed.GetState
	case probe.Type == "" && probe.GetTasks != nil:
		raw = data
	default:
		return nil, nil, false, nil
	}
	gs, problems, err := decodeState(raw)
	return gs, problems, true, err
}

func decodeState(raw []byte) (*GetState, []Problem, error) {
	var gs GetState
	err := json.Unmarshal(raw, &gs)
	if err == nil {
		return &gs, nil, nil
	}
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &typeErr) {
		return nil, nil, fmt.Errorf("%w: get_state: %w", ErrDecode, err)
	}
	return decodeStateLenient(raw)
}

// The lenient path runs only for events that do not decode as a whole: it
// decodes tasks one by one and reports those that do not decode.
func decodeLenient(data []byte) (Event, []Problem, error) {
	var l struct {
		Event
		Subscribed *struct {
			GetState                 json.RawMessage `json:"get_state"`
			HeartbeatIntervalSeconds *float64        `json:"heartbeat_interval_seconds"`
		} `json:"subscribed"`
		TaskAdded *struct {
			Task json.RawMessage `json:"task"`
		} `json:"task_added"`
	}
	// Members whose type is wrong outside the tasks break the event.
	if err := json.Unmarshal(data, &l); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return Event{}, nil, fmt.Errorf("%w: %w", ErrDecode, err)
		}
		// Decode the top level alone to learn what is wrong where.
		var top struct {
			Type        string          `json:"type"`
			Subscribed  json.RawMessage `json:"subscribed"`
			TaskAdded   json.RawMessage `json:"task_added"`
			TaskUpdated json.RawMessage `json:"task_updated"`
		}
		if err2 := json.Unmarshal(data, &top); err2 != nil || top.Type == "" {
			return Event{}, nil, fmt.Errorf("%w: %w", ErrDecode, err)
		}
		if top.Subscribed == nil && top.TaskAdded == nil {
			// Another event with a member of the wrong type: report it,
			// and ignore the event.
			return Event{Type: top.Type}, []Problem{{Reason: fmt.Sprintf("%s event does not decode: %v", top.Type, err)}}, nil
		}
		return Event{}, nil, fmt.Errorf("%w: %s: %w", ErrDecode, top.Type, err)
	}
	ev := l.Event
	if ev.Type == "" {
		return Event{}, nil, fmt.Errorf("%w: record has no type", ErrDecode)
	}
	var problems []Problem
	if l.Subscribed != nil {
		ev.Subscribed = &Subscribed{HeartbeatIntervalSeconds: l.Subscribed.HeartbeatIntervalSeconds}
		if l.Subscribed.GetState != nil {
			gs, more, err := decodeState(l.Subscribed.GetState)
			if err != nil {
				return Event{}, nil, err
			}
			ev.Subscribed.GetState = gs
			problems = append(problems, more...)
		}
	}
	if l.TaskAdded != nil {
		t, p, ok := decodeTask(l.TaskAdded.Task)
		if !ok {
			return Event{Type: ev.Type}, []Problem{p}, nil
		}
		ev.TaskAdded = &TaskAdded{Task: t}
	}
	return ev, problems, nil
}

func decodeStateLenient(raw []byte) (*GetState, []Problem, error) {
	var l struct {
		GetState
		GetTasks *struct {
			Tasks            []json.RawMessage `json:"tasks"`
			UnreachableTasks []json.RawMessage `json:"unreachable_tasks"`
			OrphanTasks      []json.RawMessage `json:"orphan_tasks"`
		} `json:"get_tasks"`
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, nil, fmt.Errorf("%w: get_state: %w", ErrDecode, err)
	}
	gs := l.GetState
	var problems []Problem
	if l.GetTasks != nil {
		gs.GetTasks = &GetTasks{}
		for _, list := range []struct {
			in  []json.RawMessage
			out *[]Task
		}{{l.GetTasks.Tasks, &gs.GetTasks.Tasks}, {l.GetTasks.UnreachableTasks, &gs.GetTasks.UnreachableTasks}, {l.GetTasks.OrphanTasks, &gs.GetTasks.OrphanTasks}} {
			for _, rt := range list.in {
				t, p, ok := decodeTask(rt)
				if !ok {
					problems = append(problems, p)
					continue
				}
				*list.out = append(*list.out, t)
			}
		}
	}
	return &gs, problems, nil
}

// decodeTask decodes one task, or names it in a problem.
func decodeTask(raw []byte) (Task, Problem, bool) {
	var t Task
	err := json.Unmarshal(raw, &t)
	if err == nil {
		return t, Problem{}, true
	}
	var probe struct {
		TaskID      ID `json:"task_id"`
		FrameworkID ID `json:"framework_id"`
	}
	_ = json.Unmarshal(raw, &probe)
	task := probe.TaskID.Value
	if task == "" {
		task = fmt.Sprintf("%.40s", bytes.TrimSpace(raw))
	}
	return Task{}, Problem{Framework: probe.FrameworkID.Value, Task: task, Reason: "malformed task: " + err.Error()}, false
}
