package remotewrite

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/ingest-io/ingest/internal/varint"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/internal/series"
	"github.com/ingest-io/ingest/storage/internal/sinkhttp"
)

// HTTPOptions are what the HTTP sinks share: how long one request may
// take, how failed requests are retried (MinBackoff, MaxBackoff,
// MaxRetryTime) and the headers every request carries. Zero fields take
// their defaults: Timeout 30s, backoff from 50ms to 5s, retries for 1m.
type HTTPOptions = sinkhttp.Options

// StatusError is an answer of the store that Write could not get past: the
// request was refused as a whole, or retries ran out on it. Write returns
// it wrapped in a *storage.KindError: kind "rejected" for a refusal,
// "unavailable" when retries ran out. It is the same type as
// influx.StatusError.
type StatusError = sinkhttp.StatusError

// Options configure a Sink. Zero fields take the defaults of
// DefaultOptions.
type Options struct {
	// URL is the store's remote-write endpoint:
	// http://host:9090/api/v1/write for Prometheus (started with
	// --web.enable-remote-write-receiver), http://host:8428/api/v1/write for
	// VictoriaMetrics, http://host/api/v1/push for Mimir. Required.
	URL string
	// Name labels the sink's metrics (label sink). Default "remotewrite".
	Name string
	// MaxSamplesPerRequest bounds the samples of one request; a Write of
	// more samples sends several requests, one after another. Default 2000.
	MaxSamplesPerRequest int
	// MaxStringBytes bounds a string field's value, which becomes a label
	// value; longer ones are dropped and counted (reason
	// "string_too_long"), as in the embedded TSDB. Default: the TSDB's
	// (1024).
	MaxStringBytes int
	HTTPOptions
}

// DefaultOptions returns the defaults of a Sink.
func DefaultOptions() Options {
	return Options{
		Name:                 "remotewrite",
		MaxSamplesPerRequest: 2000,
		MaxStringBytes:       series.MaxStringBytes,
		HTTPOptions:          sinkhttp.DefaultOptions(),
	}
}

// Sink writes points to a store that speaks the Prometheus
// remote-write protocol 1.0: a snappy-compressed protobuf WriteRequest per
// request, each sample its own TimeSeries, samples sorted by time.
//
// Points become series exactly as in the embedded TSDB (seriesBuilder).
// Repeated samples are harmless: Prometheus and VictoriaMetrics keep one
// sample per series and timestamp when the value is the same (Prometheus
// needs an out-of-order window for repeats older than a series' newest
// sample, VictoriaMetrics -dedup.minScrapeInterval; docs/storage.md).
//
// Samples the store refuses for good — older than it accepts ("too old
// sample", "out of bounds", "out of order sample") or otherwise unstorable —
// are found by splitting the request in halves until the refused samples
// stand alone (Prometheus rolls back a whole request for one bad sample and
// does not say which), then dropped and counted in
// ingest_storage_external_dropped_samples_total. The newer half goes first, and
// once one sample is known to be older than the store's bound every older
// sample of the same Write is dropped without a request: a Write whose
// samples are all too old costs about log2(n) requests, not n.
type Sink struct {
	opts Options
	h    *sinkhttp.Client

	mu sync.Mutex // one Write at a time; guards h and everything below
	ms seriesBuilder
	pb []byte // the encoded WriteRequest, reused
	zb []byte // its snappy encoding, reused
}

// New returns a sink writing to opts.URL. It starts nothing and sends
// nothing until Write. reg and lg may be nil.
func New(opts Options, reg prometheus.Registerer, lg *slog.Logger) (*Sink, error) {
	d := DefaultOptions()
	if opts.Name == "" {
		opts.Name = d.Name
	}
	if opts.MaxSamplesPerRequest == 0 {
		opts.MaxSamplesPerRequest = d.MaxSamplesPerRequest
	}
	if opts.MaxStringBytes == 0 {
		opts.MaxStringBytes = d.MaxStringBytes
	}
	if opts.MaxSamplesPerRequest < 0 || opts.MaxStringBytes < 0 {
		return nil, fmt.Errorf("validate options: max samples per request %d, max string bytes %d", opts.MaxSamplesPerRequest, opts.MaxStringBytes)
	}
	h, err := sinkhttp.New(opts.Name, opts.URL, opts.HTTPOptions, reg, lg)
	if err != nil {
		return nil, err
	}
	return &Sink{opts: opts, h: h, ms: seriesBuilder{maxString: opts.MaxStringBytes}}, nil
}

