package mesos

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/l4lb/l4lb/vip"
)

// stateStarting is the state of a running task with a health check and no
// result yet: no traffic, nothing to flush.
const stateStarting = vip.Starting

// FrameworkName returns a framework's name, or "" when it is not known.
func (m *Model) FrameworkName(id string) string { return m.frameworks[id] }

// Declarations returns the VIPs that task k declares, each with the task's
// backends, appended to dst; nothing when the task is not known. Problems
// name the framework (by name, or by id while the name is unknown) and the
// task. cfg gives the domain and the resolver of agent host names.
func (m *Model) Declarations(k TaskKey, cfg vip.Config, dst []vip.Decl) ([]vip.Decl, []Problem) {
	t := m.tasks[k]
	if t == nil {
		return dst, nil
	}
	domain := cfg.Domain
	if domain == "" {
		domain = vip.DefaultDomain
	}
	fwName, known := m.frameworks[k.Framework]
	fw := fwName
	if !known || fw == "" {
		fw = k.Framework
	}
	var problems []Problem
	bad := func(label, format string, args ...any) {
		problems = append(problems, Problem{Framework: fw, Task: k.Task, Label: label, Reason: fmt.Sprintf(format, args...)})
	}
	fwFrag := vip.DomainFrag(fwName)
	state := t.backendState()

	// The agent's address, resolved once per task and only when needed.
	var agentAddr netip.Addr
	var agentErr error
	agentDone := false
	agentAt := func() (netip.Addr, error) {
		if agentDone {
			return agentAddr, agentErr
		}
		agentDone = true
		a := m.agents[t.agent]
		switch {
		case a == nil:
			agentErr = fmt.Errorf("agent %s is not known", t.agent)
		default:
			agentAddr, agentErr = vip.HostAddr(a.hostname, cfg.Resolver)
			if agentErr != nil {
				agentErr = fmt.Errorf("agent %s: %w", t.agent, agentErr)
			}
		}
		return agentAddr, agentErr
	}
	spec := func(label Label) (vip.Spec, bool) {
		s, err := vip.ParseLabel(label.Value, fwFrag, domain)
		if err != nil {
			bad(label.Key, "%v", err)
			return s, false
		}
		if s.Name != "" && fwFrag == "" {
			if !known {
				bad(label.Key, "framework %s is not known (yet): its name is part of the VIP name", k.Framework)
			} else {
				bad(label.Key, "framework name %q has no usable characters for a VIP name", fwName)
			}
			return s, false
		}
		return s, true
	}
	if len(t.badAddrs) > 0 {
		bad("", "container address %q is not an IP address", t.badAddrs[0])
	}
	for _, p := range t.ports {
		proto, ok := parseProto(p.proto)
		if !ok {
			for _, l := range p.vips {
				bad(l.Key, "port %d (%s): protocol %q: want tcp or udp", p.number, p.name, p.proto)
			}
			continue
		}
		if p.number < 1 || p.number > 65535 {
			for _, l := range p.vips {
				bad(l.Key, "port %q: number %d out of range 1..65535", p.name, p.number)
			}
			continue
		}
		var backends []vip.Backend
		hostPort := uint32(0)
		if p.hostScope {
			hostPort = p.number
		} else if hp, ok := t.mappedHostPort(p.number, p.proto); ok {
			hostPort = hp
		}
		switch {
		case hostPort > 65535:
			// The VIP stays declared, without this task's backend.
			bad(p.vips[0].Key, "host port %d out of range 1..65535", hostPort)
		case hostPort > 0:
			if a, err := agentAt(); err != nil {
				bad(p.vips[0].Key, "%v", err)
			} else {
				backends = []vip.Backend{{Addr: a, Port: uint16(hostPort), State: state, Task: k.Task, App: fw}}
			}
		case len(t.addrs) == 0:
			if len(t.badAddrs) == 0 && !t.starting() {
				bad(p.vips[0].Key, "port %d has no host port and the task's latest status has no container address", p.number)
			}
		default:
			for _, a := range t.addrs {
				backends = append(backends, vip.Backend{Addr: a, Port: uint16(p.number), State: state, Task: k.Task, App: fw})
			}
		}
		for _, l := range p.vips {
			s, ok := spec(l)
			if !ok {
				continue
			}
			dst = append(dst, vip.Decl{Spec: s, Proto: proto, App: fw, Label: l.Key, Backends: backends})
		}
	}
	for _, l := range t.legacy {
		n, _ := strconv.Atoi(l.Key[len("VIP_PORT"):])
		scheme, rest, ok := strings.Cut(strings.TrimSpace(l.Value), "://")
		if !ok {
			bad(l.Key, "value %q: want tcp://HOST:PORT or udp://HOST:PORT", l.Value)
			continue
		}
		proto, ok := parseProto(scheme)
		if !ok {
			bad(l.Key, "value %q: scheme %q: want tcp or udp", l.Value, scheme)
			continue
		}
		s, ok := spec(Label{Key: l.Key, Value: rest})
		if !ok {
			continue
		}
		var backends []vip.Backend
		switch {
		case n >= len(t.hostPorts):
			bad(l.Key, "the task has %d host ports, the label needs port index %d", len(t.hostPorts), n)
		default:
			a, err := agentAt()
			if err != nil {
				bad(l.Key, "%v", err)
			} else {
				backends = []vip.Backend{{Addr: a, Port: uint16(t.hostPorts[n]), State: state, Task: k.Task, App: fw}}
			}
		}
		dst = append(dst, vip.Decl{Spec: s, Proto: proto, App: fw, Label: l.Key, Backends: backends})
	}
	return dst, problems
}

// AllDeclarations returns the declarations of every task, in key order.
func (m *Model) AllDeclarations(cfg vip.Config) ([]vip.Decl, []Problem) {
	var out []vip.Decl
	var problems []Problem
	for _, k := range m.Keys() {
		var p []Problem
		out, p = m.Declarations(k, cfg, out)
		problems = append(problems, p...)
	}
	return out, problems
}

// backendState applies the state rules of DESIGN section 9.
func (t *task) backendState() vip.BackendState {
	switch t.state {
	case "TASK_RUNNING":
		switch {
		case t.healthy == 1:
			return vip.Active
		case t.healthy == 0:
			return vip.Unhealthy
		case t.healthCheck:
			return stateStarting
		}
		return vip.Active
	case "TASK_KILLING":
		return vip.Draining
	}
	return vip.Unhealthy
}

// starting reports a task that may not have reported its addresses yet.
func (t *task) starting() bool {
	return t.state == "TASK_STAGING" || t.state == "TASK_STARTING"
}

// mappedHostPort finds the host port that a port mapping gives a container
// port of the same protocol (a mapping without a protocol is tcp).
func (t *task) mappedHostPort(number uint32, proto string) (uint32, bool) {
	want, _ := parseProto(proto)
	i := slices.IndexFunc(t.mappings, func(pm mapping) bool {
		got, ok := parseProto(pm.proto)
		return pm.container == number && pm.host != 0 && (ok && got == want || pm.proto == "")
	})
	if i < 0 {
		return 0, false
	}
	return t.mappings[i].host, true
}

// parseProto reads a discovery port's protocol: tcp or udp, any case.
func parseProto(s string) (vip.Proto, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tcp":
		return vip.TCP, true
	case "udp":
		return vip.UDP, true
	}
	return 0, false
}
