// Package scenario builds the services a benchmark installs: N VIPs with B
// backends each, written as the Marathon apps l4lb reads and turned into
// l4lb's desired state with vip.Desired, so that every layout (l4lb and the
// kube-proxy-shaped ones) is generated from the same services and the same
// VIP addresses. Everything here is pure.
package scenario

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/l4lb/l4lb/vip"
)

// Address plan (DESIGN section 6): VIP pools in 198.18.0.0/16 and
// fd00:198:18::/64; backends that never receive traffic in 198.19.16.0 to
// 198.19.31.255, clear of the test topology's 198.19.0.0/24 and
// 198.19.1.0/24.
var (
	Pool4 = netip.MustParsePrefix("198.18.0.0/16")
	Pool6 = netip.MustParsePrefix("fd00:198:18::/64")

	fillerHosts = netip.MustParsePrefix("198.19.16.0/20")
)

// fillerPortBase is the first host port of filler backends.
const fillerPortBase = 10000

// Backend is one task behind a service.
type Backend struct {
	Addr netip.AddrPort
	// Unhealthy marks the task's health check result as failing (only for
	// services with HealthChecked).
	Unhealthy bool
}

// Service is one VIP with its tasks.
type Service struct {
	Name          string // the VIP label's host part, e.g. "probe"
	Port          uint16
	HealthChecked bool // the app has one health check; tasks report its result
	Backends      []Backend
}

// Spec describes a scenario: the named services that carry traffic, plus
// filler services up to Total VIPs, each with FillerBackends backends that
// never receive traffic.
type Spec struct {
	Total          int       // VIPs in all, Services included
	FillerBackends int       // backends of each filler VIP
	Services       []Service // real services, first
}

// FillerName is the name of filler VIP i.
func FillerName(i int) string { return fmt.Sprintf("svc%05d", i) }

// FillerPort is the VIP port of filler services.
const FillerPort = 80

// Fillers returns the number of filler VIPs of the spec.
func (s Spec) Fillers() int { return max(0, s.Total-len(s.Services)) }

// fillerBackend is backend j of filler VIP i: distinct host:port pairs,
// spread over 4096 hosts like tasks over agents.
func fillerBackend(i, j, perVIP int) netip.AddrPort {
	k := i*perVIP + j
	hosts := 1 << (32 - fillerHosts.Bits())
	a := fillerHosts.Addr().As4()
	off := uint32(k % hosts)
	a[2] += byte(off >> 8)
	a[3] += byte(off)
	return netip.AddrPortFrom(netip.AddrFrom4(a), uint16(fillerPortBase+k/hosts))
}

// AllServices returns the real services followed by the fillers.
func (s Spec) AllServices() []Service {
	out := slices.Clone(s.Services)
	for i := range s.Fillers() {
		svc := Service{Name: FillerName(i), Port: FillerPort}
		for j := range s.FillerBackends {
			svc.Backends = append(svc.Backends, Backend{Addr: fillerBackend(i, j, s.FillerBackends)})
		}
		out = append(out, svc)
	}
	return out
}

// Marathon JSON, only the fields l4lb reads (DESIGN section 1): host
// networking, one port definition with the VIP label, tasks with host and
// host port.
type app struct {
	ID              string        `json:"id"`
	PortDefinitions []portDef     `json:"portDefinitions"`
	HealthChecks    []healthCheck `json:"healthChecks,omitempty"`
	Tasks           []task        `json:"tasks"`
}

type portDef struct {
	Port     int               `json:"port"`
	Protocol string            `json:"protocol"`
	Labels   map[string]string `json:"labels"`
}

type healthCheck struct {
	Protocol string `json:"protocol"`
}

type task struct {
	ID                 string         `json:"id"`
	AppID              string         `json:"appId"`
	Host               string         `json:"host"`
	Ports              []int          `json:"ports"`
	State              string         `json:"state"`
	HealthCheckResults []healthResult `json:"healthCheckResults,omitempty"`
}

type healthResult struct {
	Alive bool `json:"alive"`
}

// AppID is the Marathon app id of a service.
func AppID(name string) string { return "/bench/" + name }