var rwHeader = http.Header{
	"Content-Encoding":                  {"snappy"},
	"Content-Type":                      {"application/x-protobuf"},
	"User-Agent":                        {"ingest-storage"},
	"X-Prometheus-Remote-Write-Version": {"0.1.0"},
}

// Write sends every sample of points and returns nil once the store has
// acknowledged each one or it was dropped as one the store refuses for good.
func (s *Sink) Write(ctx context.Context, points []storage.Point) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.h.CheckOpen(); err != nil {
		return err
	}
	s.ms.reset()
	for i := range points {
		s.ms.appendPoint(&points[i])
	}
	if s.ms.tooLong > 0 {
		s.h.Metrics.Dropped.WithLabelValues(sinkhttp.DropStringTooLong).Add(float64(s.ms.tooLong))
	}
	// Oldest first: samples too old for the store then form a prefix, which
	// the split search finds from its newest end. Stable: of two samples
	// of a series at one time (two messages with one timestamp) the store
	// keeps the first it is sent, which is then the first received, as in
	// the embedded TSDB.
	ss := s.ms.samples
	slices.SortStableFunc(ss, func(a, b rwSample) int {
		switch {
		case a.t < b.t:
			return -1
		case a.t > b.t:
			return 1
		}
		return 0
	})
	st := rwWriteState{}
	for len(ss) > 0 {
		n := min(len(ss), s.opts.MaxSamplesPerRequest)
		if err := s.writeChunk(ctx, ss[:n], &st); err != nil {
			return err
		}
		ss = ss[n:]
	}
	return nil
}

// rwWriteState is what one Write learns about its store as it goes.
type rwWriteState struct {
	// tooOld is set with the newest timestamp the store refused as older than
	// its bound (a bound the same for every series, which only moves forward).
	tooOld    bool
	tooOldMax int64
}

// writeChunk sends ss (sorted by time) as one request and, when the store
// refuses samples of it for good, splits it to find and drop them.
func (s *Sink) writeChunk(ctx context.Context, ss []rwSample, st *rwWriteState) error {
	if st.tooOld {
		n := 0
		for n < len(ss) && ss[n].t <= st.tooOldMax {
			n++
		}
		if n > 0 {
			s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindTooOld).Add(float64(n))
			ss = ss[n:]
		}
	}
	if len(ss) == 0 {
		return nil
	}
	s.pb = appendWriteRequest(s.pb[:0], s.ms.labels, ss)
	s.zb = snappy.Encode(s.zb[:cap(s.zb)], s.pb)
	a, v, err := s.h.Send(ctx, s.opts.URL, rwHeader, s.zb, judgeRemoteWrite)
	if err != nil {
		return err
	}
	switch v {
	case sinkhttp.OK:
		s.h.Acked(len(ss), len(ss))
		return nil
	case sinkhttp.Fail:
		return s.h.Refused(a)
	}
	kind, reason := sinkhttp.KindRejected, sinkhttp.KindRejected
	switch {
	case v == sinkhttp.TooOld:
		kind, reason = sinkhttp.KindTooOld, sinkhttp.KindTooOld
	case bytes.Contains(a.Body, []byte("duplicate sample for timestamp")), bytes.Contains(a.Body, []byte("sample-duplicate-timestamp")):
		// A different value is stored at this series and timestamp.
		reason = sinkhttp.DropDuplicateTimestamp
	}
	s.h.Metrics.Errors.WithLabelValues(kind).Inc()
	if len(ss) == 1 {
		s.h.Metrics.Dropped.WithLabelValues(reason).Inc()
		if v == sinkhttp.TooOld && rwBoundIsGlobal(a.Body) {
			st.tooOld, st.tooOldMax = true, max(st.tooOldMax, ss[0].t)
		}
		if v == sinkhttp.Rejected {
			s.h.LogDropped("store refused a sample; dropped", "series", s.ms.seriesString(ss[0]), "timestamp_ms", ss[0].t, "status", a.Status, "answer", sinkhttp.TrimBody(a.Body))
		}
		return nil
	}
	mid := len(ss) / 2
	if err := s.writeChunk(ctx, ss[mid:], st); err != nil {
		return err
	}
	return s.writeChunk(ctx, ss[:mid], st)
}

