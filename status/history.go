package status

import (
	"context"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/ingest-io/ingest/internal/lifecycle"
)

// The figures a point of history holds, in the order of point.v; their
// names are the members of the history's "series".
const (
	sReceived = iota
	sAcked
	sStored
	sAckP50
	sAckP99
	sFeedP50
	sFeedP99
	sStoreP50
	sStoreP99
	nSeries
)

var seriesNames = [nSeries]string{"received", "acked", "stored", "ack_p50", "ack_p99", "feed_p50", "feed_p99", "store_p50", "store_p99"}

// point is one point of history: the snapshot's figures at one instant,
// over the Window before it. NaN stands for none (metrics the process
// does not register, or an empty window for a latency).
type point struct {
	at     time.Time
	v      [nSeries]float64
	queues map[string]float64 // entries, by hop
}

func newPoint(s *Snapshot) point {
	p := point{at: s.Time, queues: make(map[string]float64, len(s.Queues))}
	rate := func(r *Rate) float64 {
		if r == nil || r.PerSecond == nil {
			return math.NaN()
		}
		return *r.PerSecond
	}
	quantiles := func(l *Latency) (float64, float64) {
		if l == nil || l.P50Seconds == nil {
			return math.NaN(), math.NaN()
		}
		return *l.P50Seconds, *l.P99Seconds
	}
	p.v[sReceived], p.v[sAcked], p.v[sStored] = rate(s.Received), rate(s.Acked), rate(s.Stored)
	p.v[sAckP50], p.v[sAckP99] = quantiles(s.AckLatency)
	p.v[sFeedP50], p.v[sFeedP99] = quantiles(s.FeedLatency)
	p.v[sStoreP50], p.v[sStoreP99] = quantiles(s.StoreLatency)
	for _, q := range s.Queues {
		p.queues[q.Hop] = q.Entries
	}
	return p
}

// history is a ring of points, oldest first from start, and the gathers
// the next point is computed against.
type history struct {
	points []point // len ≤ cap, which is fixed
	start  int     // index of the oldest point once the ring is full
	raw    []sample
}

func (r *history) push(p point) {
	if len(r.points) < cap(r.points) {
		r.points = append(r.points, p)
		return
	}
	r.points[r.start] = p
	r.start = (r.start + 1) % len(r.points)
}

// since returns the points after t, oldest first. Points are compared by
// their time in milliseconds, as /history gives it (and the page asks with
// it again): a point is not after its own time, whatever the nanoseconds
// below that millisecond.
func (r *history) since(t time.Time) []point {
	var out []point
	ms := t.UnixMilli()
	for i := range r.points {
		if p := r.points[(r.start+i)%len(r.points)]; p.at.UnixMilli() > ms {
			out = append(out, p)
		}
	}
	return out
}

// Run takes a point of history every Options.Interval until ctx is done,
// and returns nil then. Each point holds the snapshot's figures at that
// instant, computed over the Window before it as a snapshot is; the
// handler keeps the points of the last Options.History for /history.
func (h *Handler) Run(ctx context.Context) error {
	return lifecycle.Every(ctx, h.opts.Interval, h.record)
}

// record gathers now and adds a point to the history.
func (h *Handler) record() {
	now := h.opts.Now()
	cur, err := h.gather(now)
	if err != nil {
		h.lg.Warn("status: history", "err", err)
		return
	}
	h.hmu.Lock()
	defer h.hmu.Unlock()
	r := &h.hist
	edge := now.Add(-h.opts.Window)
	i := 0
	for i+1 < len(r.raw) && !r.raw[i+1].at.After(edge) {
		i++
	}
	r.raw = append(r.raw[i:], cur)
	r.push(newPoint(compute(r.raw[0], cur)))
}

// appendHistory writes the points after since as the JSON /history
// answers (docs/status.md): columns of numbers, null for none.
func (h *Handler) appendHistory(b []byte, since time.Time) []byte {
	h.hmu.Lock()
	pts := h.hist.since(since)
	h.hmu.Unlock()

	b = append(b, `{"interval_seconds":`...)
	b = strconv.AppendFloat(b, h.opts.Interval.Seconds(), 'g', -1, 64)
	b = append(b, `,"window_seconds":`...)
	b = strconv.AppendFloat(b, h.opts.Window.Seconds(), 'g', -1, 64)
	b = append(b, `,"history_seconds":`...)
	b = strconv.AppendFloat(b, h.opts.History.Seconds(), 'g', -1, 64)
	b = append(b, `,"time":[`...)
	for i, p := range pts {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, p.at.UnixMilli(), 10)
	}
	column := func(b []byte, get func(point) float64) []byte {
		b = append(b, '[')
		for i, p := range pts {
			if i > 0 {
				b = append(b, ',')
			}
			if v := get(p); math.IsNaN(v) || math.IsInf(v, 0) {
				b = append(b, "null"...)
			} else {
				b = strconv.AppendFloat(b, v, 'g', 6, 64)
			}
		}
		return append(b, ']')
	}
	b = append(b, `],"series":{`...)
	for s, name := range seriesNames {
		if s > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, name)
		b = append(b, ':')
		b = column(b, func(p point) float64 { return p.v[s] })
	}
	// Every hop any point has, in the order a message passes them; null
	// where a point has not that hop.
	var hops []string
	for _, p := range pts {
		for hop := range p.queues {
			if !slices.Contains(hops, hop) {
				hops = append(hops, hop)
			}
		}
	}
	slices.SortFunc(hops, compareHops)
	b = append(b, `},"queues":[`...)
	for i, hop := range hops {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"hop":`...)
		b = strconv.AppendQuote(b, hop)
		b = append(b, `,"entries":`...)
		b = column(b, func(p point) float64 {
			if v, ok := p.queues[hop]; ok {
				return v
			}
			return math.NaN()
		})
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}
