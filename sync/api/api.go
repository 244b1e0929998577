// Package api serves l4lb's HTTP API (DESIGN section 4): /v1/vips,
// /v1/problems, /healthz and, when given, /metrics.
package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

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
		f, err := parseFilter(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		streamVIPs(w, status().State, f)
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
		out = append(out, render(v))
	}
	return out
}

// filter narrows /v1/vips: ?name= (a VIP's DNS name, or its first label
// as in the VIP label), ?app= (an app that declares it), ?ip= (its
// address). Given several times, a filter accepts any of its values; all
// filters must accept.
type filter struct {
	names []string
	apps  []string
	ips   []netip.Addr
}

func parseFilter(q url.Values) (filter, error) {
	var f filter
	for _, n := range q["name"] {
		f.names = append(f.names, strings.TrimSuffix(strings.ToLower(n), "."))
	}
	f.apps = q["app"]
	for _, s := range q["ip"] {
		a, err := netip.ParseAddr(strings.Trim(s, "[]"))
		if err != nil {
			return filter{}, fmt.Errorf("ip %q is not an IP address", s)
		}
		f.ips = append(f.ips, a.Unmap())
	}
	return f, nil
}

func (f filter) accepts(v vip.VIP) bool {
	if len(f.names) > 0 && !slices.ContainsFunc(f.names, func(n string) bool {
		return v.Name == n || strings.HasPrefix(v.Name, n+".")
	}) {
		return false
	}
	if len(f.apps) > 0 && !slices.ContainsFunc(f.apps, func(a string) bool { return slices.Contains(v.Apps, a) }) {
		return false
	}
	return len(f.ips) == 0 || slices.Contains(f.ips, v.Addr)
}

// streamVIPs writes the VIPs that f accepts as a JSON array, one element
// at a time: the answer is never held whole in memory.
func streamVIPs(w http.ResponseWriter, s vip.State, f filter) {
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 64<<10)
	list := s.VIPs
	if len(f.ips) == 1 {
		// The list is sorted by address first: look the address up.
		i, _ := slices.BinarySearchFunc(list, f.ips[0], func(v vip.VIP, a netip.Addr) int { return v.Addr.Compare(a) })
		j := i
		for j < len(list) && list[j].Addr == f.ips[0] {
			j++
		}
		list = list[i:j]
	}
	bw.WriteString("[")
	n := 0
	for _, v := range list {
		if !f.accepts(v) {
			continue
		}
		if n > 0 {
			bw.WriteString(",")
		}
		bw.WriteString("\n  ")
		b, err := json.MarshalIndent(render(v), "  ", "  ")
		if err != nil {
			return
		}
		if _, err := bw.Write(b); err != nil {
			return // the client went away
		}
		n++
	}
	if n > 0 {
		bw.WriteString("\n")
	}
	bw.WriteString("]\n")
	_ = bw.Flush()
}

// render is one VIP as /v1/vips shows it.
func render(v vip.VIP) VIP {
	{
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
		return e
	}
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