// Close releases the sink's connections and unregisters its metrics.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.h.Close()
	return nil
}

// judgeRemoteWrite classifies an answer of a remote-write receiver.
func judgeRemoteWrite(a sinkhttp.Answer) sinkhttp.Verdict {
	switch {
	case a.Status/100 == 2:
		return sinkhttp.OK
	case a.Status == http.StatusTooManyRequests:
		return sinkhttp.Retry
	case a.Status/100 == 5:
		// Prometheus before 2.45 answers 500 for a sample older than its
		// out-of-order window: retrying it would fail forever.
		if rwTooOld(a.Body) {
			return sinkhttp.TooOld
		}
		return sinkhttp.Retry
	case a.Status == http.StatusBadRequest || a.Status == http.StatusRequestEntityTooLarge || a.Status == http.StatusUnprocessableEntity ||
		a.Status == http.StatusConflict: // Thanos Receive: a sample out of order or a duplicate
		if rwTooOld(a.Body) {
			return sinkhttp.TooOld
		}
		if rwUndecodable(a.Body) {
			// The request itself could not be read: no sample is at fault.
			return sinkhttp.Fail
		}
		return sinkhttp.Rejected
	default:
		return sinkhttp.Fail
	}
}

// The answers of Prometheus (storage.ErrTooOldSample, ErrOutOfBounds,
// ErrOutOfOrderSample) and Mimir (err-mimir-sample-timestamp-too-old,
// err-mimir-sample-out-of-order) for samples older than they accept.
var rwTooOldPhrases = [][]byte{
	[]byte("too old sample"),
	[]byte("out of bounds"),
	[]byte("out of order sample"),
	[]byte("sample-timestamp-too-old"),
	[]byte("sample-out-of-order"),
	[]byte("out-of-order sample"),
}

func rwTooOld(body []byte) bool {
	if bytes.Contains(body, []byte("future")) {
		// Prometheus answers "out of bounds: timestamp is too far in the
		// future": that sample is not old.
		return false
	}
	for _, p := range rwTooOldPhrases {
		if bytes.Contains(body, p) {
			return true
		}
	}
	return false
}

// rwBoundIsGlobal reports whether a too-old answer names a bound that is the
// same for every series (the head's lower bound, the out-of-order window)
// rather than one series' newest sample ("out of order sample").
func rwBoundIsGlobal(body []byte) bool {
	return !bytes.Contains(body, []byte("future")) &&
		(bytes.Contains(body, []byte("too old sample")) || bytes.Contains(body, []byte("out of bounds")) ||
			bytes.Contains(body, []byte("sample-timestamp-too-old")))
}

// rwUndecodable reports whether an answer says the request could not be
// decoded at all. An answer that names a series ("__name__") refuses that
// series' sample, whatever else its labels spell: taken for undecodable,
// the batch would be retried for ever.
func rwUndecodable(body []byte) bool {
	if bytes.Contains(body, []byte("__name__")) {
		return false
	}
	return bytes.Contains(body, []byte("snappy")) || bytes.Contains(body, []byte("unmarshal")) ||
		bytes.Contains(body, []byte("proto"))
}

// rwSample is one sample and its series: the labels labels[lo:hi] of its
// seriesBuilder, sorted by name.
type rwSample struct {
	lo, hi int32
	t      int64 // milliseconds since the epoch
	v      float64
}

