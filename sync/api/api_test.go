package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
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

func TestVIPsStreamedAndFiltered(t *testing.T) {
	mk := func(name, addr string, app string, port uint16) vip.VIP {
		return vip.VIP{Name: name, Addr: netip.MustParseAddr(addr), Port: port, Proto: vip.TCP, Apps: []string{app},
			Backends: []vip.Backend{{Addr: netip.MustParseAddr("198.19.0.1"), Port: 31000, State: vip.Starting, Task: "t1", App: app}}}
	}
	st := &reconcile.Status{State: vip.State{VIPs: []vip.VIP{
		mk("a.marathon.l4lb.thisdcos.directory", "198.18.0.1", "/a", 80),
		mk("a.marathon.l4lb.thisdcos.directory", "198.18.0.1", "/a", 81),
		mk("b.marathon.l4lb.thisdcos.directory", "198.18.0.2", "/b", 80),
		mk("", "198.18.255.1", "/c", 80),
	}}}
	h := Handler(func() *reconcile.Status { return st }, nil)
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"", []string{"a.marathon.l4lb.thisdcos.directory:80", "a.marathon.l4lb.thisdcos.directory:81", "b.marathon.l4lb.thisdcos.directory:80", "198.18.255.1:80"}},
		{"?name=a", []string{"a.marathon.l4lb.thisdcos.directory:80", "a.marathon.l4lb.thisdcos.directory:81"}},
		{"?name=B.marathon.l4lb.thisdcos.directory.", []string{"b.marathon.l4lb.thisdcos.directory:80"}},
		{"?app=/c", []string{"198.18.255.1:80"}},
		{"?ip=198.18.0.1&app=/a", []string{"a.marathon.l4lb.thisdcos.directory:80", "a.marathon.l4lb.thisdcos.directory:81"}},
		{"?ip=198.18.0.2&app=/a", []string{}},
		{"?app=/a&app=/b", []string{"a.marathon.l4lb.thisdcos.directory:80", "a.marathon.l4lb.thisdcos.directory:81", "b.marathon.l4lb.thisdcos.directory:80"}},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/vips"+c.query, nil))
		var got []VIP
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("%s: %v\n%s", c.query, err, rec.Body)
		}
		var names []string
		for _, v := range got {
			names = append(names, v.VIP)
			if v.Backend[0].State != "starting" {
				t.Errorf("%s: backend state %q", c.query, v.Backend[0].State)
			}
		}
		if !slices.Equal(names, c.want) && !(len(names) == 0 && len(c.want) == 0) {
			t.Errorf("%s: %v, want %v", c.query, names, c.want)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/vips?ip=nope", nil))
	if rec.Code != http.StatusBadRequest {
		t.Errorf("bad ip filter: %d", rec.Code)
	}
}
