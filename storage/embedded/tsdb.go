package embedded

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	promstorage "github.com/prometheus/prometheus/storage" // storage is ours here
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/wlog"

	"github.com/ingest-io/ingest/internal/lograte"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/internal/series"
)

// Options configure the embedded TSDB. Zero fields mean their defaults.
type Options struct {
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
	// BlockDuration is the span of the blocks the TSDB cuts from its
	// in-memory head. The head holds up to one and a half of it before the
	// oldest block's worth is written out and dropped from memory, so the
	// process's memory grows for that long after a start and then levels
	// off; a shorter span holds less in memory and writes more, smaller
	// blocks (compacted together later, up to the larger of 2h and this
	// span). At least a minute. Default 2h, as Prometheus.
	BlockDuration time.Duration
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		Retention:        15 * 24 * time.Hour,
		OutOfOrderWindow: 24 * time.Hour,
		MaxStringBytes:   series.MaxStringBytes,
		BlockDuration:    2 * time.Hour,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
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
	if o.BlockDuration == 0 {
		o.BlockDuration = d.BlockDuration
	}
	if o.BlockDuration < time.Minute {
		return o, fmt.Errorf("storage: tsdb block duration %v is under a minute", o.BlockDuration)
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
// Write is durable: it returns nil only after the appender's commit has
// written the samples to the TSDB's write logs (its WAL, and the
// write-behind log of out-of-order samples), which it replays at start,
// and after an fsync of those logs has returned (logSync). A power loss
// after Write returns loses nothing. Concurrent Writes share their fsyncs.
//
// A write to those logs that fails, an fsync that fails, and a full disk
// among the causes, stops the TSDB's writes for good (Failed): the write
// logs' state is unknown after it (a record cut short by a failed write
// is followed by whatever the next commit writes; pages a failed fsync
// could not write may be dropped), so nothing more is reported stored.
// The writer keeps retrying and commits nothing to the middletiers, which
// keep the records; a restart replays the logs (dropping the cut record,
// which no Write reported stored) and the writer fetches from its
// checkpoint.
//
// Write may be called from several goroutines at once (it is a
// storage.ConcurrentSink); their transactions take turns, their fsyncs are
// shared.
type TSDB struct {
	db   *tsdb.DB
	opts Options
	lg   *slog.Logger
	m    *tsdbMetrics
	sync *logSync

	// lock is this package's flock on the directory (lockTSDB), held from
	// before recoverTSDB until after Close has marked the directory clean.
	lock *os.File

	// appendMu makes transactions take turns, from the appender's first
	// Append to its Commit; the fsync that makes them durable is shared
	// (logSync) and runs outside it. The TSDB's head allows concurrent
	// appenders, but its WAL and its replay at start assume commits that
	// do not overlap for one series, and two that do lose data a Write
	// reported stored (TestTSDBCrash finds both, after a SIGKILL and a
	// reopen):
	//   - A series is logged (a series record in the WAL) by the commit of
	//     the appender that created it. Another appender that appends to
	//     it meanwhile and commits first logs its samples before the
	//     series record; replay drops samples of a series it does not know
	//     yet.
	//   - A commit logs its samples to the WAL, then applies them to the
	//     head, each in order or out of order (into the out-of-order
	//     chunks and the write-behind log) by what the head holds at that
	//     moment. Replay applies the WAL in log order and skips every WAL
	//     sample that is out of order then, expecting the write-behind log
	//     to hold it. Two commits for one series may log in one order and
	//     apply in the other: a sample taken in order in memory, never
	//     written to the write-behind log, is out of order at replay and
	//     gone.
	appendMu sync.Mutex
	// refs holds the head's references to the series appended to, under
	// appendMu (refCache).
	refs *refCache
	txn  txnPoints // the points of the Write being committed, under appendMu

	noSpace atomic.Bool // the failure that stopped writes was for lack of room

	dropped dropLog // samples dropped, for the log

	closeOnce sync.Once
	closeErr  error
}

type tsdbMetrics struct {
	reg      prometheus.Registerer
	samples  prometheus.Counter
	dropped  *prometheus.CounterVec
	syncTime prometheus.Histogram
	failed   prometheus.GaugeFunc // set once the write logs are open
	noSpace  prometheus.GaugeFunc // likewise

	// wblFailed is the write-behind log's own count of failed writes
	// (prometheus_tsdb_out_of_order_wbl_writes_failed_total), taken as
	// tsdb.Open registers it: the TSDB does not return that failure. It is
	// the metric the counter's collector gave at registration, a live view
	// of the counter, read in place on every commit.
	wblFailed prometheus.Metric

	// lib are the library's collectors registered with reg through
	// watchRegisterer, unregistered with the package's own.
	libMu sync.Mutex
	lib   []prometheus.Collector
}

// watchRegisterer passes the TSDB's own metrics on to reg (nil: none), and
// keeps the write-behind log's failed-writes counter for Write to read.
type watchRegisterer struct {
	reg prometheus.Registerer
	m   *tsdbMetrics
}

func (w watchRegisterer) Register(c prometheus.Collector) error {
	descs := make(chan *prometheus.Desc, 8)
	go func() { c.Describe(descs); close(descs) }()
	for d := range descs {
		if strings.Contains(d.String(), `fqName: "prometheus_tsdb_out_of_order_wbl_writes_failed_total"`) {
			w.m.wblFailed = collectOne(c)
		}
	}
	if w.reg == nil {
		return nil
	}
	if err := w.reg.Register(c); err != nil {
		return err
	}
	w.m.libMu.Lock()
	w.m.lib = append(w.m.lib, c)
	w.m.libMu.Unlock()
	return nil
}

// collectOne returns the one metric c collects (a counter collects itself,
// wrapped by the registerers it went through), or nil.
func collectOne(c prometheus.Collector) prometheus.Metric {
	ch := make(chan prometheus.Metric, 1)
	go func() { c.Collect(ch); close(ch) }()
	var ms []prometheus.Metric
	for m := range ch {
		ms = append(ms, m)
	}
	if len(ms) != 1 {
		return nil
	}
	return ms[0]
}

func (w watchRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := w.Register(c); err != nil {
			panic(err)
		}
	}
}

func (w watchRegisterer) Unregister(c prometheus.Collector) bool {
	return w.reg != nil && w.reg.Unregister(c)
}

// wblWritesFailed returns the write-behind log's count of failed writes.
func (m *tsdbMetrics) wblWritesFailed() float64 {
	if m.wblFailed == nil {
		return 0
	}
	var d dto.Metric
	if m.wblFailed.Write(&d) != nil || d.Counter == nil {
		return 0
	}
	return d.Counter.GetValue()
}

// Open opens (or creates) the TSDB in opts.Dir, replaying its WAL. The
// TSDB runs its own compaction in the background until Close. reg and lg
// may be nil; the TSDB's own metrics (prometheus_tsdb_*) go to reg too. An
// Open that fails leaves nothing registered with reg.
func Open(opts Options, reg prometheus.Registerer, lg *slog.Logger) (*TSDB, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	to := tsdb.DefaultOptions()
	to.RetentionDuration = opts.Retention.Milliseconds()
	to.OutOfOrderTimeWindow = opts.OutOfOrderWindow.Milliseconds()
	to.EnableOverlappingCompaction = true // out-of-order data makes overlapping blocks
	to.MinBlockDuration = opts.BlockDuration.Milliseconds()
	to.MaxBlockDuration = max(to.MaxBlockDuration, to.MinBlockDuration)
	tlg := lg
	if tlg == nil {
		tlg = slog.New(slog.DiscardHandler)
	}
	lock, err := lockTSDB(opts.Dir)
	if err != nil {
		return nil, err
	}
	opened := false
	defer func() {
		if !opened {
			lock.Close()
		}
	}()
	if err := recoverTSDB(opts.Dir, tlg); err != nil {
		return nil, err
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
		syncTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ingest_storage_tsdb_wal_sync_duration_seconds",
			Help:    "Duration of one fsync of the embedded TSDB's write logs, shared by the writes committed before it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.samples, m.dropped, m.syncTime} {
			if err := reg.Register(c); err != nil {
				m.unregister()
				return nil, fmt.Errorf("storage: register metrics: %w", err)
			}
		}
	}
	db, err := tsdb.Open(opts.Dir, tlg, watchRegisterer{reg: reg, m: m}, to, nil)
	if err != nil {
		m.unregister()
		return nil, fmt.Errorf("storage: open tsdb: %w", err)
	}
	ls, err := openLogSync(opts.Dir, m.syncTime, tlg)
	if err != nil {
		db.Close()
		m.unregister()
		return nil, fmt.Errorf("storage: open tsdb: %w", err)
	}
	s := &TSDB{db: db, opts: opts, lg: lg, m: m, sync: ls, lock: lock, refs: newRefCache(maxCachedSeries),
		dropped: dropLog{every: lograte.Limiter{Every: lograte.Every}}}
	m.failed = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ingest_storage_tsdb_failed",
		Help: "1 once a write to the embedded TSDB's write logs or an fsync of them has failed: every later write fails until the writer restarts (its /healthz fails).",
	}, func() float64 {
		if s.Failed() != nil {
			return 1
		}
		return 0
	})
	m.noSpace = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ingest_storage_tsdb_no_space",
		Help: "1 once the embedded TSDB's writes have stopped for lack of disk space (ENOSPC or EDQUOT): the writer commits nothing, the middletiers keep the records, and a restart with room again takes them.",
	}, func() float64 {
		if s.noSpace.Load() {
			return 1
		}
		return 0
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{m.failed, m.noSpace} {
			if err := reg.Register(c); err != nil {
				ls.close()
				db.Close()
				m.unregister()
				return nil, fmt.Errorf("storage: register metrics: %w", err)
			}
		}
	}
	opened = true
	return s, nil
}