// TaskID is the id of a service's task i.
func TaskID(name string, i int) string { return fmt.Sprintf("bench_%s.t%d", name, i) }

// AppsJSON renders the scenario as what Marathon's GET
// /v2/apps?embed=apps.tasks returns: one app per service, one task per
// backend, all TASK_RUNNING.
func (s Spec) AppsJSON() ([]byte, error) {
	svcs := s.AllServices()
	apps := make([]app, 0, len(svcs))
	for _, svc := range svcs {
		id := AppID(svc.Name)
		a := app{ID: id, PortDefinitions: []portDef{{
			Port: int(svc.Port), Protocol: "tcp",
			Labels: map[string]string{"VIP_0": fmt.Sprintf("%s:%d", svc.Name, svc.Port)},
		}}, Tasks: []task{}}
		if svc.HealthChecked {
			a.HealthChecks = []healthCheck{{Protocol: "TCP"}}
		}
		for i, b := range svc.Backends {
			t := task{ID: TaskID(svc.Name, i), AppID: id, Host: b.Addr.Addr().String(),
				Ports: []int{int(b.Addr.Port())}, State: "TASK_RUNNING"}
			if svc.HealthChecked {
				t.HealthCheckResults = []healthResult{{Alive: !b.Unhealthy}}
			}
			a.Tasks = append(a.Tasks, t)
		}
		apps = append(apps, a)
	}
	data, err := json.Marshal(struct {
		Apps []app `json:"apps"`
	}{apps})
	if err != nil {
		return nil, fmt.Errorf("encode apps: %w", err)
	}
	return data, nil
}

// State is the scenario as l4lb sees it.
type State struct {
	vip.State
	AppsJSON []byte
	byName   map[string]int // VIP name (without domain) -> index in VIPs
}

// Build renders the apps and computes l4lb's desired state from them, with
// the benchmark pools and no earlier allocations (what a daemon with an
// empty state directory computes). Any problem is an error: a benchmark
// scenario must be clean.
func (s Spec) Build() (*State, error) {
	data, err := s.AppsJSON()
	if err != nil {
		return nil, err
	}
	apps, problems, err := vip.ParseApps(data)
	if err != nil {
		return nil, fmt.Errorf("parse generated apps: %w", err)
	}
	st, more := vip.Desired(apps, vip.Config{Pool4: Pool4, Pool6: Pool6})
	problems = append(problems, more...)
	if len(problems) > 0 {
		return nil, fmt.Errorf("generated apps have %d problems, first: %v", len(problems), problems[0])
	}
	if len(st.VIPs) != max(s.Total, len(s.Services)) {
		return nil, fmt.Errorf("generated %d VIPs, want %d", len(st.VIPs), max(s.Total, len(s.Services)))
	}
	out := &State{State: st, AppsJSON: data, byName: make(map[string]int, len(st.VIPs))}
	for i, v := range st.VIPs {
		out.byName[ShortName(v)] = i
	}
	return out, nil
}

// ShortName is a VIP's name without the l4lb domain: the service name.
func ShortName(v vip.VIP) string {
	for i := range len(v.Name) {
		if v.Name[i] == '.' {
			return v.Name[:i]
		}
	}
	return v.Name
}

// VIP returns the VIP of the service called name.
func (st *State) VIP(name string) (vip.VIP, bool) {
	i, ok := st.byName[name]
	if !ok {
		return vip.VIP{}, false
	}
	return st.VIPs[i], true
}

// Ordered returns the VIPs with the one named middle moved to the middle of
// the list. kube-proxy's iptables mode walks one rule per service in
// KUBE-SERVICES, in the order of a Go map, so a service sits on average in
// the middle: that is where the measured VIP goes.
func (st *State) Ordered(middle string) []vip.VIP {
	out := slices.Clone(st.VIPs)
	i, ok := st.byName[middle]
	if !ok || len(out) < 2 {
		return out
	}
	v := out[i]
	out = slices.Delete(out, i, i+1)
	mid := len(out) / 2
	return slices.Insert(out, mid, v)
}
