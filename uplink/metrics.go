package uplink

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

type metrics struct {
	set *metricset.Set

	inflight    prometheus.Gauge
	batches     prometheus.Counter
	acked       prometheus.Counter
	retransmits *prometheus.CounterVec
	reconnects  prometheus.Counter
	failovers   prometheus.Counter
	returns     prometheus.Counter
	connected   *prometheus.GaugeVec
	rtt         prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_queue_depth_entries", ConstLabels: prometheus.Labels{"hop": "uplink_inflight"},
			Help: "Entries waiting at one hop of the pipeline; the hop label names the queue."}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_uplink_batches_sent_total",
			Help: "Batches sent to middletiers, retransmissions included."}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_uplink_acked_entries_total",
			Help: "Entries acknowledged by a middletier and released from the frontend's WAL."}),
		retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_uplink_retransmits_total",
			Help: "Times the uplink went back to its oldest unacknowledged entry, by reason."}, []string{"reason"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_uplink_reconnects_total",
			Help: "Sockets closed and connected again."}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_uplink_failovers_total",
			Help: "Moves to the next middletier after one stayed silent."}),
		returns: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_uplink_returns_total",
			Help: "Moves back to the first choice among the middletiers (or to a new first choice), after it drained the current one."}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_uplink_connected",
			Help: "1 for the middletier the uplink is connected to."}, []string{"middletier"}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ingest_uplink_ack_rtt_seconds",
			Help:    "From sending a batch to the acknowledgement that covers it.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18)}),
	}
	var err error
	m.set, err = metricset.Register(reg, m.inflight, m.batches, m.acked, m.retransmits, m.reconnects, m.failovers, m.returns, m.connected, m.rtt)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