// stop stops the TSDB's writes for good with err (fail stop), noting
// whether it was for lack of room.
func (s *TSDB) stop(err error) {
	first := s.sync.fail(err)
	if !first {
		return
	}
	full := isNoSpace(err) || diskFull(s.opts.Dir)
	if full {
		s.noSpace.Store(true)
	}
	if s.lg != nil {
		s.lg.Error("storage: the tsdb's write logs could not be written; every later write fails, restart the writer (nothing is committed meanwhile: the middletiers keep the records)",
			"err", err, "disk_full", full)
	}
}

// isNoSpace reports whether err says the disk is full (ENOSPC) or a quota
// is used up (EDQUOT).
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// diskFull reports whether the file system holding dir has no room left
// for an unprivileged writer: what a failure the TSDB only logs (its
// write-behind log's) most likely met.
func diskFull(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Bavail == 0
}

// Failed returns the failure that stopped the TSDB's writes for good (a
// write to its write logs or an fsync of them that failed), or nil. A
// process that sees it must restart: the write logs' state after it is
// unknown, and the records not committed to the middletiers are written
// again.
func (s *TSDB) Failed() error {
	s.sync.mu.Lock()
	defer s.sync.mu.Unlock()
	if s.sync.err == errSyncClosed {
		return nil
	}
	return s.sync.err
}

