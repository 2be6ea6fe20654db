package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	promstorage "github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
)

// TSDBOptions configure the embedded TSDB. Zero fields mean their defaults.
type TSDBOptions struct {
	// Dir holds the TSDB's blocks and WAL. Required.
	Dir string
	// Retention is how long samples are kept, by their timestamps.
	// Default 15 days.
	Retention time.Duration
	// OutOfOrderWindow is how far behind the newest sample in the store a
	// sample may be and still be accepted: late data, replays after a
	// failover, devices that were offline. Older samples are dropped and
	// counted (reason "too_old"). Default 24h.
	OutOfOrderWindow time.Duration
	// MaxStringBytes bounds a string field's value: it becomes a label
	// value, and long free text makes poor series. Longer values are
	// dropped and counted (reason "string_too_long"). Default 1024.
	MaxStringBytes int
}

// DefaultTSDBOptions returns the defaults that zero fields stand for.
func DefaultTSDBOptions() TSDBOptions {
	return TSDBOptions{
		Retention:        15 * 24 * time.Hour,
		OutOfOrderWindow: 24 * time.Hour,
		MaxStringBytes:   1024,
	}
}

func (o TSDBOptions) withDefaults() (TSDBOptions, error) {
	d := DefaultTSDBOptions()
	if o.Dir == "" {
		return o, errors.New("storage: tsdb dir required")
	}
	if o.Retention <= 0 {
		o.Retention = d.Retention
	}
	if o.OutOfOrderWindow <= 0 {
		o.OutOfOrderWindow = d.OutOfOrderWindow
	}
	if o.MaxStringBytes <= 0 {
		o.MaxStringBytes = d.MaxStringBytes
	}
	return o, nil
}

// TSDB is the embedded sink: a Prometheus TSDB on local disk, which the
// query API (API) serves to Grafana. Every numeric field of a point is a
// sample of the series named after the field, with the labels device and
// the point's registry labels; every string field is a sample of value 1 of
// the info series <field>_info with the string in the label value.
// docs/storage.md has the mapping and the PromQL.
//
// Write is idempotent: the TSDB keeps one sample per series and timestamp.
// An in-order repeat with the same value is accepted as nothing; an
// out-of-order repeat is dropped by the out-of-order head, and queries and
// compaction merge a repeat of a sample already in a block into one.
//
// The TSDB survives SIGKILL by replaying its own WAL: Write returns after
// the appender's commit has written the samples to that WAL (not fsynced;
// a power loss can lose the last moments, a process crash cannot).
type TSDB struct {
	db   *tsdb.DB
	opts TSDBOptions
	lg   *slog.Logger
	m    *tsdbMetrics

	closeOnce sync.Once
	closeErr  error
}

type tsdbMetrics struct {
	reg     prometheus.Registerer
	samples prometheus.Counter
	dropped *prometheus.CounterVec
}

// OpenTSDB opens (or creates) the TSDB in opts.Dir, replaying its WAL. The
// TSDB runs its own compaction in the background until Close. reg and lg
// may be nil; the TSDB's own metrics (prometheus_tsdb_*) go to reg too.
func OpenTSDB(opts TSDBOptions, reg prometheus.Registerer, lg *slog.Logger) (*TSDB, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	to := tsdb.DefaultOptions()
	to.RetentionDuration = opts.Retention.Milliseconds()
	to.OutOfOrderTimeWindow = opts.OutOfOrderWindow.Milliseconds()
	to.EnableOverlappingCompaction = true // out-of-order data makes overlapping blocks
	tlg := lg
	if tlg == nil {
		tlg = slog.New(slog.DiscardHandler)
	}
	m := &tsdbMetrics{
		reg: reg,
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_storage_tsdb_samples_appended_total",
			Help: "Samples committed to the embedded TSDB (repeats included).",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_dropped_samples_total",
			Help: "Samples a sink could never store and dropped from the batch, by reason.",
		}, []string{"sink", "reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.samples, m.dropped} {
			if err := reg.Register(c); err != nil {
				m.unregister()
				return nil, fmt.Errorf("storage: register metrics: %w", err)
			}
		}
	}
	db, err := tsdb.Open(opts.Dir, tlg, reg, to, nil)
	if err != nil {
		m.unregister()
		return nil, fmt.Errorf("storage: open tsdb: %w", err)
	}
	return &TSDB{db: db, opts: opts, lg: lg, m: m}, nil
}

func (m *tsdbMetrics) unregister() {
	if m.reg != nil {
		m.reg.Unregister(m.samples)
		m.reg.Unregister(m.dropped)
	}
}

// DB is the underlying TSDB, for queries.
func (s *TSDB) DB() *tsdb.DB { return s.db }

