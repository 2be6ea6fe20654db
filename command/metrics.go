package command

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

type metrics struct {
	set *metricset.Set

	states        *prometheus.GaugeVec
	placed        prometheus.Gauge
	placements    prometheus.Counter
	accepted      prometheus.Counter
	refusedFull   prometheus.Counter
	answered      *prometheus.CounterVec
	expired       prometheus.Counter
	cancelled     prometheus.Counter
	redelivered   prometheus.Counter
	strayResults  prometheus.Counter
	repeatResults prometheus.Counter
	invalid       prometheus.Counter
	compactions   prometheus.Counter
	eventsDropped prometheus.Counter
	sendLatency   prometheus.Histogram
	latency       prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, id string) (*metrics, error) {
	b := metricset.NewBuilder(prometheus.Labels{"home": id})
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
	m := &metrics{
		states: b.GaugeVec("ingest_command_commands", "Commands the home keeps, by state.", "state"),
		placed: b.Gauge("ingest_command_devices_placed",
			"Devices of this home's that a frontend reports connected: where their commands are sent."),
		placements: b.Counter("ingest_command_placements_total",
			"Times a device of this home's was placed at a new connection: it connected, moved or reconnected."),
		accepted: b.Counter("ingest_command_accepted_total", "Commands accepted and made durable."),
		refusedFull: b.Counter("ingest_command_refused_full_total",
			"Commands refused because the home keeps as many as its log has room for (a quarter of its bound)."),
		answered: b.CounterVec("ingest_command_answered_total",
			"Commands answered by their device, by the state the answer gave them.", "state"),
		expired: b.Counter("ingest_command_expired_total",
			"Commands whose time to live ended before an answer."),
		cancelled: b.Counter("ingest_command_cancelled_total", "Commands cancelled before they were sent."),
		redelivered: b.Counter("ingest_command_redelivered_total",
			"Sent commands handed on again: unanswered for the redelivery interval, or their device moved."),
		strayResults: b.Counter("ingest_command_stray_results_total",
			"Answers naming a command this home does not have for that device."),
		repeatResults: b.Counter("ingest_command_repeat_results_total",
			"Answers to commands already in a final state, dropped."),
		invalid: b.Counter("ingest_command_invalid_messages_total",
			"Messages from frontends that failed to decode or were of the wrong kind."),
		compactions: b.Counter("ingest_command_compactions_total",
			"Times the home wrote its kept commands again and released the rest of its log."),
		eventsDropped: b.Counter("ingest_command_events_dropped_total",
			"Command events not kept: the events log was at its bound or the disk full."),
		sendLatency: b.Histogram("ingest_command_delivery_latency_seconds",
			"From a command's acceptance to its first handing to a frontend.", buckets),
		latency: b.Histogram("ingest_command_answer_latency_seconds",
			"From a command's acceptance to its device's answer.", buckets),
	}
	var err error
	m.set, err = b.Register(reg)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
