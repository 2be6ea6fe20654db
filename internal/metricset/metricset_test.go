package metricset

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestAllOrNone(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := prometheus.NewCounter(prometheus.CounterOpts{Name: "a_total", Help: "a"})
	if err := reg.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "b_total", Help: "b"})); err != nil {
		t.Fatal(err)
	}
	b := prometheus.NewCounter(prometheus.CounterOpts{Name: "b_total", Help: "b"})
	if _, err := Register(reg, a, b); err == nil {
		t.Fatal("a clashing set registered")
	}
	// a was rolled back: it registers again.
	s, err := Register(reg, a)
	if err != nil {
		t.Fatalf("rolled-back collector: %v", err)
	}
	s.Unregister()
	s.Unregister()
	if _, err := Register(reg, a); err != nil {
		t.Fatalf("after unregister: %v", err)
	}
	if s, err := Register(nil, a); err != nil || s == nil {
		t.Fatal("nil registerer")
	}
}

func TestBuilderRegistersWhatItMade(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := NewBuilder(prometheus.Labels{"tier": "x"})
	c := b.Counter("c_total", "c")
	b.CounterVec("cv_total", "cv", "reason").WithLabelValues("a")
	b.Gauge("g", "g")
	b.GaugeVec("gv", "gv", "k").WithLabelValues("a")
	b.Histogram("h_seconds", "h", []float64{1})
	b.QueueDepth("inbox")
	s, err := b.Register(reg)
	if err != nil {
		t.Fatal(err)
	}
	c.Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 6 {
		t.Fatalf("gathered %d families, want 6", len(mfs))
	}
	for _, mf := range mfs {
		want := "tier"
		if mf.GetName() == "ingest_queue_depth_entries" {
			want = "hop"
		}
		found := false
		for _, l := range mf.GetMetric()[0].GetLabel() {
			found = found || l.GetName() == want
		}
		if !found {
			t.Errorf("%s: no label %q", mf.GetName(), want)
		}
	}
	s.Unregister()
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("after Unregister: %d families left", len(mfs))
	}
}
