package vip

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// netMode is how an app's tasks are reached.
type netMode uint8

const (
	modeHost      netMode = iota // host networking: task host and task ports
	modeBridge                   // Docker or UCR bridge: task host and host ports
	modeContainer                // container (virtual) networks: task addresses
)

func (m netMode) String() string {
	return [...]string{"host", "bridge", "container"}[m]
}

// appPort is one port of an app with what is needed to find its backends.
type appPort struct {
	Port
	mapping   bool // from a portMappings list, not from portDefinitions
	hostIndex int  // index into a task's ports, -1 when the port has no host port
}

// appPorts lists an app's ports in the order Marathon gives them, with the
// index of each port's host port in a task's "ports".
func appPorts(app App) ([]appPort, netMode) {
	mode := networkMode(app)
	var list []Port
	mapping := false
	switch {
	case app.Container != nil && len(app.Container.PortMappings) > 0:
		list, mapping = app.Container.PortMappings, true
	case app.Container != nil && app.Container.Docker != nil && len(app.Container.Docker.PortMappings) > 0:
		list, mapping = app.Container.Docker.PortMappings, true
	default:
		list = app.PortDefinitions
	}
	out := make([]appPort, 0, len(list))
	next := 0
	for _, p := range list {
		ap := appPort{Port: p, mapping: mapping, hostIndex: -1}
		// portDefinitions always have a host port; bridge mappings always do
		// (0 means "pick one"); a mapping on a container network has one only
		// when it names a hostPort.
		if !mapping || mode != modeContainer || p.HostPort != nil {
			ap.hostIndex = next
			next++
		}
		out = append(out, ap)
	}
	return out, mode
}

// networkMode reads the networking mode from Marathon >= 1.5 "networks", from
// the Docker network of older versions, or from "ipAddress".
func networkMode(app App) netMode {
	for _, n := range app.Networks {
		switch strings.ToLower(n.Mode) {
		case "container/bridge":
			return modeBridge
		case "container":
			return modeContainer
		case "host":
			return modeHost
		}
	}
	if app.Container != nil && app.Container.Docker != nil {
		switch strings.ToUpper(app.Container.Docker.Network) {
		case "BRIDGE":
			return modeBridge
		case "USER":
			return modeContainer
		case "HOST":
			return modeHost
		}
	}
	if app.IPAddress != nil {
		return modeContainer
	}
	return modeHost
}

// taskStatus is where a task stands for load balancing.
type taskStatus uint8

const (
	statusSkip taskStatus = iota // not started yet, or gone: not a backend
	statusActive
	statusDraining
	statusUnhealthy
	statusStarting
)

// terminal task states: the task is gone and its connections are flushed.
var terminalStates = map[string]bool{
	"TASK_FINISHED": true, "TASK_FAILED": true, "TASK_KILLED": true, "TASK_ERROR": true,
	"TASK_LOST": true, "TASK_DROPPED": true, "TASK_GONE": true, "TASK_GONE_BY_OPERATOR": true,
}

// status applies the health rules (DESIGN section 1). A TASK_RUNNING task
// is active when the app has no health checks, or when there is a result
// for every check and every result is alive; a result that is not alive
// makes it unhealthy. While results are missing, a task l4lb has seen with
// results keeps its last known state (known, after a Marathon leader
// failover results are empty for a while), and a new task is starting.
// TASK_KILLING drains whatever the health. TASK_UNREACHABLE and
// TASK_UNKNOWN are unhealthy. Tasks not yet running and tasks in a terminal
// state are not backends. fromResults says whether the state came from
// health results, to be remembered.
func status(t Task, healthChecks int, known BackendState, isKnown bool) (st taskStatus, fromResults bool, err error) {
	switch t.State {
	case "TASK_RUNNING":
		if healthChecks == 0 {
			return statusActive, false, nil
		}
		for _, r := range t.HealthCheckResults {
			if !r.Alive {
				return statusUnhealthy, true, nil
			}
		}
		if len(t.HealthCheckResults) >= healthChecks {
			return statusActive, true, nil
		}
		if isKnown {
			return statusOf(known), false, nil
		}
		return statusStarting, false, nil
	case "TASK_KILLING":
		return statusDraining, false, nil
	case "TASK_UNREACHABLE", "TASK_UNKNOWN":
		return statusUnhealthy, false, nil
	case "TASK_STAGING", "TASK_STARTING":
		return statusSkip, false, nil
	case "":
		return statusSkip, false, fmt.Errorf("task has no state")
	}
	if terminalStates[t.State] {
		return statusSkip, false, nil
	}
	return statusSkip, false, fmt.Errorf("unknown task state %q", t.State)
}