func (m *tsdbMetrics) unregister() {
	if m.reg != nil {
		m.reg.Unregister(m.samples)
		m.reg.Unregister(m.dropped)
		m.reg.Unregister(m.syncTime)
		if m.failed != nil {
			m.reg.Unregister(m.failed)
		}
		if m.noSpace != nil {
			m.reg.Unregister(m.noSpace)
		}
		// The library unregisters none of its own on Close (nor on a
		// failed Open): left, they would make the next Open with reg
		// panic in MustRegister.
		m.libMu.Lock()
		for _, c := range m.lib {
			m.reg.Unregister(c)
		}
		m.lib = nil
		m.libMu.Unlock()
	}
}

// DB is the underlying TSDB, for queries.
func (s *TSDB) DB() *tsdb.DB { return s.db }

// Write appends every sample of points in one transaction, commits it and
// makes it durable. Samples the store can never take (older than the
// out-of-order window, a different value at a timestamp already taken, an
// over-long string) are dropped and counted; any other failure rolls the
// whole batch back. A failed fsync fails this Write and every later one
// (kind "sync"): after it the OS may have dropped pages it could not write,
// so nothing more is reported stored until the writer is restarted.
func (s *TSDB) Write(ctx context.Context, points []storage.Point) error {
	if err := s.Failed(); err != nil {
		return &storage.KindError{Kind: "sync", Err: fmt.Errorf("tsdb stopped: %w", err)}
	}
	n, tooOld, dupTS, tooLong, err := s.commit(ctx, points)
	if err != nil {
		return err
	}
	// The commit has written its records out to the OS (logSync); make
	// them durable before the caller may report them stored.
	if err := s.sync.sync(); err != nil {
		if isNoSpace(err) {
			s.noSpace.Store(true)
		}
		return &storage.KindError{Kind: "sync", Err: fmt.Errorf("sync tsdb write logs: %w", err)}
	}
	s.m.samples.Add(float64(n))
	for reason, c := range map[string]int{"too_old": tooOld, "duplicate_timestamp": dupTS, "string_too_long": tooLong} {
		if c > 0 {
			s.m.dropped.WithLabelValues("tsdb", reason).Add(float64(c))
		}
	}
	if (tooOld > 0 || dupTS > 0) && s.lg != nil {
		// Data the store could never hold: say so where an operator looks.
		s.logDropped(tooOld, dupTS)
	}
	return nil
}

