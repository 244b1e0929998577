package vip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
)

// App is the part of a Marathon app definition that l4lb reads. Unknown fields
// are ignored. ParseApps drops a task or a label that does not decode (and
// reports it), so that the rest of the app is kept.
type App struct {
	ID              string        `json:"id"`
	PortDefinitions []Port        `json:"portDefinitions"`
	Container       *Container    `json:"container"`
	Networks        []Network     `json:"networks"`
	IPAddress       *AppIPAddress `json:"ipAddress"`
	HealthChecks    []HealthCheck `json:"healthChecks"`
	Tasks           []Task        `json:"tasks"`
}

// HealthCheck is one of an app's health checks: only their number matters
// (a task is active once every check has a result), so nothing of it is
// kept.
type HealthCheck struct{}

// Port is an entry of portDefinitions or of a portMappings list.
type Port struct {
	Port          *int              `json:"port"`
	ContainerPort *int              `json:"containerPort"`
	HostPort      *int              `json:"hostPort"`
	ServicePort   *int              `json:"servicePort"`
	Protocol      string            `json:"protocol"`
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels"`
}

// Container is an app's container block.
type Container struct {
	Type         string  `json:"type"`
	Docker       *Docker `json:"docker"`
	PortMappings []Port  `json:"portMappings"`
}

// Docker is the Docker part of a container block (Marathon < 1.5 keeps the
// network mode and port mappings here).
type Docker struct {
	Network      string `json:"network"`
	PortMappings []Port `json:"portMappings"`
}

// Network is an entry of an app's networks (Marathon >= 1.5).
type Network struct {
	Mode string `json:"mode"`
	Name string `json:"name"`
}

// AppIPAddress is the IP-per-task request of Marathon < 1.5.
type AppIPAddress struct {
	NetworkName string `json:"networkName"`
}

// Task is the part of a Marathon task that l4lb reads.
type Task struct {
	ID                 string              `json:"id"`
	AppID              string              `json:"appId"`
	Host               string              `json:"host"`
	Ports              []int               `json:"ports"`
	IPAddresses        []TaskIPAddress     `json:"ipAddresses"`
	State              string              `json:"state"`
	HealthCheckResults []HealthCheckResult `json:"healthCheckResults"`
}

// TaskIPAddress is one address of a task on a container network.
type TaskIPAddress struct {
	IPAddress string `json:"ipAddress"`
	Protocol  string `json:"protocol"`
}

// HealthCheckResult is the latest result of one health check of a task.
type HealthCheckResult struct {
	Alive bool `json:"alive"`
}