func statusOf(s BackendState) taskStatus {
	switch s {
	case Active:
		return statusActive
	case Draining:
		return statusDraining
	case Starting:
		return statusStarting
	}
	return statusUnhealthy
}

func (s taskStatus) backendState() BackendState {
	switch s {
	case statusDraining:
		return Draining
	case statusUnhealthy:
		return Unhealthy
	case statusStarting:
		return Starting
	}
	return Active
}

// liveTask is a task that is a backend, with its decoded fields.
type liveTask struct {
	*Task
	id    string // the task's id, or its position when it has none
	state BackendState
}

// Health is the last known state of tasks that were seen with health
// results: what a task keeps while its results are missing. It is sorted
// by task id (a slice, not a map: it is kept for every task).
type Health []TaskHealth

// TaskHealth is one task's last known state.
type TaskHealth struct {
	Task  string
	State BackendState
}

// Get returns the last known state of a task.
func (h Health) Get(task string) (BackendState, bool) {
	i, ok := slices.BinarySearchFunc(h, task, func(t TaskHealth, id string) int { return strings.Compare(t.Task, id) })
	if !ok {
		return 0, false
	}
	return h[i].State, true
}

// parseTasks drops tasks that are not backends, and reports the ones that
// did not decode or make no sense. known is the health memory of the app's
// previous read; the memory to keep for the next read is returned.
func parseTasks(app App, known Health) ([]liveTask, []Problem, Health) {
	out := make([]liveTask, 0, len(app.Tasks))
	var problems []Problem
	var next Health
	for i := range app.Tasks {
		t := &app.Tasks[i]
		id := t.ID
		if id == "" {
			id = fmt.Sprintf("#%d", i)
		}
		k, isKnown := known.Get(t.ID)
		st, fromResults, err := status(*t, len(app.HealthChecks), k, isKnown && t.ID != "")
		if err != nil {
			problems = append(problems, Problem{App: app.ID, Task: id, Reason: err.Error()})
			continue
		}
		if t.ID != "" && st != statusSkip && (fromResults || isKnown) {
			keep := st.backendState()
			if !fromResults {
				keep = k
			}
			next = append(next, TaskHealth{t.ID, keep})
		}
		if st == statusSkip {
			continue
		}
		out = append(out, liveTask{Task: t, id: id, state: st.backendState()})
	}
	slices.SortFunc(next, func(a, b TaskHealth) int { return strings.Compare(a.Task, b.Task) })
	next = slices.CompactFunc(next, func(a, b TaskHealth) bool { return a.Task == b.Task })
	return out, problems, slices.Clip(next)
}

// AppHosts returns the addresses of an app's task hosts, whatever the
// tasks' states, one per address (the first task at it), sorted by
// address: an IP VIP must not take a host's address (Build, Index). decls
// are the app's declarations (DeclareApp): an address that is one of their
// backends is left out, since the backend guards it already. Host names are
// looked up (the resolver caches them) only for apps that declare VIPs, so
// that other apps cost no lookups.
func AppHosts(app App, decls []Decl, r Resolver) []Host {
	resolve := len(decls) > 0
	if len(app.Tasks) == 0 {
		return nil
	}
	out := make([]Host, 0, len(app.Tasks)) // exact for the common case: a host per task
	for i := range app.Tasks {
		t := &app.Tasks[i]
		if t.Host == "" {
			continue
		}
		var addrs []netip.Addr
		if a, err := netip.ParseAddr(t.Host); err == nil {
			addrs = []netip.Addr{a}
		} else if resolve && r != nil {
			addrs, _ = r.LookupHost(t.Host) // a failure is the task's problem where it backs a VIP
		}
		for _, a := range addrs {
			if a = a.Unmap(); !a.IsValid() || a.Zone() != "" {
				continue
			}
			id := t.ID
			if id == "" {
				id = fmt.Sprintf("#%d", i)
			}
			name := t.Host
			if a.String() == name {
				name = "" // the address itself: the decoded string need not stay
			}
			out = append(out, Host{Addr: a, Name: name, Task: id, App: app.ID})
		}
	}
	// One per address, the first task's, sorted by address.
	slices.SortStableFunc(out, func(a, b Host) int { return a.Addr.Compare(b.Addr) })
	out = slices.CompactFunc(out, func(a, b Host) bool { return a.Addr == b.Addr })
	// An address that is also a backend of the app is a use already (a
	// backend's use guards it the same way): with host networking or port
	// mappings, that is every host, and keeping both would double the
	// memory the guard costs.
	if len(decls) > 0 {
		backends := map[netip.Addr]bool{}
		for _, d := range decls {
			for _, b := range d.Backends {
				backends[b.Addr] = true
			}
		}
		out = slices.DeleteFunc(out, func(h Host) bool { return backends[h.Addr] })
	}
	switch {
	case len(out) == 0:
		return nil
	case cap(out) > 2*len(out):
		return slices.Clone(out) // many tasks on few hosts: keep only what is used
	}
	return out
}