// dropLog is what was dropped since the last line that said so: a device
// that sends what the store cannot hold does so at every write, and the
// line comes at most every lograte.Every.
type dropLog struct {
	mu            sync.Mutex
	every         lograte.Limiter
	tooOld, dupTS int
}

// logDropped logs the samples a write dropped, with those dropped since the
// last line, at most once per lograte.Every; the counts are in
// ingest_storage_dropped_samples_total whether logged or not.
func (s *TSDB) logDropped(tooOld, dupTS int) {
	d := &s.dropped
	d.mu.Lock()
	d.tooOld += tooOld
	d.dupTS += dupTS
	if _, ok := d.every.Allow(time.Now()); !ok {
		d.mu.Unlock()
		return
	}
	tooOld, dupTS = d.tooOld, d.dupTS
	d.tooOld, d.dupTS = 0, 0
	d.mu.Unlock()
	s.lg.Warn("storage: samples dropped", "too_old", tooOld, "duplicate_timestamp", dupTS,
		"next", fmt.Sprintf("dropped samples are logged at most every %v, all counted in ingest_storage_dropped_samples_total", lograte.Every))
}

// tally counts one append's outcome: taken, too old or a duplicate
// timestamp. Any other error is the TSDB's own, and tally returns it,
// naming the series; Write and WriteGathered give it the kind "append".
func tally(err error, ls labels.Labels, n, tooOld, dupTS *int) error {
	switch {
	case err == nil:
		*n++
	case errors.Is(err, promstorage.ErrTooOldSample), errors.Is(err, promstorage.ErrOutOfBounds), errors.Is(err, promstorage.ErrOutOfOrderSample):
		*tooOld++
	case errors.Is(err, promstorage.ErrDuplicateSampleForTimestamp):
		*dupTS++
	default:
		return fmt.Errorf("append %s: %w", ls, err)
	}
	return nil
}

