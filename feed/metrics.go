package feed

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

type metrics struct {
	set *metricset.Set

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
	b := metricset.NewBuilder(nil)
	mt := "middletier"
	m := &metrics{
		readers: b.Gauge("ingest_feed_readers", "Connected live-feed readers."),
		handshakes: b.CounterVec("ingest_feed_handshakes_total",
			"Reader handshakes, by result (ok, unauthorized, forbidden, too_many_readers, foreign_host).", "result"),
		delivered: b.Counter("ingest_feed_delivered_messages_total",
			"Device messages written to readers (replays included)."),
		dropped: b.Counter("ingest_feed_dropped_messages_total",
			"Device messages dropped for readers whose queue was full (slow readers)."),
		disconnects: b.CounterVec("ingest_feed_disconnects_total",
			"Reader connections ended, by reason (slow, unauthorized, subscribe_timeout, too_many_subscribes, shutdown, closed, write_error).", "reason"),
		received: b.CounterVec("ingest_feed_received_records_total",
			"Records received from a middletier's feed socket.", mt),
		overflows: b.CounterVec("ingest_feed_source_overflows_total",
			"Stream messages dropped because the buffer behind a middletier's socket was full (then handled as a gap).", "source"),
		gaps: b.CounterVec("ingest_feed_gaps_total", "Jumps in a middletier's stream sequence.", mt),
		gapRecords: b.CounterVec("ingest_feed_gap_records_total",
			"Records in stream gaps, by result: filled (fetched from the middletier) or lost (reported to readers as missed).", mt, "result"),
		lagRecords: b.GaugeVec("ingest_feed_lag_records",
			"Records received from a middletier and not yet dispatched to readers.", mt),
		lagSeconds: b.GaugeVec("ingest_feed_lag_seconds",
			"Age of the last record dispatched from a middletier, from its receipt at the frontend.", mt),
		latency: b.Histogram("ingest_feed_dispatch_latency_seconds",
			"End-to-end latency of the live feed: from a message's receipt at the frontend (its envelope's receive time) to its dispatch to the feed's readers, once per record taken from a middletier's stream (gap fills included, resume replays not).",
			[]float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}),
		invalid: b.Counter("ingest_feed_invalid_records_total",
			"Stream messages or records that did not decode, and were skipped."),
		repeats: b.Counter("ingest_feed_repeats_dropped_total",
			"Records already dispatched (same origin and index, e.g. across a middletier failover) and dropped."),
		replayed: b.Counter("ingest_feed_replayed_records_total",
			"Records fetched from middletiers to serve resume requests."),
	}
	var err error
	m.set, err = b.Register(reg)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