// Write appends every sample of points in one transaction and commits it.
// Samples the store can never take (older than the out-of-order window, a
// different value at a timestamp already taken, an over-long string) are
// dropped and counted; any other failure rolls the whole batch back.
func (s *TSDB) Write(ctx context.Context, points []Point) error {
	app := s.db.AppenderV2(ctx)
	var (
		b       labels.ScratchBuilder
		base    []labels.Label
		keys    []string
		n       int
		tooOld  int
		dupTS   int
		tooLong int
	)
	for i := range points {
		p := &points[i]
		t := p.Time.UnixMilli()
		base = baseLabels(base[:0], p)
		// In name order: where two fields make one series ("a.b", "a_b"),
		// the same one wins on every delivery.
		for _, name := range sortedKeys(&keys, p.Numbers) {
			ls := seriesLabels(&b, base, MetricName(name), "")
			_, err := app.Append(0, ls, 0, t, p.Numbers[name], nil, nil, promstorage.AppendV2Options{})
			switch {
			case err == nil:
				n++
			case errors.Is(err, promstorage.ErrTooOldSample), errors.Is(err, promstorage.ErrOutOfBounds), errors.Is(err, promstorage.ErrOutOfOrderSample):
				tooOld++
			case errors.Is(err, promstorage.ErrDuplicateSampleForTimestamp):
				dupTS++
			default:
				app.Rollback()
				return &KindError{Kind: "append", Err: fmt.Errorf("append %s: %w", ls, err)}
			}
		}
		for _, name := range sortedKeys(&keys, p.Strings) {
			v := p.Strings[name]
			if len(v) > s.opts.MaxStringBytes {
				tooLong++
				continue
			}
			ls := seriesLabels(&b, base, MetricName(name)+"_info", v)
			_, err := app.Append(0, ls, 0, t, 1, nil, nil, promstorage.AppendV2Options{})
			switch {
			case err == nil:
				n++
			case errors.Is(err, promstorage.ErrTooOldSample), errors.Is(err, promstorage.ErrOutOfBounds), errors.Is(err, promstorage.ErrOutOfOrderSample):
				tooOld++
			case errors.Is(err, promstorage.ErrDuplicateSampleForTimestamp):
				dupTS++
			default:
				app.Rollback()
				return &KindError{Kind: "append", Err: fmt.Errorf("append %s: %w", ls, err)}
			}
		}
	}
	if err := app.Commit(); err != nil {
		return &KindError{Kind: "commit", Err: fmt.Errorf("commit tsdb: %w", err)}
	}
	s.m.samples.Add(float64(n))
	for reason, c := range map[string]int{"too_old": tooOld, "duplicate_timestamp": dupTS, "string_too_long": tooLong} {
		if c > 0 {
			s.m.dropped.WithLabelValues("tsdb", reason).Add(float64(c))
		}
	}
	if (tooOld > 0 || dupTS > 0) && s.lg != nil {
		s.lg.Debug("storage: samples dropped", "too_old", tooOld, "duplicate_timestamp", dupTS)
	}
	return nil
}

// sortedKeys returns m's keys in order, in *buf's storage.
func sortedKeys[V any](buf *[]string, m map[string]V) []string {
	*buf = (*buf)[:0]
	for k := range m {
		*buf = append(*buf, k)
	}
	slices.Sort(*buf)
	return *buf
}

// baseLabels appends the labels every series of p carries: device, and the
// registry labels with their names made valid. A registry label that would
// take the place of device, __name__ or value, or of another registry label
// (after sanitising), is left out; so is an empty one.
func baseLabels(dst []labels.Label, p *Point) []labels.Label {
	dst = append(dst, labels.Label{Name: "device", Value: p.Device})
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		v := p.Labels[k]
		name := LabelName(k)
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

func seriesLabels(b *labels.ScratchBuilder, base []labels.Label, name, value string) labels.Labels {
	b.Reset()
	b.Add(model.MetricNameLabel, name)
	for _, l := range base {
		b.Add(l.Name, l.Value)
	}
	if value != "" {
		b.Add("value", value)
	}
	b.Sort()
	return b.Labels()
}

// MetricName makes a flattened field name a valid Prometheus metric name:
// every character outside [a-zA-Z0-9_:] becomes '_', and a name that
// starts with a digit (or is empty) gets a leading '_'. "gps.lat" →
// "gps_lat".
func MetricName(field string) string { return sanitize(field, true) }

// LabelName makes a registry label name a valid Prometheus label name, as
// MetricName does but without ':'.
func LabelName(name string) string { return sanitize(name, false) }

func sanitize(s string, colon bool) string {
	ok := s != "" && !(s[0] >= '0' && s[0] <= '9')
	for i := 0; ok && i < len(s); i++ {
		ok = validNameByte(s[i], colon)
	}
	if ok {
		return s
	}
	out := make([]byte, 0, len(s)+1)
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		out = append(out, '_')
	}
	for _, r := range s { // one '_' per character, not per byte
		if r < 0x80 && validNameByte(byte(r), colon) {
			out = append(out, byte(r))
		} else {
			out = append(out, '_')
		}
	}
	return string(out)
}

func validNameByte(c byte, colon bool) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (colon && c == ':')
}

// Close closes the TSDB, flushing its head to its WAL. Idempotent.
func (s *TSDB) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.db.Close()
		s.m.unregister()
	})
	return s.closeErr
}
