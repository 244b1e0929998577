package controller

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/l4lb/l4lb/sync/source"
	"github.com/l4lb/l4lb/vip"
)

// The controller's index gets the task hosts of the groups: an IP VIP at
// the host of a task of an app without VIPs is refused before it reaches
// etcd, and comes back when the task goes.
func TestPipelineGuardsTaskHosts(t *testing.T) {
	model := vip.Config{Pool4: netip.MustParsePrefix("198.18.0.0/17")}
	p := newPipeline(model, 1)
	p.poke = func() {}
	apps, problems, err := vip.ParseApps([]byte(`[
	  {"id": "/ip", "portDefinitions": [{"port": 0, "labels": {"VIP_0": "198.19.0.5:80"}}]},
	  {"id": "/db", "tasks": [{"id": "db.1", "host": "198.19.0.5", "state": "TASK_RUNNING"}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	p.sinks[0].Replace(source.AppGroups(apps, problems, model))
	srcs := []source.Source{nil}
	if ready, err := p.take(srcs); !ready || err != nil {
		t.Fatalf("take: %v %v", ready, err)
	}
	p.index.Commit()
	if n := len(p.index.State().VIPs); n != 0 {
		t.Fatalf("%d VIPs, want the IP VIP at the task host refused", n)
	}
	ps := p.index.Problems()
	if len(ps) != 1 || ps[0].Refused != "198.19.0.5" || !strings.Contains(ps[0].Reason, "task host 198.19.0.5 of task db.1 of app /db") {
		t.Fatalf("problems %+v", ps)
	}
	p.sinks[0].Update(nil, []source.Key{"/db"})
	if _, err := p.take(srcs); err != nil {
		t.Fatal(err)
	}
	p.index.Commit()
	if vips := p.index.State().VIPs; len(vips) != 1 || vips[0].Addr.String() != "198.19.0.5" {
		t.Fatalf("VIPs %+v, want the IP VIP back", vips)
	}
}
