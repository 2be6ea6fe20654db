package embedded_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/storage/embedded"
)

// TestWriteGathered writes a registry's counter, gauge, histogram and
// summary into the store and reads them back through the query API as a
// scrape of the same registry would have stored them.
func TestWriteGathered(t *testing.T) {
	db, dbReg := openTSDB(t, t.TempDir(), embedded.Options{})
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()

	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "things_total", Help: "h"}, []string{"kind", "job"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "depth", Help: "h"})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "lat_seconds", Help: "h", Buckets: []float64{0.1, 1}})
	s := prometheus.NewSummary(prometheus.SummaryOpts{Name: "size_bytes", Help: "h", Objectives: map[float64]float64{0.5: 0.05}})
	reg.MustRegister(c, g, h, s)
	c.WithLabelValues("a", "inner").Add(3)
	g.Set(7)
	for _, v := range []float64{0.05, 0.5, 5} {
		h.Observe(v)
		s.Observe(v)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	target := map[string]string{"job": "ingest", "instance": "127.0.0.1:9090"}
	at := time.Now().Truncate(time.Millisecond)
	n, err := db.WriteGathered(context.Background(), mfs, target, at)
	if err != nil {
		t.Fatal(err)
	}
	// 1 counter + 1 gauge + 3 buckets, sum, count + 1 quantile, sum, count.
	if n != 10 {
		t.Fatalf("appended %d samples, want 10", n)
	}
	for q, want := range map[string]string{
		`things_total{job="ingest",instance="127.0.0.1:9090",kind="a",exported_job="inner"}`: "3",
		`depth{job="ingest"}`:                                       "7",
		`lat_seconds_bucket{job="ingest",le="0.1"}`:                 "1",
		`lat_seconds_bucket{job="ingest",le="1.0"}`:                 "2",
		`lat_seconds_bucket{job="ingest",le="+Inf"}`:                "3",
		`lat_seconds_count{job="ingest"}`:                           "3",
		`lat_seconds_sum{job="ingest"}`:                             "5.55",
		`size_bytes{job="ingest",quantile="0.5"}`:                   "0.5",
		`size_bytes_count{job="ingest"}`:                            "3",
		`histogram_quantile(0.5, lat_seconds_bucket{job="ingest"})`: "0.55",
	} {
		if v := testkit.PromScalar(t, srv.URL, q, at); v != want {
			t.Errorf("%s = %q, want %s", q, v, want)
		}
	}

	// The same instant again: nothing new, and nothing dropped as a
	// conflict, since every value is the same.
	if _, err := db.WriteGathered(context.Background(), mfs, target, at); err != nil {
		t.Fatal(err)
	}
	g.Set(8)
	mfs, _ = reg.Gather()
	if _, err := db.WriteGathered(context.Background(), mfs, target, at); err != nil {
		t.Fatal(err)
	}
	if v := testkit.Metric(t, dbReg, "ingest_storage_dropped_samples_total", "sink", "self"); v != 1 {
		t.Fatalf("dropped samples after a second value at one instant: %v, want 1", v)
	}
}
