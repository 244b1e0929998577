package source

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/vip"
)

// bigApps is a /v2/apps?embed=apps.tasks response of a large cluster: apps
// with a VIP label and health checks, tasks with health results.
func bigApps(apps, tasks int) []byte {
	var b strings.Builder
	b.WriteString(`{"apps": [`)
	for a := range apps {
		if a > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id": "/group%d/app%d", "cmd": "sleep 1000", "cpus": 0.1, "mem": 128, "instances": %d,
 "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "http", "labels": {"VIP_0": "/group%d/app%d:80"}}],
 "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/health", "portIndex": 0, "intervalSeconds": 10}],
 "labels": {"team": "payments", "HAPROXY_GROUP": "internal"}, "version": "2017-07-19T17:34:41.967Z", "tasks": [`, a%50, a, tasks, a%50, a)
		for t := range tasks {
			if t > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `{"id": "group%d_app%d.instance-%08d-4c30-11e5-98c1-be5b2935a987._app.1", "appId": "/group%d/app%d",
 "host": "198.19.%d.%d", "ports": [%d], "slaveId": "agent%d", "state": "TASK_RUNNING",
 "startedAt": "2015-08-26T20:23:44.678Z", "stagedAt": "2015-08-26T20:23:39.463Z", "version": "2017-07-19T17:34:41.967Z",
 "ipAddresses": [{"ipAddress": "198.19.%d.%d", "protocol": "IPv4"}],
 "healthCheckResults": [{"alive": true, "consecutiveFailures": 0, "firstSuccess": "2015-08-26T20:24:00.000Z", "lastSuccess": "2017-07-19T17:40:00.000Z", "taskId": "t"}]}`,
				a%50, a, a*tasks+t, a%50, a, t%250, a%250+1, 31000+t, t, t%250, a%250+1)
		}
		b.WriteString(`]}`)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// BenchmarkMarathonLoad measures a full Load of a 2,000-app, 10,000-task
// cluster over loopback HTTP, and its parts side by side: the shape check
// must be a negligible fraction of the parse.
func BenchmarkMarathonLoad(b *testing.B) {
	data := bigApps(2000, 5)
	b.Run("shape", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if err := checkAppsShape(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parse", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, _, err := vip.ParseApps(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("load", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(data)
		}))
		defer srv.Close()
		m, err := NewMarathon(srv.URL, MarathonOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			snap, err := m.Load(context.Background())
			if err != nil || len(snap.Apps) != 2000 {
				b.Fatal(len(snap.Apps), err)
			}
		}
	})
}

// BenchmarkFileParse measures what a changed file costs at 50,000 apps x
// 10 tasks (about 100 MB): the whole file is a full list, parsed and
// declared; the pipeline then works only on the apps that differ.
// Run: go test ./sync/source -run '^$' -bench FileParse -benchtime 3x
func BenchmarkFileParse(b *testing.B) {
	data := bigApps(50000, 10)
	b.Run("apps=50000", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			apps, problems, err := vip.ParseApps(data)
			if err != nil || len(apps) != 50000 {
				b.Fatal(len(apps), err)
			}
			AppGroups(apps, problems, vip.Config{})
		}
	})
}

// BenchmarkMarathonAppRead measures what one change costs on the Marathon
// side: one event names one app, which is read alone (GET
// /v2/apps/{id}?embed=app.tasks, 10 tasks with health results) and
// declared; bytes/change is what crosses the network.
// Run: go test ./sync/source -run '^$' -bench MarathonAppRead
func BenchmarkMarathonAppRead(b *testing.B) {
	list := string(bigApps(1, 10))
	app := strings.TrimSuffix(strings.TrimPrefix(list, `{"apps": [`), `]}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"app": ` + app + `}`))
	}))
	defer srv.Close()
	m, err := NewMarathon(srv.URL, MarathonOptions{})
	if err != nil {
		b.Fatal(err)
	}
	groups := newAppGroups(vip.Config{})
	sink := &countSink{}
	b.ReportAllocs()
	for b.Loop() {
		if err := m.readApps(context.Background(), []string{"/group0/app0"}, groups, sink); err != nil || sink.updates == 0 {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(m.BytesRead())/float64(b.N), "bytes/change")
}

type countSink struct{ updates int }

func (s *countSink) Replace([]Group)       {}
func (s *countSink) Update([]Group, []Key) { s.updates++ }
func (s *countSink) Stale(error)           {}
