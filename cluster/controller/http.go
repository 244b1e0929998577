package controller

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/l4lb/l4lb/sync/api"
	"github.com/l4lb/l4lb/vip"
)

// Handler serves the controller's API: /v1/vips (what it wrote to etcd,
// in GET /v1/vips' shape), /v1/problems, /healthz (200 while it holds an
// etcd session, leading or waiting; 503 without one) and, when given,
// /metrics.
func (c *Controller) Handler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vips", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, api.VIPs(c.Status().State))
	})
	mux.HandleFunc("GET /v1/problems", func(w http.ResponseWriter, r *http.Request) {
		ps := c.Status().Problems
		if ps == nil {
			ps = []vip.Problem{}
		}
		writeJSON(w, ps)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := c.Status()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case !st.Session:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "no etcd session: %s\n", st.LastError)
		case st.Leader:
			fmt.Fprintf(w, "ok: leader, %d VIPs written", len(st.State.VIPs))
			if st.Stale {
				fmt.Fprintf(w, ", sources stale: %s", st.LastError)
			}
			fmt.Fprintln(w)
		default:
			fmt.Fprintln(w, "ok: standby")
		}
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
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
