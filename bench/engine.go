package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// engineFigures is what the engine's own metrics say about the sending
// window: the latency from a message's receipt to the store holding it,
// the fsyncs its write-ahead logs waited for in the same minutes, and what
// its Go runtime allocated per acknowledged message.
type engineFigures struct {
	// StoreDelivery is ingest_storage_delivery_latency_seconds: from the
	// frontend's receipt of a message to the sink holding it (for the
	// embedded TSDB, fsynced), so device → queryable less the device's own
	// send.
	StoreDelivery *histFigure            `json:"store_delivery_ms,omitempty"`
	Fsync         map[string]*histFigure `json:"wal_fsync_ms,omitempty"` // by hop
	AllocPerMsg   float64                `json:"alloc_bytes_per_message,omitempty"`
}

// histFigure summarises the observations a histogram gained between two
// scrapes. Quantiles are interpolated within a bucket, as PromQL's
// histogram_quantile does, so they are as fine as the buckets.
type histFigure struct {
	Count float64 `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
}

// scrape is one reading of the engine's metrics endpoint.
type scrape map[string]*dto.MetricFamily

// scrapeEngine reads the engine's metrics; nil if it cannot.
func scrapeEngine(ctx context.Context, url string) scrape {
	if url == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	s, err := parseScrape(resp.Body)
	if err != nil {
		return nil
	}
	return s
}

// parseScrape parses the Prometheus text exposition.
func parseScrape(r io.Reader) (scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// engineDelta is what the engine's metrics gained over the sending window,
// from before to sent, with acked messages acknowledged in it; and the
// store's delivery latency from before to stored, once what was sent is
// stored. Nil without the scrapes.
func engineDelta(before, sent, stored scrape, acked int64) *engineFigures {
	if before == nil || sent == nil {
		return nil
	}
	f := &engineFigures{Fsync: map[string]*histFigure{}}
	if stored != nil {
		f.StoreDelivery = histDelta(before, stored, "ingest_storage_delivery_latency_seconds", "", "")
	}
	for _, hop := range []string{"frontend", "middletier"} {
		if h := histDelta(before, sent, "ingest_wal_fsync_duration_seconds", "hop", hop); h != nil {
			f.Fsync[hop] = h
		}
	}
	if acked > 0 {
		a, _ := sampleOf(sent, "go_memstats_alloc_bytes_total", "", "")
		b, _ := sampleOf(before, "go_memstats_alloc_bytes_total", "", "")
		f.AllocPerMsg = (a - b) / float64(acked)
	}
	return f
}

// metricOf is the first metric of family name whose label key is value
// (the first of any, with key empty); nil if there is none.
func metricOf(s scrape, name, key, value string) *dto.Metric {
	mf := s[name]
	if mf == nil {
		return nil
	}
	for _, m := range mf.Metric {
		if key == "" {
			return m
		}
		for _, l := range m.Label {
			if l.GetName() == key && l.GetValue() == value {
				return m
			}
		}
	}
	return nil
}

// sampleOf is the value of the counter, gauge or untyped metric that
// metricOf finds; false if there is none.
func sampleOf(s scrape, name, key, value string) (float64, bool) {
	m := metricOf(s, name, key, value)
	switch {
	case m == nil:
		return 0, false
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	case m.Untyped != nil:
		return m.Untyped.GetValue(), true
	}
	return 0, false
}

// histogramOf is the histogram that metricOf finds; nil if there is none.
func histogramOf(s scrape, name, key, value string) *dto.Histogram {
	return metricOf(s, name, key, value).GetHistogram()
}

// histDelta summarises what a histogram gained between the scrapes, in
// milliseconds; nil if it gained nothing.
func histDelta(before, after scrape, name, key, value string) *histFigure {
	a := histogramOf(after, name, key, value)
	if a == nil {
		return nil
	}
	b := histogramOf(before, name, key, value)
	bounds := make([]float64, 0, len(a.Bucket))
	cum := make([]float64, 0, len(a.Bucket))
	for i, bk := range a.Bucket {
		n := float64(bk.GetCumulativeCount())
		if b != nil && i < len(b.Bucket) && b.Bucket[i].GetUpperBound() == bk.GetUpperBound() {
			n -= float64(b.Bucket[i].GetCumulativeCount())
		}
		bounds = append(bounds, bk.GetUpperBound())
		cum = append(cum, n)
	}
	total := float64(a.GetSampleCount())
	if b != nil {
		total -= float64(b.GetSampleCount())
	}
	if total <= 0 {
		return nil
	}
	q := func(p float64) float64 { return bucketQuantile(p, bounds, cum, total) * 1000 }
	return &histFigure{Count: total, P50: q(0.5), P99: q(0.99), P999: q(0.999)}
}

// bucketQuantile is the p-quantile of total observations counted in
// cumulative buckets with upper bounds bounds (ascending, +Inf implied
// after the last), interpolated linearly within the bucket it falls in;
// +Inf when it falls past the last bound.
func bucketQuantile(p float64, bounds, cum []float64, total float64) float64 {
	rank := p * total
	i := sort.Search(len(cum), func(i int) bool { return cum[i] >= rank })
	if i == len(cum) {
		return math.Inf(1)
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = bounds[i-1], cum[i-1]
	}
	in := cum[i] - below
	if in <= 0 {
		return bounds[i]
	}
	return lo + (bounds[i]-lo)*(rank-below)/in
}

// printEngine prints the engine's own figures of the run.
func printEngine(w io.Writer, f *engineFigures) {
	if f == nil {
		return
	}
	if h := f.StoreDelivery; h != nil {
		fmt.Fprintf(w, "store:      %.0f points, receipt → stored p50 %s, p99 %s, p99.9 %s (the engine's histogram, interpolated in its buckets)\n",
			h.Count, msOrPast(h.P50), msOrPast(h.P99), msOrPast(h.P999))
	}
	for _, hop := range []string{"frontend", "middletier"} {
		if h := f.Fsync[hop]; h != nil {
			fmt.Fprintf(w, "fsync:      %s WAL, %.0f syncs, p50 %s, p99 %s, p99.9 %s\n", hop, h.Count, msOrPast(h.P50), msOrPast(h.P99), msOrPast(h.P999))
		}
	}
	if f.AllocPerMsg > 0 {
		fmt.Fprintf(w, "alloc:      %.0f B per acknowledged message (the engine's go_memstats_alloc_bytes_total)\n", f.AllocPerMsg)
	}
}

// msOrPast formats milliseconds, +Inf as past the last bucket.
func msOrPast(v float64) string {
	if math.IsInf(v, 1) {
		return "past the last bucket"
	}
	return fmt.Sprintf("%.2f ms", v)
}
