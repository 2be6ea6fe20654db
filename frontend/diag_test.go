package frontend

import (
	"fmt"
	"math"
	rtmetrics "runtime/metrics"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// procStats samples what explains a latency tail in one process, once per
// interval: scheduling latency (time goroutines waited runnable), GC
// cycles and stop-the-world time, and, in the server, the WAL's fsync
// durations and the server's own ack latency histogram.
type procStats struct {
	samples []rtmetrics.Sample
	prev    map[string]hist
	reg     prometheus.Gatherer
}

// hist is a cumulative histogram: counts[i] observations <= bounds[i].
type hist struct {
	bounds []float64
	counts []uint64
}

func newProcStats(reg prometheus.Gatherer) *procStats {
	p := &procStats{reg: reg, prev: map[string]hist{}, samples: []rtmetrics.Sample{
		{Name: "/sched/latencies:seconds"},
		{Name: "/sched/pauses/total/gc:seconds"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}}
	p.line() // baseline
	return p
}

// line returns one summary of the interval since the previous call.
func (p *procStats) line() string {
	rtmetrics.Read(p.samples)
	cur := map[string]hist{
		"sched": fromRuntime(p.samples[0].Value.Float64Histogram()),
		"gcstw": fromRuntime(p.samples[1].Value.Float64Histogram()),
	}
	cycles := p.samples[2].Value.Uint64()
	if p.reg != nil {
		mfs, _ := p.reg.Gather()
		for _, mf := range mfs {
			switch mf.GetName() {
			case "ingest_wal_fsync_duration_seconds":
				cur["fsync"] = fromProm(mf.GetMetric()[0].GetHistogram())
			case "ingest_frontend_ack_latency_seconds":
				cur["srvack"] = fromProm(mf.GetMetric()[0].GetHistogram())
			}
		}
	}
	var b strings.Builder
	for _, k := range []string{"sched", "gcstw", "fsync", "srvack"} {
		c, ok := cur[k]
		if !ok {
			continue
		}
		d := c.sub(p.prev[k])
		fmt.Fprintf(&b, " %s n=%d p99<=%s max<=%s", k, d.total(), fmtSec(d.quantile(.99)), fmtSec(d.quantile(1)))
	}
	fmt.Fprintf(&b, " gc=%d", cycles-p.prev["cycles"].total())
	cur["cycles"] = hist{bounds: []float64{0}, counts: []uint64{cycles}}
	p.prev = cur
	return b.String()
}

func fmtSec(s float64) string {
	if math.IsInf(s, 1) {
		return "inf"
	}
	return time.Duration(s * 1e9).Round(time.Microsecond).String()
}

func fromRuntime(h *rtmetrics.Float64Histogram) hist {
	// Buckets[i] is the lower bound of Counts[i]; make it cumulative by upper bound.
	out := hist{bounds: h.Buckets[1:], counts: make([]uint64, len(h.Counts))}
	var n uint64
	for i, c := range h.Counts {
		n += c
		out.counts[i] = n
	}
	return out
}

func fromProm(h *dto.Histogram) hist {
	out := hist{}
	for _, b := range h.GetBucket() {
		out.bounds = append(out.bounds, b.GetUpperBound())
		out.counts = append(out.counts, b.GetCumulativeCount())
	}
	out.bounds = append(out.bounds, math.Inf(1))
	out.counts = append(out.counts, h.GetSampleCount())
	return out
}

func (h hist) sub(o hist) hist {
	d := hist{bounds: h.bounds, counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		d.counts[i] = h.counts[i]
		if i < len(o.counts) {
			d.counts[i] -= o.counts[i]
		}
	}
	return d
}

func (h hist) total() uint64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h hist) quantile(q float64) float64 {
	n := h.total()
	if n == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(n)))
	for i, c := range h.counts {
		if c >= want {
			return h.bounds[i]
		}
	}
	return math.Inf(1)
}