// appendWriteRequest appends the protobuf encoding of a prometheus.WriteRequest
// (remote-write 1.0) holding one TimeSeries per sample of ss:
//
//	WriteRequest { repeated TimeSeries timeseries = 1; }
//	TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//	Label        { string name = 1; string value = 2; }
//	Sample       { double value = 1; int64 timestamp = 2; }
func appendWriteRequest(b []byte, labels []labels.Label, ss []rwSample) []byte {
	for _, s := range ss {
		ls := labels[s.lo:s.hi]
		size := 0
		for _, l := range ls {
			n := labelSize(l)
			size += 1 + varint.Len(uint64(n)) + n
		}
		ssz := sampleSize(s.t)
		size += 1 + varint.Len(uint64(ssz)) + ssz
		b = append(b, 1<<3|2)
		b = binary.AppendUvarint(b, uint64(size))
		for _, l := range ls {
			b = append(b, 1<<3|2)
			b = binary.AppendUvarint(b, uint64(labelSize(l)))
			b = append(b, 1<<3|2)
			b = binary.AppendUvarint(b, uint64(len(l.Name)))
			b = append(b, l.Name...)
			b = append(b, 2<<3|2)
			b = binary.AppendUvarint(b, uint64(len(l.Value)))
			b = append(b, l.Value...)
		}
		b = append(b, 2<<3|2)
		b = binary.AppendUvarint(b, uint64(ssz))
		b = append(b, 1<<3|1)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(s.v))
		b = append(b, 2<<3) // field 2, wire type 0 (varint)
		b = binary.AppendUvarint(b, uint64(s.t))
	}
	return b
}

func labelSize(l labels.Label) int {
	return 1 + varint.Len(uint64(len(l.Name))) + len(l.Name) + 1 + varint.Len(uint64(len(l.Value))) + len(l.Value)
}

func sampleSize(t int64) int { return 1 + 8 + 1 + varint.Len(uint64(t)) }

// seriesBuilder turns points into samples and their series, as the embedded
// TSDB does (embedded.TSDB.Write): a numeric field f is the sample of
// {__name__=MetricName(f), device, registry labels}; a string field f is a
// sample of value 1 of {__name__=MetricName(f)+"_info", device, registry
// labels, value=<the string>}, left out (and counted) when longer than
// maxString. The labels of every sample live in one slice reused from Write
// to Write.
type seriesBuilder struct {
	labels    []labels.Label
	samples   []rwSample
	base      []labels.Label
	maxString int
	tooLong   int // string fields left out by the last build
}

func (b *seriesBuilder) reset() {
	clear(b.labels) // let the points' strings go
	b.labels, b.samples, b.tooLong = b.labels[:0], b.samples[:0], 0
}

func (b *seriesBuilder) appendPoint(p *storage.Point) {
	t := p.Time.UnixMilli()
	b.base = series.Base(b.base[:0], p)
	for name, v := range p.Numbers {
		b.appendSample(storage.MetricName(name), "", t, v)
	}
	for name, s := range p.Strings {
		if len(s) > b.maxString {
			b.tooLong++
			continue
		}
		b.appendSample(storage.MetricName(name)+"_info", s, t, 1)
	}
}

func (b *seriesBuilder) appendSample(metric, value string, t int64, v float64) {
	lo := len(b.labels)
	b.labels = append(b.labels, labels.Label{Name: model.MetricNameLabel, Value: metric})
	b.labels = append(b.labels, b.base...)
	if value != "" {
		b.labels = append(b.labels, labels.Label{Name: "value", Value: value})
	}
	ls := b.labels[lo:]
	slices.SortFunc(ls, func(x, y labels.Label) int { return strings.Compare(x.Name, y.Name) })
	b.samples = append(b.samples, rwSample{lo: int32(lo), hi: int32(len(b.labels)), t: t, v: v})
}

// seriesString formats the series of s for logs.
func (b *seriesBuilder) seriesString(s rwSample) string {
	return labels.New(b.labels[s.lo:s.hi]...).String()
}
