package embedded

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	promstorage "github.com/prometheus/prometheus/storage"

	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/internal/series"
)

// maxCachedSeries bounds refCache: past it the cache is dropped wholesale
// and fills again from the series written next.
const maxCachedSeries = 1 << 20

// refCache keeps, for each series the TSDB's commits have appended to, the
// head's reference to it (the storage.SeriesRef that Append returns) and
// its label set, so that a commit appends to a series it has seen by
// reference: no label set built, no lookup of the head's series by the
// labels' hash. The label set of a series is built once, when it is first
// seen. A series is known by what its labels are made of (seriesKey): its
// point's device and registry labels, its field, and for a string field
// its value; two keys may name one series ("a.b" and "a_b"), a key never
// names two.
//
// A reference the cache holds is always right or unknown to the head, never
// another series' (github.com/prometheus/prometheus v0.316.0, tsdb/head.go
// and tsdb/head_append_v2.go):
//   - The head gives each series it creates the next number of a counter
//     (lastSeriesID.Inc in getOrCreateWithOptionalID) that only grows, and
//     at a start past every reference its WAL holds. The cache lives no
//     longer than the TSDB it was filled from.
//   - headAppenderV2.Append looks the reference up (series.getByID) and,
//     when the head no longer has it (its garbage collection removed the
//     series after a truncation), takes the series from the labels passed
//     along instead: getOrCreate, as an Append with reference 0 does. So
//     the cache keeps each reference's labels and passes them along; the
//     reference Append returns (the new series') replaces the old one.
//   - A series that the collection removes while the appender holds it is
//     taken again by its own labels (lockForAppend).
//
// So the cache changes how a series is found, never which series a sample
// goes to, nor what a commit logs. Its memory is bounded: it is dropped
// wholesale when it holds maxCachedSeries series (each its key, its
// reference and the label set it shares with the head while the series
// lives), and when the head's oldest time rises (a truncation,
// after which the head drops the series that went quiet; their
// references would only fall back to the labels).
//
// It is used under TSDB.appendMu.
type refCache struct {
	bound   int
	n       int // series held, across devices
	devices map[string]*deviceRefs
	minTime int64 // the head's MinTime at the last commit

	key  []byte   // scratch: a point's device key
	keys []string // scratch: a point's registry label names, sorted
}

// deviceRefs are the series of one device key: one device with one set of
// registry labels.
type deviceRefs struct {
	key    string
	base   []labels.Label // series.Base of its points, in name order
	series map[seriesKey]seriesRef
	// id is base encoded, in name order: one for every device key whose
	// points make the same series (registry labels that base leaves out
	// differ, or that sort apart before their names are made valid), and
	// the same again after the cache is dropped (txnPoints).
	id string
	// The Write txn's chain of the id's points (txnPoints.heads[head]):
	// found by id once per Write, not once per point.
	txn  uint64
	head int
}

// txnPoints are the points of one Write (one transaction) by their series'
// base labels (deviceRefs.id), with their times. They are kept apart from
// the cache, which may be dropped mid-Write, and only for the Write: their
// memory is that of the largest Write's, whatever the devices.
type txnPoints struct {
	txn   uint64         // Writes so far
	byID  map[string]int // id → its index in heads
	heads []int          // an id's latest point: its index in pts, or -1
	pts   []txnPoint
}

type txnPoint struct {
	t    int64
	i    int // index in the Write
	prev int // the same id's point before it in pts, or -1
}

// reset starts a Write.
func (x *txnPoints) reset() {
	if x.byID == nil {
		x.byID = map[string]int{}
	}
	x.txn++
	clear(x.byID)
	x.heads, x.pts = x.heads[:0], x.pts[:0]
}

