package dns

import (
	"errors"
	"fmt"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons of l4lb_dns_forward_failures_total.
const (
	failTimeout  = "timeout"  // no answer within the per-try timeout
	failError    = "error"    // network error, or an answer that does not parse or match
	failRcode    = "rcode"    // the upstream answered SERVFAIL or REFUSED
	failOverload = "overload" // too many queries being forwarded: SERVFAIL at once
)

// durationBuckets are fine below a millisecond, where answers from the zone
// are, and reach the seconds of forwarding timeouts.
var durationBuckets = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
}

// metrics are the l4lb_dns_* collectors.
type metrics struct {
	queries         *prometheus.CounterVec
	forwardFailures *prometheus.CounterVec
	duration        prometheus.Histogram
	records         prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "l4lb_dns_queries_total",
			Help: "DNS queries answered, by query type and response code.",
		}, []string{"qtype", "rcode"}),
		forwardFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "l4lb_dns_forward_failures_total",
			Help: "Failed tries to forward a query, by upstream and reason (timeout, error, rcode; overload with no upstream).",
		}, []string{"upstream", "reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "l4lb_dns_request_duration_seconds",
			Help:    "Time from receiving a query to sending its answer.",
			Buckets: durationBuckets,
		}),
		records: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "l4lb_dns_records",
			Help: "A and AAAA records in the published VIP zone.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.queries, m.forwardFailures, m.duration, m.records} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register dns metrics: %w", err)
	}
	return m, nil
}

// observe counts one answered query.
func (m *metrics) observe(qtype uint16, rcode int, d time.Duration) {
	m.queries.WithLabelValues(typeLabel(qtype), rcodeLabel(rcode)).Inc()
	m.duration.Observe(d.Seconds())
}

// typeLabel keeps the qtype label bounded: the types miekg/dns knows by
// name, "other" for the rest.
func typeLabel(t uint16) string {
	if s, ok := mdns.TypeToString[t]; ok {
		return s
	}
	return "other"
}

func rcodeLabel(rcode int) string {
	if rcode == mdns.RcodeBadVers {
		return "BADVERS" // shares 16 with BADSIG; this server signs nothing
	}
	if s, ok := mdns.RcodeToString[rcode]; ok {
		return s
	}
	return "other"
}
