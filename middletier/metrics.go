package middletier

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

type metrics struct {
	set *metricset.Set

	batches      prometheus.Counter
	entries      prometheus.Counter
	repeats      prometheus.Counter
	gaps         prometheus.Counter
	busy         prometheus.Counter
	invalid      *prometheus.CounterVec
	published    prometheus.Counter
	fetches      prometheus.Counter
	commits      prometheus.Counter
	stalls       *prometheus.CounterVec
	lag          *prometheus.GaugeVec
	ingestQueue  prometheus.Gauge
	streamLagged prometheus.Gauge
	stateNoSpace prometheus.Gauge
	groupWriters *prometheus.GaugeVec
	groupHolder  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, id string) (*metrics, error) {
	l := prometheus.Labels{"middletier": id}
	m := &metrics{
		batches: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_batches_total", ConstLabels: l,
			Help: "Batches received from frontends."}),
		entries: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_entries_total", ConstLabels: l,
			Help: "Entries appended to the middletier's WAL."}),
		repeats: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_repeats_dropped_total", ConstLabels: l,
			Help: "Entries received again (retransmissions) and dropped."}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_resends_total", ConstLabels: l,
			Help: "Batches that arrived after a gap and were answered with resend."}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_busy_total", ConstLabels: l,
			Help: "Batches answered busy because the WAL or the ingest queue was full."}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_middletier_invalid_messages_total", ConstLabels: l,
			Help: "Messages that failed to decode, by socket."}, []string{"socket"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_published_records_total", ConstLabels: l,
			Help: "Records published on the stream."}),
		fetches: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_fetches_total", ConstLabels: l,
			Help: "Fetch requests served."}),
		commits: prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_middletier_commits_total", ConstLabels: l,
			Help: "Consumer checkpoints made durable."}),
		stalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_middletier_send_stalls_total", ConstLabels: l,
			Help: "Sends that stalled past the watchdog's limit, after which the socket was closed and opened again."}, []string{"socket"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_middletier_consumer_lag_entries", ConstLabels: l,
			Help: "Entries committed to the WAL and not yet checkpointed by a durable consumer."}, []string{"consumer"}),
		ingestQueue: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_queue_depth_entries", ConstLabels: prometheus.Labels{"hop": "middletier_inbox"},
			Help: "Entries waiting at one hop of the pipeline; the hop label names the queue."}),
		streamLagged: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_middletier_stream_lag_entries", ConstLabels: l,
			Help: "Entries committed to the WAL and not yet published on the stream."}),
		stateNoSpace: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_middletier_state_no_space", ConstLabels: l,
			Help: "1 while the state file (marks and consumer checkpoints) cannot be written for lack of disk space: commits wait, nothing is released, and it is written again every second."}),
		groupWriters: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_middletier_group_writers", ConstLabels: l,
			Help: "Live writers of a writer group (a durable consumer) at this middletier: members that renewed their lease request within the lease's time to live, or, for a group that takes no lease, connections that fetched or committed within it."}, []string{"group"}),
		groupHolder: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_middletier_group_holder", ConstLabels: l,
			Help: "1 for the writer that holds a writer group's lease on this middletier's stream; no series while no writer holds it."}, []string{"group", "writer"}),
	}
	var err error
	m.set, err = metricset.Register(reg, m.batches, m.entries, m.repeats, m.gaps, m.busy, m.invalid,
		m.published, m.fetches, m.commits, m.stalls, m.lag, m.ingestQueue, m.streamLagged, m.stateNoSpace,
		m.groupWriters, m.groupHolder)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
