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
