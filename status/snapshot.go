package status

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// The metrics the snapshot reads. Every series of a family is summed
// (histograms bucket by bucket).
const (
	mConnections  = "ingest_frontend_connections"
	mReceived     = "ingest_frontend_messages_received_total"
	mAcked        = "ingest_frontend_messages_acked_total"
	mMQTTConns    = "ingest_frontend_mqtt_connections"
	mMQTTAcked    = "ingest_frontend_mqtt_messages_acked_total"
	mRejected     = "ingest_frontend_messages_rejected_total"
	mStored       = "ingest_storage_points_written_total"
	mDelivered    = "ingest_feed_delivered_messages_total"
	mReaders      = "ingest_feed_readers"
	mDepth        = "ingest_queue_depth_entries"
	mDepthBytes   = "ingest_queue_depth_bytes"
	mAckLatency   = "ingest_frontend_ack_latency_seconds"
	mFeedLatency  = "ingest_feed_dispatch_latency_seconds"
	mStoreLatency = "ingest_storage_delivery_latency_seconds"
	mCommands     = "ingest_command_commands"
)

// Metrics are the metric families the page reads: a Gatherer of these
// alone serves it as well as the whole registry does, for less (the
// history gathers every second; see metricset.Subset).
func Metrics() []string {
	return []string{mConnections, mReceived, mAcked, mMQTTConns, mMQTTAcked, mRejected, mStored,
		mDelivered, mReaders, mDepth, mDepthBytes, mAckLatency, mFeedLatency, mStoreLatency, mCommands}
}

// Snapshot is the JSON the page polls. A null member stands for metrics the
// process does not register.
type Snapshot struct {
	// Time is when the metrics were gathered.
	Time time.Time `json:"time"`
	// WindowSeconds is the span rates and latencies cover.
	WindowSeconds float64 `json:"window_seconds"`
	// DevicesConnected counts open device connections, WebSocket and MQTT;
	// MQTTConnected, the MQTT sessions among them.
	DevicesConnected *float64 `json:"devices_connected"`
	MQTTConnected    *float64 `json:"mqtt_connected"`
	// Received, Acked and Rejected are device messages at the frontend;
	// Stored, points the storage writer's sinks have taken (with several
	// sinks, the fewest any one has taken); FeedDelivered,
	// messages written to live-feed readers.
	Received      *Rate `json:"received"`
	Acked         *Rate `json:"acked"`
	MQTTAcked     *Rate `json:"mqtt_acked"` // the MQTT devices' share of Acked
	Rejected      *Rate `json:"rejected"`
	Stored        *Rate `json:"stored"`
	FeedDelivered *Rate `json:"feed_delivered"`
	// FeedReaders counts connected live-feed readers (this page among them).
	FeedReaders *float64 `json:"feed_readers"`
	// Queues are the queue depths, by hop, in hop order.
	Queues []Queue `json:"queues"`
	// AckLatency is the time from a message's receipt at the frontend to its
	// acknowledgement; FeedLatency, to its dispatch to the live feed's
	// readers; StoreLatency, to the storage writer's sink holding it.
	AckLatency   *Latency `json:"ack_latency"`
	FeedLatency  *Latency `json:"feed_latency"`
	StoreLatency *Latency `json:"store_latency"`
	// Commands counts the commands the process's command homes keep, by
	// state; null without a home.
	Commands *Commands `json:"commands"`
}

// Commands are the commands kept, by state (ingest_command_commands):
// those waiting for their device, those sent and not yet answered, and
// those in a final state within the homes' retention.
type Commands struct {
	Queued float64 `json:"queued"`
	Sent   float64 `json:"sent"`
	// Answered is Acknowledged and Failed together.
	Answered     float64 `json:"answered"`
	Acknowledged float64 `json:"acknowledged"`
	Failed       float64 `json:"failed"`
	Expired      float64 `json:"expired"`
	Cancelled    float64 `json:"cancelled"`
}

// Rate is a counter: its total and its rate over the window.
type Rate struct {
	Total float64 `json:"total"`
	// PerSecond is null when the window is empty.
	PerSecond *float64 `json:"per_second"`
}

