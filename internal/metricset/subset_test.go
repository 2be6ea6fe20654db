package metricset_test

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

// TestSubset: collectors of the named metrics, made by a Builder, wrapped
// with labels, or registered by MustRegister, are gathered by the Subset's
// Gatherer; the others only by the whole registry. Unregistering removes a
// collector from both, and a collector the whole registry refuses is in
// neither.
func TestSubset(t *testing.T) {
	s := metricset.NewSubset(prometheus.NewRegistry(), []string{"a_total", "b", "c_seconds", "d"})
	b := metricset.NewBuilder(nil)
	b.Counter("a_total", "A.")
	b.Gauge("other", "Not named.")
	b.Histogram("c_seconds", "C.", []float64{1})
	set, err := b.Register(s)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"sink": "x"}, s)
	bv := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "b", Help: "B."}, []string{"l"})
	if err := wrapped.Register(bv); err != nil {
		t.Fatal(err)
	}
	bv.WithLabelValues("1").Set(1)
	d := prometheus.NewGauge(prometheus.GaugeOpts{Name: "d", Help: "D."})
	s.MustRegister(d, prometheus.NewGauge(prometheus.GaugeOpts{Name: "e", Help: "Not named."}))

	names := func(g prometheus.Gatherer) []string {
		mfs, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, mf := range mfs {
			out = append(out, mf.GetName())
		}
		return out
	}
	if got, want := names(s.Gatherer()), []string{"a_total", "b", "c_seconds", "d"}; !slices.Equal(got, want) {
		t.Errorf("subset gathers %v, want %v", got, want)
	}
	if got, want := names(s), []string{"a_total", "b", "c_seconds", "d", "e", "other"}; !slices.Equal(got, want) {
		t.Errorf("whole registry gathers %v, want %v", got, want)
	}

	// Refused by the whole registry (the name taken): in neither.
	dup := prometheus.NewCounter(prometheus.CounterOpts{Name: "a_total", Help: "A."})
	if err := s.Register(dup); err == nil {
		t.Error("a second a_total registered")
	}
	set.Unregister()
	s.Unregister(d)
	if got, want := names(s.Gatherer()), []string{"b"}; !slices.Equal(got, want) {
		t.Errorf("after unregistering, subset gathers %v, want %v", got, want)
	}
	if got, want := names(s), []string{"b", "e"}; !slices.Equal(got, want) {
		t.Errorf("after unregistering, whole registry gathers %v, want %v", got, want)
	}
}
