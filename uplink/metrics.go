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
	b := metricset.NewBuilder(nil)
	m := &metrics{
		inflight: b.QueueDepth("uplink_inflight"),
		batches: b.Counter("ingest_uplink_batches_sent_total",
			"Batches sent to middletiers, retransmissions included."),
		acked: b.Counter("ingest_uplink_acked_entries_total",
			"Entries acknowledged by a middletier and released from the frontend's WAL."),
		retransmits: b.CounterVec("ingest_uplink_retransmits_total",
			"Times the uplink went back to its oldest unacknowledged entry, by reason.", "reason"),
		reconnects: b.Counter("ingest_uplink_reconnects_total", "Sockets closed and connected again."),
		failovers:  b.Counter("ingest_uplink_failovers_total", "Moves to the next middletier after one stayed silent."),
		returns: b.Counter("ingest_uplink_returns_total",
			"Moves back to the first choice among the middletiers (or to a new first choice), after it drained the current one."),
		connected: b.GaugeVec("ingest_uplink_connected",
			"1 for the middletier the uplink is connected to.", "middletier"),
		rtt: b.Histogram("ingest_uplink_ack_rtt_seconds",
			"From sending a batch to the acknowledgement that covers it.", prometheus.ExponentialBuckets(50e-6, 2, 18)),
	}
	var err error
	m.set, err = b.Register(reg)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