// earlier returns the indexes of the points before point i in the Write
// whose series have d's base labels and whose time is t, in Write order
// and in *buf's storage, and notes point i.
func (x *txnPoints) earlier(d *deviceRefs, t int64, i int, buf *[]int) []int {
	if d.txn != x.txn {
		// d's first point in this Write, or the first since the cache
		// made d: its id's chain, which another device key of the id
		// (or d's entry before the cache was dropped) may have begun.
		h, ok := x.byID[d.id]
		if !ok {
			h = len(x.heads)
			x.heads = append(x.heads, -1)
			x.byID[d.id] = h
		}
		d.txn, d.head = x.txn, h
	}
	*buf = (*buf)[:0]
	prev := x.heads[d.head]
	for j := prev; j >= 0; j = x.pts[j].prev {
		if x.pts[j].t == t {
			*buf = append(*buf, x.pts[j].i)
		}
	}
	slices.Reverse(*buf)
	x.heads[d.head] = len(x.pts)
	x.pts = append(x.pts, txnPoint{t: t, i: i, prev: prev})
	return *buf
}

// seriesKey is one series of a device key: a numeric field's, or a string
// field's with one value (info).
type seriesKey struct {
	field string
	value string
	info  bool
}

type seriesRef struct {
	ref promstorage.SeriesRef
	ls  labels.Labels
}

func newRefCache(bound int) *refCache {
	return &refCache{bound: bound, devices: map[string]*deviceRefs{}, minTime: math.MinInt64}
}

// headTime drops the cache when the head's oldest time (mint) has risen
// since the last commit: the head was truncated.
func (c *refCache) headTime(mint int64) {
	if mint > c.minTime {
		c.reset()
	}
	c.minTime = mint
}

func (c *refCache) reset() {
	if c.n == 0 && len(c.devices) == 0 {
		return
	}
	c.devices = map[string]*deviceRefs{}
	c.n = 0
}

// device returns the series of p's device and registry labels. Its key is
// the device id and the registry labels in name order, each string
// prefixed with its length.
func (c *refCache) device(p *storage.Point) *deviceRefs {
	c.key = appendKeyString(c.key[:0], p.Device)
	for _, k := range sortedKeys(&c.keys, p.Labels) {
		c.key = appendKeyString(appendKeyString(c.key, k), p.Labels[k])
	}
	if d := c.devices[string(c.key)]; d != nil {
		return d
	}
	// Copies: the point's strings may share a larger buffer.
	base := series.Base(nil, p)
	for i := range base {
		base[i] = labels.Label{Name: strings.Clone(base[i].Name), Value: strings.Clone(base[i].Value)}
	}
	// In name order: Base orders registry labels by their names before
	// they are made valid ("a-b" before "a_a", "a_b" after it), and two
	// points' labels that make one series must make one id.
	slices.SortFunc(base, func(a, b labels.Label) int { return strings.Compare(a.Name, b.Name) })
	var id []byte
	for _, l := range base {
		id = appendKeyString(appendKeyString(id, l.Name), l.Value)
	}
	d := &deviceRefs{key: string(c.key), base: base, series: map[seriesKey]seriesRef{}, id: string(id)}
	c.devices[d.key] = d
	return d
}

func appendKeyString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// append appends one sample of the series k of d, by reference when the
// cache has one, and keeps the reference Append returns. It returns the
// series' labels (for an error's message).
func (c *refCache) append(app promstorage.AppenderV2, b *labels.ScratchBuilder, d *deviceRefs, k seriesKey, t int64, v float64) (labels.Labels, error) {
	r, known := d.series[k]
	if !known {
		name := storage.MetricName(k.field)
		if k.info {
			name += "_info"
		}
		r.ls = seriesLabels(b, d.base, name, k.value)
	}
	ref, err := app.Append(r.ref, r.ls, 0, t, v, nil, nil, promstorage.AppendV2Options{})
	if err != nil || ref == r.ref {
		// A refused sample returns no reference: the series is looked up
		// by its labels again next time.
		return r.ls, err
	}
	if !known {
		if c.n >= c.bound {
			c.reset()
			d.series = map[seriesKey]seriesRef{}
			c.devices[d.key] = d
		}
		c.n++
	}
	// A map keeps the key of its latest assignment: copies, as for base.
	k.field, k.value = strings.Clone(k.field), strings.Clone(k.value)
	d.series[k] = seriesRef{ref: ref, ls: r.ls}
	return r.ls, nil
}
