// Package api serves l4lb's HTTP API (DESIGN section 4): /v1/vips,
// /v1/problems, /healthz and, when given, /metrics.
package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/l4lb/l4lb/sync/reconcile"
	"github.com/l4lb/l4lb/vip"
)

// VIP is one element of GET /v1/vips: dcos-net's shape, plus the name, the
// apps and per-backend state.
type VIP struct {
	VIP      string    `json:"vip"`
	Name     string    `json:"name,omitempty"`
	Protocol string    `json:"protocol"`
	IP       string    `json:"ip"`
	Port     uint16    `json:"port"`
	App      string    `json:"app"`
	Apps     []string  `json:"apps"`
	Backend  []Backend `json:"backend"`
}

// Backend is one backend of a VIP.
type Backend struct {
	IP    string `json:"ip"`
	Port  uint16 `json:"port"`
	State string `json:"state"`
	Task  string `json:"task"`
	App   string `json:"app,omitempty"`
}

// StatusFunc returns the reconciler's status.
type StatusFunc func() *reconcile.Status

// Handler returns the API's handler. metrics, when not nil, serves /metrics.
func Handler(status StatusFunc, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vips", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, VIPs(status().State))
	})
	mux.HandleFunc("GET /v1/problems", func(w http.ResponseWriter, r *http.Request) {
		ps := status().Problems
		if ps == nil {
			ps = []vip.Problem{}
		}
		writeJSON(w, ps)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := status()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !st.Synced {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not synced yet: %s\n", st.LastError)
			return
		}
		fmt.Fprintf(w, "ok: %d VIPs, last sync %s", len(st.State.VIPs), st.LastSuccess.UTC().Format("2006-01-02T15:04:05Z"))
		if st.Stale {
			fmt.Fprintf(w, ", sources stale: %s", st.LastError)
		}
		fmt.Fprintln(w)
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// VIPs renders the state for /v1/vips.
func VIPs(s vip.State) []VIP {
	out := make([]VIP, 0, len(s.VIPs))
	for _, v := range s.VIPs {
		e := VIP{
			VIP:      v.Label(),
			Name:     v.Name,
			Protocol: v.Proto.String(),
			IP:       v.Addr.String(),
			Port:     v.Port,
			Apps:     slices.Clone(v.Apps),
			Backend:  []Backend{},
		}
		if len(v.Apps) > 0 {
			e.App = v.Apps[0]
		}
		for _, b := range v.Backends {
			e.Backend = append(e.Backend, Backend{IP: b.Addr.String(), Port: b.Port, State: b.State.String(), Task: b.Task, App: b.App})
		}
		out = append(out, e)
	}
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.Write(append(b, '\n'))
}