// commit appends every sample of points in one transaction and commits it,
// one transaction at a time (appendMu). It returns the samples taken and
// those dropped, by reason.
func (s *TSDB) commit(ctx context.Context, points []storage.Point) (n, tooOld, dupTS, tooLong int, err error) {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	app := s.db.AppenderV2(ctx)
	s.refs.headTime(s.db.Head().MinTime())
	var (
		b       labels.ScratchBuilder
		keys    []string
		earlier []int
	)
	s.txn.reset()
	for i := range points {
		p := &points[i]
		t := p.Time.UnixMilli()
		dev := s.refs.device(p)
		// In name order: where two fields make one series ("a.b", "a_b"),
		// the same one wins on every delivery.
		same := s.txn.earlier(dev, t, i, &earlier)
		for _, name := range sortedKeys(&keys, p.Numbers) {
			v := p.Numbers[name]
			if prev, ok := valueAt(points, same, name); ok {
				// The head would keep the first value of the transaction
				// at t and drop this one at Commit, unreported.
				if math.Float64bits(prev) != math.Float64bits(v) {
					dupTS++
				}
				continue
			}
			ls, err := s.refs.append(app, &b, dev, seriesKey{field: name}, t, v)
			if err := tally(err, ls, &n, &tooOld, &dupTS); err != nil {
				app.Rollback()
				return 0, 0, 0, 0, &storage.KindError{Kind: "append", Err: err}
			}
		}
		for _, name := range sortedKeys(&keys, p.Strings) {
			v := p.Strings[name]
			if len(v) > s.opts.MaxStringBytes {
				tooLong++
				continue
			}
			ls, err := s.refs.append(app, &b, dev, seriesKey{field: name, value: v, info: true}, t, 1)
			if err := tally(err, ls, &n, &tooOld, &dupTS); err != nil {
				app.Rollback()
				return 0, 0, 0, 0, &storage.KindError{Kind: "append", Err: err}
			}
		}
	}
	wblFailed := s.m.wblWritesFailed()
	if err := app.Commit(); err != nil {
		// The WAL write failed, maybe after part of a record: fail stop.
		err = fmt.Errorf("commit tsdb: %w", err)
		s.stop(err)
		return 0, 0, 0, 0, &storage.KindError{Kind: "commit", Err: err}
	}
	if s.m.wblWritesFailed() > wblFailed {
		// Commit returned nil with the out-of-order samples in memory and
		// not in the write-behind log: a restart would lose them, so the
		// batch is not reported stored, nor is any after it.
		err := errors.New("commit tsdb: write-behind log write failed (the TSDB's log says why)")
		s.stop(err)
		return 0, 0, 0, 0, &storage.KindError{Kind: "commit", Err: err}
	}
	return n, tooOld, dupTS, tooLong, nil
}

