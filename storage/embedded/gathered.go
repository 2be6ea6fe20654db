package embedded

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	promstorage "github.com/prometheus/prometheus/storage"

	"github.com/ingest-io/ingest/storage"
)

// WriteGathered appends the metric families mfs (what a
// prometheus.Gatherer returns) to the store as samples at t, as a
// Prometheus scrape of them would: a counter, gauge or untyped metric is
// one sample; a histogram is its cumulative <name>_bucket series (with
// le, +Inf included), <name>_sum and <name>_count; a summary its quantile
// series, <name>_sum and <name>_count. Every series gets the labels of
// target (job and instance, say); a metric's own label of the same name
// is kept as exported_<name>, as Prometheus does. The engine writes its
// own metrics this way, so that a Grafana pointed at the query API alone
// can chart the engine.
//
// The samples go in one transaction, taking turns with Write's; it
// returns the number appended. Samples the store cannot take (older than
// the out-of-order window, or a second value at a timestamp already
// taken) are dropped and counted in ingest_storage_dropped_samples_total
// with sink "self". A failed commit stops the TSDB's writes as Write's
// does. WriteGathered does not fsync: the samples reach the disk with the
// next Write's fsync, the write logs' own, or Close, and a power loss may
// take the last of them, which carry no device data.
func (s *TSDB) WriteGathered(ctx context.Context, mfs []*dto.MetricFamily, target map[string]string, t time.Time) (int, error) {
	if err := s.Failed(); err != nil {
		return 0, &storage.KindError{Kind: "sync", Err: fmt.Errorf("tsdb stopped: %w", err)}
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	g := gathered{app: s.db.AppenderV2(ctx), target: target, t: t.UnixMilli()}
	for _, mf := range mfs {
		if err := g.family(mf); err != nil {
			g.app.Rollback()
			return 0, &storage.KindError{Kind: "append", Err: err}
		}
	}
	wblFailed := s.m.wblWritesFailed()
	if err := g.app.Commit(); err != nil {
		err = fmt.Errorf("commit tsdb: %w", err)
		s.stop(err)
		return 0, &storage.KindError{Kind: "commit", Err: err}
	}
	if s.m.wblWritesFailed() > wblFailed {
		err := errors.New("commit tsdb: write-behind log write failed (the TSDB's log says why)")
		s.stop(err)
		return 0, &storage.KindError{Kind: "commit", Err: err}
	}
	s.m.samples.Add(float64(g.n))
	for reason, c := range map[string]int{"too_old": g.tooOld, "duplicate_timestamp": g.dupTS} {
		if c > 0 {
			s.m.dropped.WithLabelValues("self", reason).Add(float64(c))
		}
	}
	return g.n, nil
}

// gathered is one WriteGathered transaction.
type gathered struct {
	app    promstorage.AppenderV2
	target map[string]string
	t      int64
	b      labels.ScratchBuilder

	n, tooOld, dupTS int
}

func (g *gathered) family(mf *dto.MetricFamily) error {
	name := mf.GetName()
	for _, m := range mf.GetMetric() {
		var err error
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			err = g.sample(name, m, "", "", m.GetCounter().GetValue())
		case dto.MetricType_GAUGE:
			err = g.sample(name, m, "", "", m.GetGauge().GetValue())
		case dto.MetricType_UNTYPED:
			err = g.sample(name, m, "", "", m.GetUntyped().GetValue())
		case dto.MetricType_SUMMARY:
			sm := m.GetSummary()
			for _, q := range sm.GetQuantile() {
				if err = g.sample(name, m, model.QuantileLabel, labels.FormatOpenMetricsFloat(q.GetQuantile()), q.GetValue()); err != nil {
					return err
				}
			}
			if err = g.sample(name+"_sum", m, "", "", sm.GetSampleSum()); err == nil {
				err = g.sample(name+"_count", m, "", "", float64(sm.GetSampleCount()))
			}
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			h := m.GetHistogram()
			inf := false
			for _, b := range h.GetBucket() {
				ub := b.GetUpperBound()
				inf = inf || math.IsInf(ub, +1)
				if err = g.sample(name+"_bucket", m, model.BucketLabel, labels.FormatOpenMetricsFloat(ub), float64(b.GetCumulativeCount())); err != nil {
					return err
				}
			}
			if !inf {
				err = g.sample(name+"_bucket", m, model.BucketLabel, "+Inf", float64(h.GetSampleCount()))
			}
			if err == nil {
				err = g.sample(name+"_sum", m, "", "", h.GetSampleSum())
			}
			if err == nil {
				err = g.sample(name+"_count", m, "", "", float64(h.GetSampleCount()))
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sample appends one sample of the series name with m's labels, the
// target's, and extra=extraValue if extra is set.
func (g *gathered) sample(name string, m *dto.Metric, extra, extraValue string, v float64) error {
	g.b.Reset()
	g.b.Add(model.MetricNameLabel, name)
	for _, lp := range m.GetLabel() {
		n := lp.GetName()
		if _, clash := g.target[n]; clash {
			n = model.ExportedLabelPrefix + n
		}
		g.b.Add(n, lp.GetValue())
	}
	for n, v := range g.target {
		g.b.Add(n, v)
	}
	if extra != "" {
		g.b.Add(extra, extraValue)
	}
	g.b.Sort()
	ls := g.b.Labels()
	_, err := g.app.Append(0, ls, 0, g.t, v, nil, nil, promstorage.AppendV2Options{})
	return tally(err, ls, &g.n, &g.tooOld, &g.dupTS)
}
