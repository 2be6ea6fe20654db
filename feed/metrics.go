package feed

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reg prometheus.Registerer

	readers     prometheus.Gauge
	handshakes  *prometheus.CounterVec
	delivered   prometheus.Counter
	dropped     prometheus.Counter
	disconnects *prometheus.CounterVec
	received    *prometheus.CounterVec
	overflows   *prometheus.CounterVec
	gaps        *prometheus.CounterVec
	gapRecords  *prometheus.CounterVec
	lagRecords  *prometheus.GaugeVec
	lagSeconds  *prometheus.GaugeVec
	latency     prometheus.Histogram
	invalid     prometheus.Counter
	repeats     prometheus.Counter
	replayed    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	mt := []string{"middletier"}
	m := &metrics{
		reg: reg,
		readers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_feed_readers",
			Help: "Connected live-feed readers."}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_feed_handshakes_total",
			Help: "Reader handshakes, by result (ok, unauthorized, forbidden, too_many_readers)."}, []string{"result"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_feed_delivered_messages_total",
			Help: "Device messages written to readers (replays included)."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_feed_dropped_messages_total",
			Help: "Device messages dropped for readers whose queue was full (slow readers)."}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_feed_disconnects_total",
			Help: "Reader connections ended, by reason (slow, unauthorized, subscribe_timeout, shutdown, closed, write_error)."}, []string{"reason"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_feed_received_records_total",
			Help: "Records received from a middletier's feed socket."}, mt),
		overflows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_feed_source_overflows_total",
			Help: "Stream messages dropped because the buffer behind a middletier's socket was full (then handled as a gap)."}, []string{"source"}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_feed_gaps_total",
			Help: "Jumps in a middletier's stream sequence."}, mt),
		gapRecords: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_feed_gap_records_total",
			Help: "Records in stream gaps, by result: filled (fetched from the middletier) or lost (reported to readers as missed)."}, []string{"middletier", "result"}),
		lagRecords: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_feed_lag_records",
			Help: "Records received from a middletier and not yet dispatched to readers."}, mt),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_feed_lag_seconds",
			Help: "Age of the last record dispatched from a middletier, from its receipt at the frontend."}, mt),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ingest_feed_dispatch_latency_seconds",
			Help:    "End-to-end latency of the live feed: from a message's receipt at the frontend (its envelope's receive time) to its dispatch to the feed's readers, once per record taken from a middletier's stream (gap fills included, resume replays not).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_feed_invalid_records_total",
			Help: "Stream messages or records that did not decode, and were skipped."}),
		repeats: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_feed_repeats_dropped_total",
			Help: "Records already dispatched (same origin and index, e.g. across a middletier failover) and dropped."}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_feed_replayed_records_total",
			Help: "Records fetched from middletiers to serve resume requests."}),
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
	return []prometheus.Collector{m.readers, m.handshakes, m.delivered, m.dropped, m.disconnects, m.received,
		m.overflows, m.gaps, m.gapRecords, m.lagRecords, m.lagSeconds, m.latency, m.invalid, m.repeats, m.replayed}
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
