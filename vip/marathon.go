package vip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// App is the part of a Marathon app definition that l4lb reads. Unknown fields
// are ignored. Tasks and labels are kept raw so that one malformed task or
// label is reported and skipped without losing the rest of the app.
type App struct {
	ID              string            `json:"id"`
	PortDefinitions []Port            `json:"portDefinitions"`
	Container       *Container        `json:"container"`
	Networks        []Network         `json:"networks"`
	IPAddress       *AppIPAddress     `json:"ipAddress"`
	HealthChecks    []json.RawMessage `json:"healthChecks"`
	Tasks           []json.RawMessage `json:"tasks"`
}

// Port is an entry of portDefinitions or of a portMappings list.
type Port struct {
	Port          *int                       `json:"port"`
	ContainerPort *int                       `json:"containerPort"`
	HostPort      *int                       `json:"hostPort"`
	ServicePort   *int                       `json:"servicePort"`
	Protocol      string                     `json:"protocol"`
	Name          string                     `json:"name"`
	Labels        map[string]json.RawMessage `json:"labels"`
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
			problems = append(problems, Problem{App: rawAppID(raw, i), Reason: "malformed app: " + err.Error()})
			continue
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

// rawAppID names an app that did not decode: its id when that much can be
// read, its position otherwise.
func rawAppID(raw json.RawMessage, i int) string {
	var probe struct {
		ID any `json:"id"`
	}
	if err := json.Unmarshal(raw, &probe); err == nil {
		if s, ok := probe.ID.(string); ok && s != "" {
			return s
		}
	}
	return fmt.Sprintf("#%d", i)
}
