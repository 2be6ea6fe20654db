// Package series holds what the sinks share of a point's place in a store:
// the labels every series of a point carries in the Prometheus-style
// stores (the embedded TSDB and remote-write), which are also the tags of
// its InfluxDB line, and the default bound on a string field's value, which
// becomes a label value. Sinks that share them write the same series for
// the same point; docs/storage.md has the mapping.
package series

import (
	"maps"
	"slices"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/ingest-io/ingest/storage"
)

// MaxStringBytes is the default bound on a string field's value in the
// sinks that make it a label value: longer values are dropped and counted
// (reason "string_too_long"), for long free text makes poor series.
const MaxStringBytes = 1024

// Base appends the labels every series of p carries: device, and the
// registry labels with their names made valid (storage.LabelName). A
// registry label that would take the place of device, __name__ or value,
// or of another registry label (after sanitising), is left out; so is an
// empty one.
func Base(dst []labels.Label, p *storage.Point) []labels.Label {
	dst = append(dst, labels.Label{Name: "device", Value: p.Device})
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		v := p.Labels[k]
		name := storage.LabelName(k)
		if v == "" || name == "device" || name == "value" || name == model.MetricNameLabel {
			continue
		}
		if slices.ContainsFunc(dst, func(l labels.Label) bool { return l.Name == name }) {
			continue
		}
		dst = append(dst, labels.Label{Name: name, Value: v})
	}
	return dst
}