// Queue is one hop's queue depth.
type Queue struct {
	Hop     string  `json:"hop"`
	Entries float64 `json:"entries"`
	// Bytes is null for queues that only count entries.
	Bytes *float64 `json:"bytes"`
}

// Latency is a histogram over the window.
type Latency struct {
	// Count is the observations in the window.
	Count float64 `json:"count"`
	// P50Seconds and P99Seconds are null when Count is 0.
	P50Seconds *float64 `json:"p50_seconds"`
	P99Seconds *float64 `json:"p99_seconds"`
}

// sample is one gather, reduced to what the snapshot needs.
type sample struct {
	at     time.Time
	values map[string]float64 // counters and gauges, summed over series
	hists  map[string]hist
	depth  map[string]float64 // by hop
	bytes  map[string]float64 // by hop
	cmds   map[string]float64 // by state; nil without a command home
}

// hist is a cumulative histogram: counts[i] observations ≤ bounds[i],
// bounds ascending, +Inf last.
type hist struct {
	bounds []float64
	counts []float64
}

func (h *Handler) gather(now time.Time) (sample, error) {
	mfs, err := h.opts.Gatherer.Gather()
	if err != nil {
		if len(mfs) == 0 {
			return sample{}, fmt.Errorf("gather metrics: %w", err)
		}
		// Gather returns what it could; show that.
		h.lg.Debug("status: gather metrics", "err", err)
	}
	s := sample{at: now, values: map[string]float64{}, hists: map[string]hist{}}
	for _, mf := range mfs {
		switch name := mf.GetName(); name {
		case mStored:
			// Each sink of a writer counts the points it has taken
			// (label sink): the points stored are those the sink that
			// has taken fewest has, not their sum over the sinks.
			by := map[string]float64{}
			for _, m := range mf.GetMetric() {
				by[label(m, "sink")] += m.GetCounter().GetValue()
			}
			s.values[name] = 0
			if len(by) > 0 {
				s.values[name] = slices.Min(slices.Collect(maps.Values(by)))
			}
		case mConnections, mReceived, mAcked, mRejected, mDelivered, mReaders, mMQTTConns, mMQTTAcked:
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			s.values[name] = sum
		case mDepth, mDepthBytes:
			by := map[string]float64{}
			for _, m := range mf.GetMetric() {
				by[label(m, "hop")] += m.GetGauge().GetValue()
			}
			if name == mDepth {
				s.depth = by
			} else {
				s.bytes = by
			}
		case mAckLatency, mFeedLatency, mStoreLatency:
			s.hists[name] = mergeHist(mf.GetMetric())
		case mCommands:
			s.cmds = map[string]float64{}
			for _, m := range mf.GetMetric() {
				s.cmds[label(m, "state")] += m.GetGauge().GetValue()
			}
		}
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// mergeHist adds up the series of a histogram family bucket by bucket.
func mergeHist(ms []*dto.Metric) hist {
	byBound := map[float64]float64{}
	var total float64
	for _, m := range ms {
		h := m.GetHistogram()
		for _, b := range h.GetBucket() {
			byBound[b.GetUpperBound()] += float64(b.GetCumulativeCount())
		}
		total += float64(h.GetSampleCount())
	}
	byBound[math.Inf(1)] = total
	var out hist
	for b := range byBound {
		out.bounds = append(out.bounds, b)
	}
	slices.Sort(out.bounds)
	for _, b := range out.bounds {
		out.counts = append(out.counts, byBound[b])
	}
	return out
}

// delta is cur - base for a counter, or cur after a reset.
func delta(cur, base float64) float64 {
	if cur < base {
		return cur
	}
	return cur - base
}

func compute(base, cur sample) *Snapshot {
	window := cur.at.Sub(base.at).Seconds()
	s := &Snapshot{Time: cur.at.UTC(), WindowSeconds: max(window, 0), Queues: []Queue{}}
	gauge := func(name string) *float64 {
		if v, ok := cur.values[name]; ok {
			return &v
		}
		return nil
	}
	rate := func(name string) *Rate {
		v, ok := cur.values[name]
		if !ok {
			return nil
		}
		r := &Rate{Total: v}
		if window > 0 {
			ps := delta(v, base.values[name]) / window
			r.PerSecond = &ps
		}
		return r
	}
	s.DevicesConnected = gauge(mConnections)
	s.MQTTConnected, s.MQTTAcked = gauge(mMQTTConns), rate(mMQTTAcked)
	s.FeedReaders = gauge(mReaders)
	s.Received, s.Acked, s.Rejected = rate(mReceived), rate(mAcked), rate(mRejected)
	s.Stored, s.FeedDelivered = rate(mStored), rate(mDelivered)
	for hop, n := range cur.depth {
		q := Queue{Hop: hop, Entries: n}
		if b, ok := cur.bytes[hop]; ok {
			q.Bytes = &b
		}
		s.Queues = append(s.Queues, q)
	}
	slices.SortFunc(s.Queues, func(a, b Queue) int { return compareHops(a.Hop, b.Hop) })
	s.AckLatency = latency(base.hists[mAckLatency], cur.hists, mAckLatency)
	s.FeedLatency = latency(base.hists[mFeedLatency], cur.hists, mFeedLatency)
	s.StoreLatency = latency(base.hists[mStoreLatency], cur.hists, mStoreLatency)
	if c := cur.cmds; c != nil {
		s.Commands = &Commands{Queued: c["queued"], Sent: c["sent"], Answered: c["acknowledged"] + c["failed"],
			Acknowledged: c["acknowledged"], Failed: c["failed"], Expired: c["expired"], Cancelled: c["cancelled"]}
	}
	return s
}

// compareHops orders hops as a message passes them, and hops no message
// passes (a command home's) after them by name: one order, whatever the
// order the metrics were read in.
func compareHops(a, b string) int {
	if d := hopOrder(a) - hopOrder(b); d != 0 {
		return d
	}
	return cmp.Compare(a, b)
}

// hopOrder puts the queues in the order a message passes them.
func hopOrder(hop string) int {
	switch hop {
	case "frontend":
		return 0
	case "uplink_inflight":
		return 1
	case "middletier_inbox":
		return 2
	case "middletier":
		return 3
	}
	return 4
}

func latency(base hist, hists map[string]hist, name string) *Latency {
	cur, ok := hists[name]
	if !ok {
		return nil
	}
	// The window's histogram: cur minus base, bucket by bucket (base has
	// the same buckets, or none if the family came later or was reset).
	win := hist{bounds: cur.bounds, counts: make([]float64, len(cur.counts))}
	reset := len(base.counts) != len(cur.counts)
	for i := range cur.counts {
		if !reset && cur.counts[i] < base.counts[i] {
			reset = true
		}
	}
	for i, c := range cur.counts {
		if reset {
			win.counts[i] = c
		} else {
			win.counts[i] = c - base.counts[i]
		}
	}
	l := &Latency{Count: win.counts[len(win.counts)-1]}
	if l.Count > 0 {
		p50, p99 := quantile(0.5, win), quantile(0.99, win)
		l.P50Seconds, l.P99Seconds = &p50, &p99
	}
	return l
}

// quantile estimates the q-quantile of h as histogram_quantile does:
// linear interpolation within the bucket that holds it, the lower bound of
// the first bucket taken as 0, and the highest finite bound for the +Inf
// bucket. h must hold at least one observation.
func quantile(q float64, h hist) float64 {
	n := len(h.counts)
	rank := q * h.counts[n-1]
	i, _ := slices.BinarySearchFunc(h.counts, rank, func(c, r float64) int {
		switch {
		case c < r:
			return -1
		case c > r:
			return 1
		}
		return 0
	})
	if i >= n-1 {
		if n >= 2 {
			return h.bounds[n-2]
		}
		return 0
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = h.bounds[i-1], h.counts[i-1]
	}
	hi := h.bounds[i]
	if lo > hi || h.counts[i] == below {
		return hi
	}
	return lo + (hi-lo)*(rank-below)/(h.counts[i]-below)
}
