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
	dropped      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, hop string) (*metrics, error) {
	l := prometheus.Labels{"hop": hop}
	m := &metrics{
		depthEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ingest_queue_depth_entries", ConstLabels: l,
			Help: "Entries waiting at one hop of the pipeline; the hop label names the queue.",
		}),
		depthBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ingest_queue_depth_bytes", ConstLabels: l,
			Help: "Payload bytes appended to the hop's write-ahead log and not yet released by its consumer.",
		}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ingest_wal_fsync_duration_seconds", ConstLabels: l,
			Help:    "Time taken by one sync of the write-ahead log (fdatasync; fsync where there is none), the one each group commit waits for.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ingest_wal_batch_entries", ConstLabels: l,
			Help:    "Entries written by one group commit (one fsync).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 15),
		}),
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_wal_appended_entries_total", ConstLabels: l,
			Help: "Entries made durable in the write-ahead log.",
		}),
		full: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_wal_full_total", ConstLabels: l,
			Help: "Appends refused because the log was at its bound.",
		}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_wal_repairs_total", ConstLabels: l,
			Help: "Torn tails removed, truncated segments repaired and damaged release marks reset when the log was opened.",
		}),
		truncations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_wal_truncations_total", ConstLabels: l,
			Help: "Background truncations of released entries.",
		}),
		failed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ingest_wal_failed", ConstLabels: l,
			Help: "1 once a write or fsync failed: the log refuses appends until it is reopened.",
		}),
		noSpace: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ingest_wal_no_space", ConstLabels: l,
			Help: "1 while the log's file system is full (ENOSPC or EDQUOT): appends are refused with ErrNoSpace, or the release mark cannot be written. Nothing is lost; it clears by itself once a write succeeds.",
		}),
		noSpaceTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_wal_no_space_total", ConstLabels: l,
			Help: "Writes that failed for lack of room (appends, release marks, spare segments), each undone and tried again later.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_wal_dropped_entries_total", ConstLabels: l,
			Help: "Entries, whole or partial, removed by repairs when the log was opened (torn tails, truncated segments repaired on request); the log names their indexes.",
		}),
		segments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_wal_segments_total", ConstLabels: l,
			Help: "Segment files started, by whether a preallocated spare was ready (preallocated=\"false\": the segment's blocks are allocated as it is written, each sync committing them).",
		}, []string{"preallocated"}),
	}
	m.segments.WithLabelValues("true")
	m.segments.WithLabelValues("false")
	var err error
	m.set, err = metricset.Register(reg, m.depthEntries, m.depthBytes, m.fsync, m.batch, m.appended,
		m.full, m.repairs, m.truncations, m.failed, m.segments, m.noSpace, m.noSpaceTotal, m.dropped)
	return m, err
}

func (m *metrics) unregister() { m.set.Unregister() }