// portBackends finds the backends of port i for every live task:
//   - a port with a host port (host networking, bridge, or a mapping that
//     names a hostPort) is served at the task's host and its host port;
//   - a mapping on a container network without a host port is served at
//     each of the task's addresses and the container port.
func portBackends(app App, mode netMode, ports []appPort, i int, tasks []liveTask, r Resolver) ([]Backend, []Problem) {
	port := ports[i]
	out := make([]Backend, 0, len(tasks))
	var problems []Problem
	for _, t := range tasks {
		bad := func(format string, args ...any) {
			problems = append(problems, Problem{App: app.ID, Task: t.id, Reason: fmt.Sprintf(format, args...)})
		}
		if port.hostIndex >= 0 {
			if port.hostIndex >= len(t.Ports) {
				bad("task has %d host ports, port %d of the app needs index %d", len(t.Ports), i, port.hostIndex)
				continue
			}
			hp := t.Ports[port.hostIndex]
			if hp < 1 || hp > 65535 {
				bad("host port %d out of range 1..65535", hp)
				continue
			}
			addr, err := hostAddr(t.Host, r)
			if err != nil {
				bad("%v", err)
				continue
			}
			out = append(out, Backend{Addr: addr, Port: uint16(hp), State: t.state, Task: t.id, App: app.ID})
			continue
		}
		if port.ContainerPort == nil || *port.ContainerPort < 1 || *port.ContainerPort > 65535 {
			bad("port mapping %d on a %s network has no usable containerPort", i, mode)
			continue
		}
		if len(t.IPAddresses) == 0 {
			bad("task on a %s network has no ipAddresses", mode)
			continue
		}
		for _, ip := range t.IPAddresses {
			a, err := netip.ParseAddr(ip.IPAddress)
			if err != nil || a.Zone() != "" {
				bad("task ipAddress %q is not an IP address", ip.IPAddress)
				continue
			}
			out = append(out, Backend{Addr: a.Unmap(), Port: uint16(*port.ContainerPort), State: t.state, Task: t.id, App: app.ID})
		}
	}
	// In VIP order already, so that a VIP declared once shares this list.
	sortBackends(out)
	return out, problems
}

// HostAddr returns the address of a task's host (a Marathon task's host, a
// Mesos agent's hostname): the literal, or the first IPv4 address the
// resolver gives for a name (IPv6 when it has no IPv4).
func HostAddr(host string, r Resolver) (netip.Addr, error) { return hostAddr(host, r) }

// hostAddr returns a task host's address: the literal, or the first IPv4
// address the resolver gives for a name (IPv6 when it has no IPv4).
func hostAddr(host string, r Resolver) (netip.Addr, error) {
	if host == "" {
		return netip.Addr{}, fmt.Errorf("task has no host")
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Zone() == "" {
		return a.Unmap(), nil
	}
	if r == nil {
		return netip.Addr{}, fmt.Errorf("task host %q is not an address and no resolver is set", host)
	}
	addrs, err := r.LookupHost(host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve task host %q: %w", host, err)
	}
	var v6 netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		if a.Is4() {
			return a, nil
		}
		if !v6.IsValid() {
			v6 = a
		}
	}
	if v6.IsValid() {
		return v6, nil
	}
	return netip.Addr{}, fmt.Errorf("task host %q resolves to no address", host)
}
