package reconcile

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4lb/l4lb/nat"
	"github.com/l4lb/l4lb/nat/forward"
	"github.com/l4lb/l4lb/vip"
)

// Metrics are the sync loop's Prometheus metrics (README lists them all).
type Metrics struct {
	syncDuration   *prometheus.HistogramVec
	syncFailures   *prometheus.CounterVec
	lastSuccess    prometheus.Gauge
	vips           prometheus.Gauge
	backends       *prometheus.GaugeVec
	problems       prometheus.Gauge
	sourceErrors   prometheus.Counter
	sourceStale    prometheus.Gauge
	natElements    prometheus.Counter
	natBatches     prometheus.Counter
	natRebuilds    prometheus.Counter
	natDriftRepair prometheus.Counter
	fwdActive      *prometheus.GaugeVec
	fwdChanges     prometheus.Counter
	fwdErrors      prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "l4lb_sync_duration_seconds",
			Help:    "Time of one sync: apply the changes of the sources to the desired state, program the kernel (kind incremental or full).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"kind"}),
		syncFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "l4lb_sync_failures_total",
			Help: "Syncs that failed, by the stage that failed (source, nat, conntrack, forward).",
		}, []string{"stage"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "l4lb_sync_last_success_timestamp_seconds",
			Help: "Unix time of the last sync that reached the kernel.",
		}),
		vips: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "l4lb_vips",
			Help: "VIPs in the desired state (one per address, protocol and port).",
		}),
		backends: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "l4lb_backends",
			Help: "Backends of all VIPs by state (active, starting, draining, unhealthy).",
		}, []string{"state"}),
		problems: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "l4lb_problems",
			Help: "Apps, labels and tasks skipped in the last sync (see /v1/problems).",
		}),
		sourceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_source_errors_total",
			Help: "Reads of the sources that failed (unreachable, timeout, invalid JSON).",
		}),
		sourceStale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "l4lb_source_stale",
			Help: "1 while the sources fail and the last good state is kept.",
		}),
		natElements: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_nat_elements_changed_total",
			Help: "Set and map elements added or deleted in the kernel.",
		}),
		natBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_nat_batches_total",
			Help: "Netlink batches (transactions) sent to nftables.",
		}),
		natRebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_nat_table_rebuilds_total",
			Help: "Times the table was (re)created, at start or after it was found missing or of the wrong shape.",
		}),
		natDriftRepair: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_nat_drift_repairs_total",
			Help: "Full resyncs that found the kernel differing from what l4lb had programmed, and repaired it.",
		}),
		fwdActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "l4lb_forward_active",
			Help: "1 for each iptables backend (iptables-nft, ip6tables-legacy, ...) whose FORWARD chain blocks and holds l4lb's ACCEPT rules.",
		}, []string{"backend"}),
		fwdChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_forward_changes_total",
			Help: "Rules and chains l4lb added to or removed from iptables FORWARD.",
		}),
		fwdErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4lb_forward_sync_errors_total",
			Help: "Syncs of the iptables FORWARD rules that failed.",
		}),
	}
	for _, st := range vip.BackendStates {
		m.backends.WithLabelValues(st.String())
	}
	for _, stage := range []string{"source", "nat", "conntrack", "forward"} {
		m.syncFailures.WithLabelValues(stage)
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.syncFailures, m.lastSuccess, m.vips, m.backends, m.problems,
			m.sourceErrors, m.sourceStale, m.natElements, m.natBatches, m.natRebuilds, m.natDriftRepair,
			m.fwdActive, m.fwdChanges, m.fwdErrors)
	}
	return m
}

// backendCounts counts backends by state, kept up to date per change.
type backendCounts map[vip.BackendState]int

func (c backendCounts) add(vips []vip.VIP, sign int) {
	for _, v := range vips {
		for _, b := range v.Backends {
			c[b.State] += sign
		}
	}
}

func (m *Metrics) observeState(vips int, counts backendCounts, problems int) {
	m.vips.Set(float64(vips))
	for _, st := range vip.BackendStates {
		m.backends.WithLabelValues(st.String()).Set(float64(counts[st]))
	}
	m.problems.Set(float64(problems))
}

func (m *Metrics) observeNAT(res nat.Result, expectedChange bool) {
	m.natElements.Add(float64(res.Elements))
	m.natBatches.Add(float64(res.Batches))
	if res.Rebuilt {
		m.natRebuilds.Inc()
	}
	if res.ReadBack && res.Changed() && !expectedChange {
		m.natDriftRepair.Inc()
	}
}

func (m *Metrics) observeForward(res forward.Result, err error) {
	if err != nil {
		m.fwdErrors.Inc()
		m.syncFailures.WithLabelValues("forward").Inc()
	}
	m.fwdChanges.Add(float64(res.Changes))
	m.fwdActive.Reset()
	for _, b := range res.Active {
		m.fwdActive.WithLabelValues(b).Set(1)
	}
}