// valueAt returns the value of the series of the numeric field name in the
// first of the points at indexes in that has it: a field whose series name
// (storage.MetricName) is name's.
func valueAt(points []storage.Point, in []int, name string) (float64, bool) {
	if len(in) == 0 {
		return 0, false
	}
	m := storage.MetricName(name)
	for _, j := range in {
		if v, ok := points[j].Numbers[name]; ok {
			return v, true
		}
		for other, v := range points[j].Numbers {
			if storage.MetricName(other) == m {
				return v, true
			}
		}
	}
	return 0, false
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

// Close closes the TSDB, flushing its head to its WAL, and unregisters its
// metrics (the library's prometheus_tsdb_* included) from the registerer
// Open was given, which can then open it again. Idempotent.
func (s *TSDB) Close() error {
	s.closeOnce.Do(func() {
		// No commit may race the close: one that did could lose its
		// write-behind log records, which the library only logs.
		s.appendMu.Lock()
		defer s.appendMu.Unlock()
		s.closeErr = errors.Join(s.db.Close(), s.sync.close())
		if s.closeErr == nil && s.Failed() == nil {
			// After a failed fsync the logs' state is unknown: leave the
			// directory unclean, so that the next start recovers it.
			s.closeErr = markClean(s.opts.Dir)
		}
		s.closeErr = errors.Join(s.closeErr, s.lock.Close())
		s.m.unregister()
	})
	return s.closeErr
}

// markClean makes what a clean close left durable, the head's chunk files
// among it, then writes the clean mark (recoverTSDB).
func markClean(dir string) error {
	chunkDir := filepath.Join(dir, "chunks_head")
	if err := syncTree(chunkDir, (*os.File).Sync); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("storage: close tsdb: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, cleanMark))
	if err != nil {
		return fmt.Errorf("storage: close tsdb: %w", err)
	}
	err = errors.Join(f.Sync(), f.Close())
	if err == nil {
		err = syncPath(dir, (*os.File).Sync)
	}
	if err != nil {
		return fmt.Errorf("storage: close tsdb: %w", err)
	}
	return nil
}

// ConcurrentWrites reports true: the TSDB is a storage.ConcurrentSink. A
// storage writer's followers call Write without taking turns; their
// transactions take turns inside (appendMu), and their fsyncs are shared.
func (*TSDB) ConcurrentWrites() bool { return true }

// errSyncClosed is what a sync after Close returns.
var errSyncClosed = errors.New("tsdb closed")

// logSync makes what the TSDB's commits have written to its write logs
// durable: the WAL (<dir>/wal) and the write-behind log of out-of-order
// samples (<dir>/wbl; the WAL's copy of a sample that went in out of order
// is not replayed, the write-behind log's is).
//
// The TSDB has no sync to call (github.com/prometheus/prometheus v0.316.0):
// the head keeps its write logs (tsdb/wlog.WL) unexported, and WL.Sync "is
// meant to be used only on tests" and reads the current segment without
// the log's lock. wlog fsyncs a segment itself only once it has completed
// it (nextSegment, in the background) and at Close. What wlog does
// guarantee is that a commit's records have reached the OS when the commit
// returns: headAppenderBase.Commit (tsdb/head_append.go) calls WL.Log for
// its WAL records, and for its out-of-order samples WL.Log on the
// write-behind log, before it returns; WL.Log (tsdb/wlog/wlog.go) ends with
// log(rec, final=true), which "if it's the final record of the batch and
// the page is not empty" calls flushPage, and flushPage writes the page to
// the segment's *os.File (write(2), no buffer in between). So after Commit
// its records are in the page cache of the segment files, and an fsync of
// those files makes them durable. On Linux fsync on any descriptor of a
// file flushes the file's dirty pages, whoever wrote them: logSync keeps
// its own read-only descriptor of each log's newest segment.
//
// Each sync fsyncs, per log, the segment it synced last (written since)
// and every segment after it, and the log's directory when a segment was
// created since, so that the new file's name survives too. One sync at a
// time; a Write whose commit returned while a sync was running waits for
// the next one, and that one covers every Write that waited (group
// commit): one fsync per batch at most, fewer under concurrency.
//
// A failed fsync is sticky (fail stop): Linux may have dropped the dirty
// pages it could not write, so a later fsync that succeeds proves nothing.
//
// The write-behind log is written after the commit has put the samples in
// memory, and the TSDB only logs a failure to write it (Commit still
// returns nil): TSDB.commit reads the TSDB's own count of those failures
// (prometheus_tsdb_out_of_order_wbl_writes_failed_total) around each
// commit, and a failure stops the TSDB's writes as a failed fsync does.
type logSync struct {
	logs     []*segLog
	duration prometheus.Observer
	lg       *slog.Logger
	fsync    func(*os.File) error // (*os.File).Sync; tests replace it

	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // syncs started
	done    uint64 // the last sync that ended
	running bool
	err     error // the first failure, for good
}

// segLog is one write log's directory and a descriptor of its newest
// segment, as last synced.
type segLog struct {
	dir  string
	seg  int      // index of the segment f is open on; -1: none
	f    *os.File // read-only, for fsync
	size int64    // f's size when it was last fsynced
}

// openLogSync opens the logs of the TSDB in dir, which tsdb.Open has just
// opened. It fsyncs everything in them once, and their directories: what
// an earlier process wrote and never synced (it was killed, say) may still
// be only in the OS, and it holds samples whose records this writer will
// not write again (a repeat of a sample the TSDB holds is not logged again).
func openLogSync(dir string, duration prometheus.Observer, lg *slog.Logger) (*logSync, error) {
	s := &logSync{duration: duration, lg: lg, fsync: (*os.File).Sync}
	s.cond = sync.NewCond(&s.mu)
	for _, name := range []string{"wal", wlog.WblDirName} {
		d := filepath.Join(dir, name)
		if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
			continue // no write-behind log without an out-of-order window
		}
		if err := syncTree(d, s.fsync); err != nil {
			s.close()
			return nil, fmt.Errorf("sync %s: %w", d, err)
		}
		l := &segLog{dir: d, seg: -1}
		s.logs = append(s.logs, l)
		if _, err := l.sync(s.fsync); err != nil {
			s.close()
			return nil, err
		}
	}
	// The logs' own names in dir, and dir's in its parent when tsdb.Open
	// created it. The parent may be beyond reach (a volume's mount point):
	// that one is best effort.
	if err := syncPath(dir, s.fsync); err != nil {
		s.close()
		return nil, err
	}
	if err := syncPath(filepath.Dir(dir), s.fsync); err != nil {
		lg.Warn("storage: could not fsync the parent of the tsdb directory", "dir", dir, "err", err)
	}
	return s, nil
}

// sync returns once every record that commits which returned before it was
// called wrote to the logs is durable.
func (s *logSync) sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A sync that starts from now on covers this caller's records; one
	// already running may have started before they were written.
	need := s.started + 1
	for s.done < need && s.err == nil {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		gen := s.started
		s.mu.Unlock()
		err := s.syncLogs()
		s.mu.Lock()
		s.running = false
		s.done = gen
		if err != nil && s.err == nil {
			s.err = err
			s.lg.Error("storage: fsync of the tsdb write logs failed; every later write fails, restart the writer", "err", err)
		}
		s.cond.Broadcast()
	}
	return s.err
}