// ParseApps decodes what Marathon's GET /v2/apps?embed=apps.tasks returns
// ({"apps": [...]}), a single app as GET /v2/apps/{id} returns it
// ({"app": {...}}), a bare app object, or a JSON array of apps. The error is
// for input that is none of these; an app that does not decode is reported as
// a problem and skipped, and the others are returned.
func ParseApps(data []byte) ([]App, []Problem, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, nil, errors.New("empty input: want a Marathon app, an array of apps or {\"apps\": [...]}")
	}
	// Fast path: a well-formed list decodes in one pass. Anything else
	// (an app that does not decode, another shape) takes the slow path,
	// which isolates the culprits.
	// A large list is cut into its elements and decoded on every CPU.
	// The cut checks only the nesting: the whole input must be valid JSON.
	if elems, ok := appElements(data); ok && len(elems) >= parallelMin && json.Valid(data) {
		if apps, ok := decodeParallel(elems); ok {
			return finishApps(apps)
		}
	} else {
		switch data[0] {
		case '[':
			var apps []App
			if json.Unmarshal(data, &apps) == nil {
				return finishApps(apps)
			}
		case '{':
			var list struct {
				Apps *[]App `json:"apps"`
			}
			if json.Unmarshal(data, &list) == nil && list.Apps != nil {
				return finishApps(*list.Apps)
			}
		}
	}
	var raws []json.RawMessage
	switch data[0] {
	case '[':
		if err := json.Unmarshal(data, &raws); err != nil {
			return nil, nil, fmt.Errorf("decode app array: %w", err)
		}
	case '{':
		var top map[string]json.RawMessage
		if err := json.Unmarshal(data, &top); err != nil {
			return nil, nil, fmt.Errorf("decode json object: %w", err)
		}
		if apps, ok := top["apps"]; ok {
			if string(bytes.TrimSpace(apps)) == "null" {
				return nil, nil, errors.New(`"apps" is null: want a list of apps`)
			}
			if err := json.Unmarshal(apps, &raws); err != nil {
				return nil, nil, fmt.Errorf("decode \"apps\": %w", err)
			}
		} else if app, ok := top["app"]; ok {
			raws = []json.RawMessage{app}
		} else if _, ok := top["id"]; ok {
			raws = []json.RawMessage{data}
		} else {
			return nil, nil, errors.New("json object has neither \"apps\", \"app\" nor \"id\": not a Marathon app list or app")
		}
	default:
		return nil, nil, errors.New("not a json object or array: want a Marathon app, an array of apps or {\"apps\": [...]}")
	}

	apps := make([]App, 0, len(raws))
	var problems []Problem
	for i, raw := range raws {
		var app App
		if err := json.Unmarshal(raw, &app); err != nil {
			// Find out whether a task or a label is to blame, and keep the
			// rest of the app.
			var more []Problem
			app, more, err = decodeLenient(raw)
			if err != nil {
				problems = append(problems, Problem{App: rawAppID(raw, i), Reason: "malformed app: " + err.Error()})
				continue
			}
			problems = append(problems, more...)
		}
		if app.ID == "" {
			problems = append(problems, Problem{App: rawAppID(raw, i), Reason: "app has no id"})
			continue
		}
		// Marathon ids are absolute paths; definitions written by hand, like
		// the DC/OS documentation's, may leave out the leading slash.
		if !strings.HasPrefix(app.ID, "/") {
			app.ID = "/" + app.ID
		}
		apps = append(apps, app)
	}
	return apps, problems, nil
}

// finishApps checks and normalizes apps that decoded in one pass.
func finishApps(in []App) ([]App, []Problem, error) {
	apps := in[:0]
	var problems []Problem
	for i, app := range in {
		if app.ID == "" {
			problems = append(problems, Problem{App: fmt.Sprintf("#%d", i), Reason: "app has no id"})
			continue
		}
		if !strings.HasPrefix(app.ID, "/") {
			app.ID = "/" + app.ID
		}
		apps = append(apps, app)
	}
	return apps, problems, nil
}

// rawAppID names an app that did not decode: its id when that much can be
// read, its position otherwise.
func rawAppID(raw json.RawMessage, i int) string {
	if id := rawID(raw); id != "" {
		return id
	}
	return fmt.Sprintf("#%d", i)
}

// rawID reads the "id" of an object that may not decode as a whole.
func rawID(raw []byte) string {
	var probe struct {
		ID any `json:"id"`
	}
	if err := json.Unmarshal(raw, &probe); err == nil {
		if s, ok := probe.ID.(string); ok {
			return s
		}
	}
	return ""
}

// The lenient decoding of an app keeps tasks and labels raw, to decode them
// one by one. It runs only for apps that do not decode as a whole.
type lenientApp struct {
	App
	PortDefinitions []lenientPort     `json:"portDefinitions"`
	Container       *lenientContainer `json:"container"`
	Tasks           []json.RawMessage `json:"tasks"`
}

type lenientPort struct {
	Port
	Labels map[string]json.RawMessage `json:"labels"`
}

type lenientContainer struct {
	Type         string         `json:"type"`
	Docker       *lenientDocker `json:"docker"`
	PortMappings []lenientPort  `json:"portMappings"`
}

type lenientDocker struct {
	Network      string        `json:"network"`
	PortMappings []lenientPort `json:"portMappings"`
}

