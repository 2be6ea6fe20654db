package metricset

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Subset is a registry that keeps, beside every collector registered with
// it, a second registry of the collectors that make a metric named in its
// names. A reader that gathers a few metrics often (the status page's
// history, every second) gathers the second one (Gatherer), which collects
// those collectors alone instead of every one of the process: its runtime's,
// its /proc readings, its TSDB's. Gather, as a *prometheus.Registry's,
// gathers them all.
type Subset struct {
	*prometheus.Registry
	sub   *prometheus.Registry
	names map[string]bool
}

// NewSubset returns a Subset of all, whose second registry takes the
// collectors that make a metric named in names.
func NewSubset(all *prometheus.Registry, names []string) *Subset {
	s := &Subset{Registry: all, sub: prometheus.NewRegistry(), names: map[string]bool{}}
	for _, n := range names {
		s.names[n] = true
	}
	return s
}

// Gatherer gathers the collectors of the named metrics alone.
func (s *Subset) Gatherer() prometheus.Gatherer { return s.sub }

// Register registers c with the whole registry and, when it makes one of
// the named metrics, with the second one too: with both or neither.
func (s *Subset) Register(c prometheus.Collector) error {
	if err := s.Registry.Register(c); err != nil {
		return err
	}
	if !s.wants(c) {
		return nil
	}
	if err := s.sub.Register(c); err != nil {
		s.Registry.Unregister(c)
		return err
	}
	return nil
}

// MustRegister registers each collector as Register does, and panics on
// the first that fails, as a *prometheus.Registry's MustRegister.
func (s *Subset) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := s.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister unregisters c from both registries.
func (s *Subset) Unregister(c prometheus.Collector) bool {
	s.sub.Unregister(c)
	return s.Registry.Unregister(c)
}

// wants reports whether c describes a metric of the subset's names.
func (s *Subset) wants(c prometheus.Collector) bool {
	ch := make(chan *prometheus.Desc, 16)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	want := false
	for d := range ch {
		if s.names[descName(d)] {
			want = true
		}
	}
	return want
}

// descName is the name of d's metric. A Desc shows it only in its String
// (`Desc{fqName: "name", help: …}`), the form client_golang has printed
// since its first release; TestSubset fails if that changes.
func descName(d *prometheus.Desc) string {
	str := d.String()
	const key = "fqName: "
	i := strings.Index(str, key)
	if i < 0 {
		return ""
	}
	rest := str[i+len(key):]
	q, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return ""
	}
	name, err := strconv.Unquote(q)
	if err != nil {
		return ""
	}
	return name
}
