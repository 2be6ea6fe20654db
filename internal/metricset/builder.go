package metricset

import "github.com/prometheus/client_golang/prometheus"

// Builder makes a component's collectors and keeps each one it makes, so
// that the set registered is exactly the set made: a collector added to a
// component cannot be left out of its registration.
type Builder struct {
	labels prometheus.Labels
	cs     []prometheus.Collector
}

// NewBuilder returns a Builder whose collectors all carry the constant
// labels given (nil: none).
func NewBuilder(constLabels prometheus.Labels) *Builder {
	return &Builder{labels: constLabels}
}

// Add keeps collectors made elsewhere, to be registered with the rest.
func (b *Builder) Add(cs ...prometheus.Collector) { b.cs = append(b.cs, cs...) }

func keep[C prometheus.Collector](b *Builder, c C) C {
	b.cs = append(b.cs, c)
	return c
}

func (b *Builder) opts(name, help string) prometheus.Opts {
	return prometheus.Opts{Name: name, Help: help, ConstLabels: b.labels}
}

// Counter makes a counter.
func (b *Builder) Counter(name, help string) prometheus.Counter {
	return keep(b, prometheus.NewCounter(prometheus.CounterOpts(b.opts(name, help))))
}

// CounterVec makes a counter partitioned by the labels given.
func (b *Builder) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return keep(b, prometheus.NewCounterVec(prometheus.CounterOpts(b.opts(name, help)), labels))
}

// Gauge makes a gauge.
func (b *Builder) Gauge(name, help string) prometheus.Gauge {
	return keep(b, prometheus.NewGauge(prometheus.GaugeOpts(b.opts(name, help))))
}

// GaugeVec makes a gauge partitioned by the labels given.
func (b *Builder) GaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return keep(b, prometheus.NewGaugeVec(prometheus.GaugeOpts(b.opts(name, help)), labels))
}

// Histogram makes a histogram with the buckets given.
func (b *Builder) Histogram(name, help string, buckets []float64) prometheus.Histogram {
	return keep(b, prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: b.labels, Buckets: buckets}))
}

// QueueDepth makes the gauge of one hop of the pipeline,
// ingest_queue_depth_entries{hop=...}; it carries the hop label alone, not
// the Builder's constant labels, so that every tier's queues are one series
// family.
func (b *Builder) QueueDepth(hop string) prometheus.Gauge {
	return keep(b, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ingest_queue_depth_entries", ConstLabels: prometheus.Labels{"hop": hop},
		Help: "Entries waiting at one hop of the pipeline; the hop label names the queue.",
	}))
}

// Register registers every collector made, all or none (see Register).
func (b *Builder) Register(reg prometheus.Registerer) (*Set, error) {
	return Register(reg, b.cs...)
}