func decodeLenient(raw []byte) (App, []Problem, error) {
	var l lenientApp
	if err := json.Unmarshal(raw, &l); err != nil {
		return App{}, nil, err
	}
	app := l.App
	id := app.ID
	if id != "" && !strings.HasPrefix(id, "/") {
		id = "/" + id
	}
	var problems []Problem
	ports := func(in []lenientPort) []Port {
		var out []Port
		for _, p := range in {
			port := p.Port
			port.Labels = map[string]string{}
			for k, v := range p.Labels {
				var s string
				if err := json.Unmarshal(v, &s); err != nil {
					if IsLabelKey(k) {
						problems = append(problems, Problem{App: id, Label: k, Reason: fmt.Sprintf("label value is not a string: %.64s", v)})
					}
					continue
				}
				port.Labels[k] = s
			}
			out = append(out, port)
		}
		return out
	}
	app.PortDefinitions = ports(l.PortDefinitions)
	app.Container = nil
	if l.Container != nil {
		app.Container = &Container{Type: l.Container.Type, PortMappings: ports(l.Container.PortMappings)}
		if d := l.Container.Docker; d != nil {
			app.Container.Docker = &Docker{Network: d.Network, PortMappings: ports(d.PortMappings)}
		}
	}
	app.Tasks = nil
	for i, rt := range l.Tasks {
		var t Task
		if err := json.Unmarshal(rt, &t); err != nil {
			tid := rawID(rt)
			if tid == "" {
				tid = fmt.Sprintf("#%d", i)
			}
			problems = append(problems, Problem{App: id, Task: tid, Reason: "malformed task: " + err.Error()})
			continue
		}
		app.Tasks = append(app.Tasks, t)
	}
	return app, problems, nil
}

// parallelMin is the number of apps from which a list is decoded in
// parallel.
const parallelMin = 256

// appElements finds the elements of an app list: a top-level array, or
// the array under a top-level "apps" key. ok is false when the input is
// not of that shape (the slow path then says why).
func appElements(data []byte) ([][]byte, bool) {
	i := skipSpace(data, 0)
	if i >= len(data) {
		return nil, false
	}
	if data[i] == '{' {
		// Find "apps" among the top-level keys; Marathon writes it first.
		i = skipSpace(data, i+1)
		for i < len(data) && data[i] == '"' {
			end, ok := skipString(data, i)
			if !ok {
				return nil, false
			}
			key := data[i+1 : end-1]
			i = skipSpace(data, end)
			if i >= len(data) || data[i] != ':' {
				return nil, false
			}
			i = skipSpace(data, i+1)
			if string(key) == "apps" {
				break
			}
			if i, ok = skipValue(data, i); !ok {
				return nil, false
			}
			i = skipSpace(data, i)
			if i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
			}
		}
	}
	if i >= len(data) || data[i] != '[' {
		return nil, false
	}
	var out [][]byte
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == ']' {
		return out, true
	}
	for i < len(data) {
		end, ok := skipValue(data, i)
		if !ok {
			return nil, false
		}
		out = append(out, data[i:end])
		i = skipSpace(data, end)
		if i >= len(data) {
			return nil, false
		}
		if data[i] == ']' {
			return out, true
		}
		if data[i] != ',' {
			return nil, false
		}
		i = skipSpace(data, i+1)
	}
	return nil, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at b[i].
func skipString(b []byte, i int) (int, bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return 0, false
}

// skipValue returns the index after the value that starts at b[i]. It
// checks only the nesting; the decoder checks the rest.
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, ok := skipString(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\n' && b[j] != '\t' && b[j] != '\r' {
		j++
	}
	return j, j > i
}

// decodeParallel decodes app elements on every CPU; ok is false when one
// does not decode (the slow path then isolates it).
func decodeParallel(elems [][]byte) ([]App, bool) {
	apps := make([]App, len(elems))
	workers := min(runtime.GOMAXPROCS(0), 8)
	var failed atomic.Bool
	var wg sync.WaitGroup
	chunk := (len(elems) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, len(elems))
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi && !failed.Load(); i++ {
				if json.Unmarshal(elems[i], &apps[i]) != nil {
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return apps, !failed.Load()
}
