// Package metricset registers a component's collectors as one set, all or
// none, and unregisters them when the component closes, so that instances of
// a component can come and go in one process (tests, restarts in place).
package metricset

import "github.com/prometheus/client_golang/prometheus"

// Set is the collectors of one component, registered together.
type Set struct {
	reg prometheus.Registerer
	cs  []prometheus.Collector
}

// Register registers every collector with reg, or none: on the first
// failure it unregisters those already registered and returns the error. A
// nil reg registers nothing.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) (*Set, error) {
	s := &Set{reg: reg}
	if reg == nil {
		return s, nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			s.Unregister()
			return nil, err
		}
		s.cs = append(s.cs, c)
	}
	return s, nil
}

// Unregister unregisters the set's collectors. It is safe to call more than
// once.
func (s *Set) Unregister() {
	if s == nil || s.reg == nil {
		return
	}
	for _, c := range s.cs {
		s.reg.Unregister(c)
	}
	s.cs = nil
}
