package mesos_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/l4lb/l4lb/mesos"
	mt "github.com/l4lb/l4lb/mesos/mesostest"
	"github.com/l4lb/l4lb/vip"
)

// benchState is a SUBSCRIBED of n tasks, 10 per VIP, on 250 agents, with a
// status each, as RecordIO framing would carry it.
func benchState(n int) []byte {
	var ags []mesos.Agent
	for j := range 250 {
		ags = append(ags, mt.Agent(fmt.Sprintf("S%d", j), fmt.Sprintf("198.19.10.%d", 1+j)))
	}
	tasks := make([]mesos.Task, n)
	for i := range n {
		id := fmt.Sprintf("svc-%d.%d", i/10, i%10)
		tasks[i] = mt.Task("fw", id, fmt.Sprintf("S%d", i%250), "TASK_RUNNING",
			mt.Port(uint32(20000+i/250), "tcp", "VIP_0", fmt.Sprintf("svc-%d:80", i/10), "network-scope", "host"))
		tasks[i].Statuses = []mesos.TaskStatus{mt.Status(id, "TASK_RUNNING", 1, mt.Bool(true), fmt.Sprintf("198.19.10.%d", 1+i%250))}
	}
	gs := mt.State(tasks, []mesos.Framework{mt.Framework("fw", "bench")}, ags)
	hb := 15.0
	data, err := json.Marshal(mesos.Event{Type: mesos.EventSubscribed, Subscribed: &mesos.Subscribed{GetState: &gs, HeartbeatIntervalSeconds: &hb}})
	if err != nil {
		panic(err)
	}
	return data
}

// BenchmarkSnapshot: the source's share of a cold load, a SUBSCRIBED of
// 50,000 tasks decoded, modelled and turned into declarations.
//
//	go test ./mesos -run '^$' -bench . -benchmem
func BenchmarkSnapshot(b *testing.B) {
	data := benchState(50000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		ev, _, err := mesos.DecodeEvent(data)
		if err != nil {
			b.Fatal(err)
		}
		m := mesos.NewModel()
		m.Apply(ev, t0)
		decls, _ := m.AllDeclarations(vip.Config{})
		if len(decls) != 50000 {
			b.Fatalf("%d declarations", len(decls))
		}
	}
}

// BenchmarkTaskUpdated: the source's share of one change at 50,000 tasks:
// decode a TASK_UPDATED record, apply it, declare the task again.
func BenchmarkTaskUpdated(b *testing.B) {
	ev, _, err := mesos.DecodeEvent(benchState(50000))
	if err != nil {
		b.Fatal(err)
	}
	m := mesos.NewModel()
	m.Apply(ev, t0)
	var recs [][]byte
	for i := range 100 {
		u := mt.Updated("fw", "TASK_RUNNING", mt.Status(fmt.Sprintf("svc-%d.%d", i*37, i%10), "TASK_RUNNING", float64(2+i), mt.Bool(i%2 == 0)))
		d, _ := json.Marshal(u)
		recs = append(recs, d)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ev, _, err := mesos.DecodeEvent(recs[i%len(recs)])
		if err != nil {
			b.Fatal(err)
		}
		ch := m.Apply(ev, t0)
		for _, k := range ch.Tasks {
			m.Declarations(k, vip.Config{}, nil)
		}
		i++
	}
}
