package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/sync/reconcile"
	"github.com/l4lb/l4lb/vip"
)

func TestHandler(t *testing.T) {
	st := &reconcile.Status{}
	h := Handler(func() *reconcile.Status { return st }, nil)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("healthz before the first sync: %d %q", code, body)
	}
	st = &reconcile.Status{Synced: true, LastSuccess: time.Unix(0, 0), State: vip.State{VIPs: []vip.VIP{{
		Name: "web.marathon.l4lb.thisdcos.directory", Addr: netip.MustParseAddr("198.18.0.7"), Port: 80, Proto: vip.TCP,
		Apps: []string{"/web"}, Backends: []vip.Backend{
			{Addr: netip.MustParseAddr("198.19.0.11"), Port: 31000, State: vip.Active, Task: "t1", App: "/web"},
			{Addr: netip.MustParseAddr("198.19.0.12"), Port: 31000, State: vip.Draining, Task: "t2", App: "/web"},
		}}, {Addr: netip.MustParseAddr("198.18.255.1"), Port: 53, Proto: vip.UDP, Apps: []string{"/dns"}}}},
		Problems: []vip.Problem{{App: "/bad", Label: "VIP_0", Reason: "port 0 out of range"}}}
	if code, body := get("/healthz"); code != http.StatusOK || !strings.HasPrefix(body, "ok: 2 VIPs") {
		t.Errorf("healthz: %d %q", code, body)
	}
	code, body := get("/v1/vips")
	var vips []map[string]any
	if err := json.Unmarshal([]byte(body), &vips); err != nil || code != 200 || len(vips) != 2 {
		t.Fatalf("/v1/vips: %d %v %s", code, err, body)
	}
	want := map[string]any{"vip": "web.marathon.l4lb.thisdcos.directory:80", "protocol": "tcp", "ip": "198.18.0.7", "port": float64(80), "app": "/web"}
	for k, v := range want {
		if vips[0][k] != v {
			t.Errorf("vips[0][%s] = %v, want %v", k, vips[0][k], v)
		}
	}
	be := vips[0]["backend"].([]any)[1].(map[string]any)
	if be["ip"] != "198.19.0.12" || be["port"] != float64(31000) || be["state"] != "draining" || be["task"] != "t2" {
		t.Errorf("backend = %v", be)
	}
	if vips[1]["vip"] != "198.18.255.1:53" || len(vips[1]["backend"].([]any)) != 0 {
		t.Errorf("IP VIP = %v", vips[1])
	}
	if code, body := get("/v1/problems"); code != 200 || !strings.Contains(body, `"reason": "port 0 out of range"`) {
		t.Errorf("/v1/problems: %d %s", code, body)
	}
	if code, _ := get("/metrics"); code != http.StatusNotFound {
		t.Errorf("/metrics without a handler: %d", code)
	}
}
