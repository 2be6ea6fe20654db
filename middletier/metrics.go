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
	stateWrites  prometheus.Counter
	stalls       *prometheus.CounterVec
	lag          *prometheus.GaugeVec
	ingestQueue  prometheus.Gauge
	streamLagged prometheus.Gauge
	stateNoSpace prometheus.Gauge
	groupWriters *prometheus.GaugeVec
	groupHolder  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, id string) (*metrics, error) {
	b := metricset.NewBuilder(prometheus.Labels{"middletier": id})
	m := &metrics{
		batches: b.Counter("ingest_middletier_batches_total", "Batches received from frontends."),
		entries: b.Counter("ingest_middletier_entries_total", "Entries appended to the middletier's WAL."),
		repeats: b.Counter("ingest_middletier_repeats_dropped_total",
			"Entries received again (retransmissions) and dropped."),
		gaps: b.Counter("ingest_middletier_resends_total",
			"Batches that arrived after a gap and were answered with resend."),
		busy: b.Counter("ingest_middletier_busy_total",
			"Batches answered busy because the WAL or the ingest queue was full."),
		invalid: b.CounterVec("ingest_middletier_invalid_messages_total",
			"Messages that failed to decode, by socket.", "socket"),
		published: b.Counter("ingest_middletier_published_records_total", "Records published on the stream."),
		fetches:   b.Counter("ingest_middletier_fetches_total", "Fetch requests served."),
		commits:   b.Counter("ingest_middletier_commits_total", "Consumer checkpoints made durable."),
		stateWrites: b.Counter("ingest_middletier_state_writes_total",
			"Writes of the state file (marks and consumer checkpoints), each with its fsyncs: at most one per StateInterval (100 ms by default), however many commits it holds."),
		stalls: b.CounterVec("ingest_middletier_send_stalls_total",
			"Sends that stalled past the watchdog's limit, after which the socket was closed and opened again.", "socket"),
		lag: b.GaugeVec("ingest_middletier_consumer_lag_entries",
			"Entries committed to the WAL and not yet checkpointed by a durable consumer.", "consumer"),
		ingestQueue: b.QueueDepth("middletier_inbox"),
		streamLagged: b.Gauge("ingest_middletier_stream_lag_entries",
			"Entries committed to the WAL and not yet published on the stream."),
		stateNoSpace: b.Gauge("ingest_middletier_state_no_space",
			"1 while the state file (marks and consumer checkpoints) cannot be written for lack of disk space: commits wait, nothing is released, and it is written again every second."),
		groupWriters: b.GaugeVec("ingest_middletier_group_writers",
			"Live writers of a writer group (a durable consumer) at this middletier: members that renewed their lease request within the lease's time to live, or, for a group that takes no lease, connections that fetched or committed within it.", "group"),
		groupHolder: b.GaugeVec("ingest_middletier_group_holder",
			"1 for the writer that holds a writer group's lease on this middletier's stream; no series while no writer holds it.", "group", "writer"),
	}
	var err error
	m.set, err = b.Register(reg)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