// fail makes err the sticky failure, unless there is one (or the logs are
// closed), and reports whether it did.
func (s *logSync) fail(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return false
	}
	s.err = err
	return true
}

func (s *logSync) syncLogs() error {
	start := time.Now()
	for _, l := range s.logs {
		created, err := l.sync(s.fsync)
		if err != nil {
			return err
		}
		if created {
			if err := syncPath(l.dir, s.fsync); err != nil {
				return err
			}
		}
	}
	s.duration.Observe(time.Since(start).Seconds())
	return nil
}

// sync fsyncs the segment last synced and every later one, keeping a
// descriptor of the newest. It reports whether a segment was created since
// the last sync. A segment gone before it could be opened was removed by
// the TSDB's WAL truncation, after a checkpoint (fsynced) took its data.
//
// The segment last synced is passed over when its size has not changed:
// wlog only appends to a segment (opened O_APPEND; flushPage writes the
// page's bytes not yet written), so every write grows it, and an fsync of
// a file with nothing to write can still cost a flush of the disk's cache
// (the write-behind log goes unwritten while samples come in order).
//
// wlog numbers its segments in order, creates one only once the one before
// it is full, and truncation removes the oldest: while the segment kept is
// there and the one after it is not, no other can have grown, and two stats
// stand for a listing of the directory.
func (l *segLog) sync(fsync func(*os.File) error) (created bool, err error) {
	if l.f != nil && exists(wlog.SegmentName(l.dir, l.seg)) && !exists(wlog.SegmentName(l.dir, l.seg+1)) {
		return false, l.syncKept(fsync)
	}
	first, last, err := wlog.Segments(l.dir)
	if err != nil {
		return false, err
	}
	if last < 0 {
		return false, nil
	}
	for i := max(l.seg, first); i <= last; i++ {
		if i == l.seg {
			if err := l.syncKept(fsync); err != nil {
				return false, err
			}
			continue
		}
		f, err := os.Open(wlog.SegmentName(l.dir, i))
		if errors.Is(err, fs.ErrNotExist) && i < last {
			continue
		}
		if err != nil {
			return false, err
		}
		fi, err := f.Stat()
		if err == nil {
			err = fsync(f)
		}
		if err != nil {
			f.Close()
			return false, fmt.Errorf("fsync %s: %w", f.Name(), err)
		}
		if l.f != nil {
			l.f.Close()
		}
		l.f, l.seg, l.size, created = f, i, fi.Size(), true
	}
	return created, nil
}

// exists reports whether name is there; an error other than its absence
// counts as there, which sends sync the long way.
func exists(name string) bool {
	_, err := os.Stat(name)
	return !errors.Is(err, fs.ErrNotExist)
}

// syncKept fsyncs the segment kept open unless its size is what it was at
// its last fsync.
func (l *segLog) syncKept(fsync func(*os.File) error) error {
	fi, err := l.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() == l.size {
		return nil
	}
	if err := fsync(l.f); err != nil {
		return fmt.Errorf("fsync %s: %w", l.f.Name(), err)
	}
	l.size = fi.Size()
	return nil
}

func (s *logSync) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.running {
		s.cond.Wait()
	}
	var errs []error
	for _, l := range s.logs {
		if l.f != nil {
			errs = append(errs, l.f.Close())
			l.f = nil
		}
	}
	if s.err == nil {
		s.err = errSyncClosed
	}
	return errors.Join(errs...)
}

// syncTree fsyncs every file and directory under dir, and dir.
func syncTree(dir string, fsync func(*os.File) error) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		return syncPath(path, fsync)
	})
}

// syncPath opens the directory or file at path and fsyncs it.
func syncPath(path string, fsync func(*os.File) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fsync(f); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}
