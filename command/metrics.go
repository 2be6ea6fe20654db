package command

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

type metrics struct {
	set *metricset.Set

	states        *prometheus.GaugeVec
	accepted      prometheus.Counter
	answered      *prometheus.CounterVec
	expired       prometheus.Counter
	cancelled     prometheus.Counter
	redelivered   prometheus.Counter
	strayResults  prometheus.Counter
	repeatResults prometheus.Counter
	invalid       prometheus.Counter
	compactions   prometheus.Counter
	sendLatency   prometheus.Histogram
	latency       prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, id string) (*metrics, error) {
	l := prometheus.Labels{"home": id}
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
	m := &metrics{
		states: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_command_commands", ConstLabels: l,
			Help: "Commands the home keeps, by state."}, []string{"state"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_accepted_total", ConstLabels: l,
			Help: "Commands accepted and made durable."}),
		answered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_command_answered_total", ConstLabels: l,
			Help: "Commands answered by their device, by the state the answer gave them."}, []string{"state"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_expired_total", ConstLabels: l,
			Help: "Commands whose time to live ended before an answer."}),
		cancelled: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_cancelled_total", ConstLabels: l,
			Help: "Commands cancelled before they were sent."}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_redelivered_total", ConstLabels: l,
			Help: "Sent commands handed on again: unanswered for the redelivery interval, or their device moved."}),
		strayResults: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_stray_results_total", ConstLabels: l,
			Help: "Answers naming a command this home does not have for that device."}),
		repeatResults: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_repeat_results_total", ConstLabels: l,
			Help: "Answers to commands already in a final state, dropped."}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_invalid_messages_total", ConstLabels: l,
			Help: "Messages from frontends that failed to decode or were of the wrong kind."}),
		compactions: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_command_compactions_total", ConstLabels: l,
			Help: "Times the home wrote its kept commands again and released the rest of its log."}),
		sendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ingest_command_delivery_latency_seconds", ConstLabels: l,
			Buckets: buckets, Help: "From a command's acceptance to its first handing to a frontend."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ingest_command_answer_latency_seconds", ConstLabels: l,
			Buckets: buckets, Help: "From a command's acceptance to its device's answer."}),
	}
	var err error
	m.set, err = metricset.Register(reg, m.states, m.accepted, m.answered, m.expired, m.cancelled, m.redelivered,
		m.strayResults, m.repeatResults, m.invalid, m.compactions, m.sendLatency, m.latency)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
