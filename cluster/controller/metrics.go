package controller

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the controller's, registered on a registry.
type Metrics struct {
	leader      prometheus.Gauge
	elections   prometheus.Counter
	writes      *prometheus.CounterVec
	txns        *prometheus.CounterVec
	txnDuration prometheus.Histogram
	keys        prometheus.Gauge
	vips        prometheus.Gauge
	problems    prometheus.Gauge
	sourceStale prometheus.Gauge
	syncs       *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them on reg (nil: not
// registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_controller_leader",
			Help: "1 while this controller leads the cluster (and writes to etcd), 0 while it waits"}),
		elections: prometheus.NewCounter(prometheus.CounterOpts{Name: "l4lb_controller_elections_won_total",
			Help: "Times this controller became the leader"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l4lb_controller_writes_total",
			Help: "Keys written to etcd, by operation (put, delete)"}, []string{"op"}),
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l4lb_controller_txns_total",
			Help: "etcd transactions, by result (ok, not_leader: the leadership guard refused it, error)"}, []string{"result"}),
		txnDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "l4lb_controller_txn_duration_seconds",
			Help: "Duration of one guarded etcd transaction", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_controller_keys",
			Help: "Keys this controller keeps in etcd (config, allocations, VIPs)"}),
		vips: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_controller_vips",
			Help: "VIPs of the last state written"}),
		problems: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_controller_problems",
			Help: "Problems (skipped labels, tasks, apps) of the last state written"}),
		sourceStale: prometheus.NewGauge(prometheus.GaugeOpts{Name: "l4lb_source_stale",
			Help: "1 while the sources cannot be read and etcd keeps the last state written"}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l4lb_controller_syncs_total",
			Help: "Reads of the sources written to etcd, by result (ok, source_error, write_error)"}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.leader, m.elections, m.writes, m.txns, m.txnDuration, m.keys, m.vips, m.problems, m.sourceStale, m.syncs)
	}
	return m
}

// TxnsForTest returns the counter of transactions with a result.
func (m *Metrics) TxnsForTest(result string) prometheus.Counter {
	return m.txns.WithLabelValues(result)
}

// WritesForTest returns the counter of keys written with an operation.
func (m *Metrics) WritesForTest(op string) prometheus.Counter { return m.writes.WithLabelValues(op) }
