package wal

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

// metrics are one Log's collectors. Every one carries the constant label
// hop, so the logs of several tiers can share one registry.
type metrics struct {
	set *metricset.Set

	depthEntries prometheus.Gauge
	depthBytes   prometheus.Gauge
	fsync        prometheus.Histogram
	batch        prometheus.Histogram
	appended     prometheus.Counter
	full         prometheus.Counter
	repairs      prometheus.Counter
	truncations  prometheus.Counter
	failed       prometheus.Gauge
	segments     *prometheus.CounterVec
	noSpace      prometheus.Gauge
	noSpaceTotal prometheus.Counter
	reserveSpent prometheus.Counter
	dropped      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, hop string) (*metrics, error) {
	b := metricset.NewBuilder(prometheus.Labels{"hop": hop})
	m := &metrics{
		depthEntries: b.QueueDepth(hop),
		depthBytes: b.Gauge("ingest_queue_depth_bytes",
			"Payload bytes appended to the hop's write-ahead log and not yet released by its consumer."),
		fsync: b.Histogram("ingest_wal_fsync_duration_seconds",
			"Time taken by one sync of the write-ahead log (fdatasync; fsync where there is none), the one each group commit waits for.",
			prometheus.ExponentialBuckets(50e-6, 2, 16)),
		batch: b.Histogram("ingest_wal_batch_entries",
			"Entries written by one group commit (one fsync).", prometheus.ExponentialBuckets(1, 2, 15)),
		appended: b.Counter("ingest_wal_appended_entries_total", "Entries made durable in the write-ahead log."),
		full:     b.Counter("ingest_wal_full_total", "Appends refused because the log was at its bound."),
		repairs: b.Counter("ingest_wal_repairs_total",
			"Torn tails removed, truncated segments repaired and damaged release marks reset when the log was opened."),
		truncations: b.Counter("ingest_wal_truncations_total", "Background truncations of released entries."),
		failed: b.Gauge("ingest_wal_failed",
			"1 once a write or fsync failed: the log refuses appends until it is reopened."),
		noSpace: b.Gauge("ingest_wal_no_space",
			"1 while the log's file system is full (ENOSPC or EDQUOT): appends are refused with ErrNoSpace, or the release mark cannot be written. Nothing is lost; it clears by itself once a write succeeds."),
		noSpaceTotal: b.Counter("ingest_wal_no_space_total",
			"Writes that failed for lack of room (appends, release marks, spare segments), each undone and tried again later."),
		reserveSpent: b.Counter("ingest_wal_reserve_spent_total",
			"Times the room kept in reserve (256 KiB) was freed on a full disk, so that a release mark (or the tier's state) could be written and released segments removed."),
		dropped: b.Counter("ingest_wal_dropped_entries_total",
			"Entries, whole or partial, removed by repairs when the log was opened (torn tails, truncated segments repaired on request); the log names their indexes."),
		segments: b.CounterVec("ingest_wal_segments_total",
			"Segment files started, by whether a preallocated spare was ready (preallocated=\"false\": the segment's blocks are allocated as it is written, each sync committing them).",
			"preallocated"),
	}
	m.segments.WithLabelValues("true")
	m.segments.WithLabelValues("false")
	var err error
	m.set, err = b.Register(reg)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
