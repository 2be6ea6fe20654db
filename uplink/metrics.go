package uplink

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reg prometheus.Registerer

	inflight    prometheus.Gauge
	batches     prometheus.Counter
	acked       prometheus.Counter
	retransmits *prometheus.CounterVec
	reconnects  prometheus.Counter
	failovers   prometheus.Counter
	connected   *prometheus.GaugeVec
	rtt         prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reg: reg,
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
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_uplink_connected",
			Help: "1 for the middletier the uplink is connected to."}, []string{"middletier"}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ingest_uplink_ack_rtt_seconds",
			Help:    "From sending a batch to the acknowledgement that covers it.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18)}),
	}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, r := range m.collectors()[:i] {
				reg.Unregister(r)
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.inflight, m.batches, m.acked, m.retransmits, m.reconnects, m.failovers, m.connected, m.rtt}
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
