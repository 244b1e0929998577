package conntrack

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the conntrack cleanup's Prometheus collectors. A nil *Metrics
// records nothing.
type Metrics struct {
	deleted  prometheus.Counter
	failures prometheus.Counter
	duration *prometheus.HistogramVec
}

// NewMetrics creates the collectors and registers them with reg (when not
// nil):
//
//	l4lb_conntrack_flows_deleted_total      entries deleted
//	l4lb_conntrack_delete_failures_total    entries that could not be deleted
//	l4lb_conntrack_cleanup_duration_seconds cleanup passes, by pass (full or
//	                                        suspects) and result (ok or error)
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_conntrack_flows_deleted_total",
			Help: "Conntrack entries deleted because their backend or VIP no longer keeps them.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_conntrack_delete_failures_total",
			Help: "Stale conntrack entries that could not be deleted (entries already gone are not counted).",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "l4lb_conntrack_cleanup_duration_seconds",
			Help:    "Duration of conntrack cleanup passes: listing, choosing and deleting.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"pass", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.deleted, m.failures, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register conntrack metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *Metrics) observe(r Result, err error, d time.Duration) {
	if m == nil {
		return
	}
	m.deleted.Add(float64(r.Deleted))
	m.failures.Add(float64(r.Failed))
	pass, result := "suspects", "ok"
	if r.Full {
		pass = "full"
	}
	if err != nil {
		result = "error"
	}
	m.duration.WithLabelValues(pass, result).Observe(d.Seconds())
}
