package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/metricset"
	"github.com/ingest-io/ingest/stream"
	"github.com/ingest-io/ingest/wire"
)

// Endpoints are the two sockets of one middletier a Writer uses: its
// PUB stream (--stream.addr, e.g. tcp://mt-0:5557) and its consumer ROUTER
// (--consumer.addr, e.g. tcp://mt-0:5556), for fetch and commit.
type Endpoints = stream.Endpoints

// Options configure a Writer. Zero fields mean their defaults.
type Options struct {
	// Consumer is the name the Writer commits its checkpoints under at
	// every middletier; name it in the middletiers' --consumers so that
	// they keep every record until it is in the store. Writers that share
	// a name share a checkpoint. Default "storage".
	Consumer string
	// Group makes the Writer a member of a writer group: the writers that
	// share it divide the middletiers' streams among themselves, each
	// stream followed by one of them at a time, under the consumer name
	// Group (Consumer is then not used: the group's checkpoint is the
	// consumer's). Empty: the Writer follows every middletier, as the
	// only writer of its consumer name.
	Group string
	// Member names this writer within its group; unique among the group's
	// writers while they run. Default: 8 random hex digits.
	Member string
	// Middletiers are the middletiers to follow. Required. The writers of a
	// group list them in the same order: a middletier's position in the
	// list chooses which writer follows it.
	Middletiers []Endpoints
	// Labels gives a device's registry labels, nil for none. Nil: no
	// enrichment.
	Labels func(device string) map[string]string
	// StreamBuffer is how many stream messages (up to 256 records each)
	// wait per middletier between the socket and the sink. The socket is
	// drained at once whatever the sink does (a slow subscriber slows
	// every subscriber of a zmq4 PUB socket); past the buffer, messages
	// are dropped and their records fetched later. Default 256.
	StreamBuffer int
	// MaxBatch is the most records written to the sink in one Write.
	// Default 4096.
	MaxBatch int
	// Linger is how long the Writer gathers records after the first of a
	// batch before it writes them (sooner when MaxBatch is reached): at a
	// low rate, one sink write, fsync and checkpoint commit per Linger
	// instead of one per message, for up to Linger more delay before a
	// message is queryable. Default 20ms; negative: none.
	Linger time.Duration
	// FetchTimeout is how long a fetch may go unanswered before it is
	// asked again; after three, the sockets are dialled again.
	// Default 2s.
	FetchTimeout time.Duration
	// IdlePoll is how long the stream may be silent before the Writer
	// fetches to see whether it missed the stream's last messages.
	// Default 1s.
	IdlePoll time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed sink writes
	// and between failed connections. Defaults 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
}

// DefaultOptions returns the defaults that zero fields stand for: those of
// a durable stream.Follower.
func DefaultOptions() Options {
	d := stream.DefaultOptions()
	return Options{
		Consumer:     "storage",
		StreamBuffer: d.Buffer,
		MaxBatch:     d.MaxBatch,
		Linger:       20 * time.Millisecond,
		FetchTimeout: d.FetchTimeout,
		IdlePoll:     d.IdlePoll,
		MinBackoff:   d.MinBackoff,
		MaxBackoff:   d.MaxBackoff,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.Group != "" {
		o.Consumer = o.Group
		if o.Member == "" {
			o.Member = randomHex(8)
		}
	}
	if o.Consumer == "" {
		o.Consumer = d.Consumer
	}
	if len(o.Consumer) > wire.MaxNameLen-20 { // room for the socket identity's suffix
		return o, fmt.Errorf("storage: consumer name of %d bytes is too long", len(o.Consumer))
	}
	if len(o.Middletiers) == 0 {
		return o, errors.New("storage: no middletier to follow")
	}
	for _, e := range o.Middletiers {
		if e.Stream == "" || e.Consumer == "" {
			return o, fmt.Errorf("storage: middletier %+v needs both a stream and a consumer endpoint", e)
		}
	}
	// What is left zero or below takes the Follower's default; the backoffs
	// bound the sink's retries too.
	o.StreamBuffer, o.MaxBatch = max(o.StreamBuffer, 0), max(o.MaxBatch, 0)
	defaults.OrNone(&o.Linger, d.Linger)
	defaults.Positive(&o.MinBackoff, d.MinBackoff)
	defaults.Positive(&o.MaxBackoff, d.MaxBackoff)
	return o, nil
}

// Writer follows the streams of one or more middletiers and writes
// every record, as a point, to a sink; it commits its checkpoint to a
// middletier only after the sink has the records. See doc.go.
//
// Goroutines, all started and awaited by Run: per middletier, a durable
// stream.Follower's Run and the goroutines it owns. Followers take turns
// at the sink (sinkMu, a leaf lock), unless it is a ConcurrentSink (the
// embedded TSDB), whose Writes may overlap: one follower's transaction
// then runs during another's fsync, and writes committed together share
// one fsync.
type Writer struct {
	opts      Options
	sink      Sink
	lg        *slog.Logger
	m         *writerMetrics
	followers []follower

	sinkMu sync.Mutex
}

// follower follows one middletier: a stream.Follower, or a stream.Member
// of the Writer's group.
type follower interface {
	Run(ctx context.Context) error
	CaughtUp() bool
}

// New returns a Writer that writes to sink. It starts nothing; the
// caller closes sink after Run. reg and lg may be nil.
func New(opts Options, sink Sink, reg prometheus.Registerer, lg *slog.Logger) (*Writer, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	lg = lifecycle.Logger(lg)
	m, err := newWriterMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("storage: register metrics: %w", err)
	}
	s := &Writer{opts: opts, sink: sink, lg: lg, m: m}
	cs, concurrent := sink.(ConcurrentSink)
	concurrent = concurrent && cs.ConcurrentWrites()
	for i, ep := range opts.Middletiers {
		so := stream.Options{
			Consumer:     opts.Consumer,
			Durable:      true,
			Buffer:       opts.StreamBuffer,
			MaxBatch:     opts.MaxBatch,
			Linger:       opts.Linger,
			FetchTimeout: opts.FetchTimeout,
			IdlePoll:     opts.IdlePoll,
			MinBackoff:   opts.MinBackoff,
			MaxBackoff:   opts.MaxBackoff,
			Name:         "storage",
		}
		h := &handler{s: s, concurrent: concurrent}
		var f follower
		if opts.Group != "" {
			var mb *stream.Member
			mb, err = stream.NewMember(ep, so, stream.Group{Name: opts.Group, Member: opts.Member, Slot: i}, h, m.follower, nil, lg)
			if err == nil {
				m.members = append(m.members, mb)
			}
			f = mb
		} else {
			f, err = stream.New(ep, so, h, m.follower, lg)
		}
		if err != nil {
			m.set.Unregister()
			return nil, fmt.Errorf("storage: %w", err)
		}
		s.followers = append(s.followers, f)
	}
	return s, nil
}

// Member is the Writer's name in its group; "" without a group.
func (s *Writer) Member() string {
	if s.opts.Group == "" {
		return ""
	}
	return s.opts.Member
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// CaughtUp reports whether every middletier has been caught up with at
// least once since Run started: the readiness of a storage writer.
func (s *Writer) CaughtUp() bool {
	for _, f := range s.followers {
		if !f.CaughtUp() {
			return false
		}
	}
	return true
}

// Run follows every middletier until ctx ends, then sends each its last
// checkpoint and returns nil once every goroutine has ended. Records not
// yet written when ctx ends are not committed: the next Run fetches them.
func (s *Writer) Run(ctx context.Context) error {
	defer s.m.set.Unregister()
	var wg sync.WaitGroup
	for _, f := range s.followers {
		wg.Go(func() { f.Run(ctx) })
	}
	wg.Wait()
	return nil
}

// Close unregisters the Writer's metrics, as Run does when it returns: for
// a Writer that never ran. Call it after Run has returned, or instead of
// Run; it does not stop Run (end Run's context for that), and it leaves the
// sink to the caller. It is idempotent.
func (s *Writer) Close() error {
	s.m.set.Unregister()
	return nil
}

// handler turns one middletier's records into points and writes them to
// the sink. Its Follower calls it from one goroutine.
type handler struct {
	s          *Writer
	concurrent bool
	points     []Point
	large      []int  // the points of this batch whose maps of fields are not to be reused
	origin     string // the origin of the last record decoded, shared by the points of its frontend log
}

// Records writes the batch's points, retrying with backoff until the sink
// takes them. A record that does not decode is counted and skipped: no
// retry could ever store it.
//
// A nil return lets the Follower commit, which may let the middletier
// release the records for good, so it comes only once Write has returned
// nil, which a sink returns only when the store holds the points durably:
// the embedded TSDB after an fsync of its write logs
// (embedded.TSDB.Write); an external store when it has answered 2xx, and
// what it does with a power loss after that is its own guarantee
// (docs/storage.md, Crash safety).
func (w *handler) Records(ctx context.Context, b *stream.Batch) error {
	s := w.s
	newerAt, newerErr := 0, error(nil)
	for i, rb := range b.Records {
		// The points are made in those of the last batch, whose maps of
		// fields are reused (fillPoint): the sinks keep nothing of a point
		// once Write has returned.
		if len(w.points) < cap(w.points) {
			w.points = w.points[:len(w.points)+1]
		} else {
			w.points = append(w.points, Point{})
		}
		rec, err := wire.DecodeRecordKnown(rb, w.origin)
		if err == nil {
			w.origin = rec.Origin
			p := &w.points[len(w.points)-1]
			err = fillPoint(p, rec, s.opts.Labels)
			// Counted now: the limiter may delete fields before the
			// maps are reused.
			if err == nil && (len(p.Numbers) > maxReusedFields || len(p.Strings) > maxReusedFields) {
				w.large = append(w.large, len(w.points)-1)
			}
		}
		if err != nil {
			w.points[len(w.points)-1] = Point{} // its maps too: a message that failed part way may have grown them
			w.points = w.points[:len(w.points)-1]
			// Only a version above this build's: one of no engine
			// (version 0) is damage, skipped as any other, never waited for.
			if errors.Is(err, wire.ErrVersion) || errors.Is(err, envelope.ErrNewer) {
				newerAt, newerErr = i, err
				break
			}
			s.m.invalid.Inc()
			s.lg.Debug("storage: record skipped", "middletier", b.Middletier, "seq", b.First+uint64(i), "err", err)
		}
	}
	defer func() {
		// Only the maps of fields stay, emptied when next filled, but
		// for those a large message grew: no slot keeps a large map.
		for i := range w.points {
			w.points[i] = Point{Numbers: w.points[i].Numbers, Strings: w.points[i].Strings}
		}
		for _, i := range w.large {
			if i < len(w.points) {
				w.points[i] = Point{}
			}
		}
		w.points, w.large = w.points[:0], w.large[:0]
	}()
	if newerErr != nil {
		return w.newer(ctx, b, newerAt, newerErr)
	}
	backoff := s.opts.MinBackoff
	for len(w.points) > 0 {
		if !w.concurrent {
			s.sinkMu.Lock()
		}
		start := time.Now()
		err := s.sink.Write(ctx, w.points)
		if !w.concurrent {
			s.sinkMu.Unlock()
		}
		s.m.writeDuration.Observe(time.Since(start).Seconds())
		if err == nil {
			n := 0
			for i := range w.points {
				n += len(w.points[i].Numbers) + len(w.points[i].Strings)
			}
			s.m.samples.Add(float64(n))
			s.m.points.Add(float64(len(w.points)))
			now := time.Now()
			for i := range w.points {
				s.m.delivery.Observe(max(now.Sub(w.points[i].Received).Seconds(), 0))
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		kind := errorKind(err)
		s.m.sinkErrors.WithLabelValues(kind).Inc()
		s.lg.Warn("storage: sink write failed; retrying", "kind", kind, "points", len(w.points), "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.opts.MaxBackoff)
	}
	return nil
}

// newer holds the writer at a record of a format newer than it reads, the
// ith of b: a middletier or frontend upgraded before it. Skipped, it would
// be lost for good, and every record of its kind after it; held, the
// middletier keeps them (its consumer lag grows, and IngestConsumerLag
// fires) until a writer that reads them takes them. It returns when ctx
// ends, with nothing of b taken.
func (w *handler) newer(ctx context.Context, b *stream.Batch, i int, err error) error {
	w.s.lg.Error("storage: a record in a newer format than this writer reads; it waits, and the middletier keeps the record and those after it: upgrade the storage writers (and the feed) before the middletiers and frontends",
		"middletier", b.Middletier, "seq", b.First+uint64(i), "err", err)
	<-ctx.Done()
	return ctx.Err()
}

// Lost reports records a middletier released before this writer stored
// them: the middletier was not told this consumer is durable.
func (w *handler) Lost(g stream.Gap) {
	w.s.m.skipped.WithLabelValues(g.Middletier).Add(float64(g.To - g.From + 1))
	w.s.lg.Error("storage: records released by the middletier before they were stored; name this consumer in the middletier's --consumers",
		"middletier", g.Middletier, "consumer", w.s.opts.Consumer, "from", g.From, "to", g.To, "cause", g.Cause)
}

type writerMetrics struct {
	set           *metricset.Set
	members       []*stream.Member // the group's, read by leases
	follower      stream.Metrics
	samples       prometheus.Counter
	points        prometheus.Counter
	writeDuration prometheus.Histogram
	delivery      prometheus.Histogram
	sinkErrors    *prometheus.CounterVec
	skipped       *prometheus.CounterVec
	invalid       prometheus.Counter
	leases        prometheus.GaugeFunc
	leaseByMT     *leaseCollector
}

// leaseCollector shows, per middletier, whether the writer holds its
// group's lease there, read from the Members when scraped.
type leaseCollector struct {
	m    *writerMetrics
	desc *prometheus.Desc
}

func (c *leaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *leaseCollector) Collect(ch chan<- prometheus.Metric) {
	for _, mb := range c.m.members {
		v := 0.0
		if mb.Held() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, mb.Middletier())
	}
}

func newWriterMetrics(reg prometheus.Registerer) (*writerMetrics, error) {
	b := metricset.NewBuilder(nil)
	mt := "middletier"
	f := stream.Metrics{
		Lag: b.GaugeVec("ingest_storage_lag_records",
			"Records a middletier holds beyond this writer's checkpoint there.", mt),
		Checkpoint: b.GaugeVec("ingest_storage_checkpoint",
			"The checkpoint a middletier last acknowledged for this writer.", mt),
		Gaps:    b.CounterVec("ingest_storage_stream_gaps_total", "Gaps in a middletier's stream, filled by fetch.", mt),
		Fetches: b.CounterVec("ingest_storage_fetches_total", "Fetches sent to a middletier (retries not counted).", mt),
		Reconnects: b.CounterVec("ingest_storage_reconnects_total",
			"Connections to a middletier lost and dialled again.", mt),
		Overflows: b.Counter("ingest_storage_stream_overflows_total",
			"Stream messages dropped because the buffer was full; their records are fetched."),
		Invalid: b.Counter("ingest_storage_invalid_records_total",
			"Messages and records that did not decode, skipped."),
	}
	m := &writerMetrics{
		follower: f,
		invalid:  f.Invalid,
		samples: b.Counter("ingest_storage_samples_written_total",
			"Samples (numeric and string fields) in points the sink has taken."),
		points: b.Counter("ingest_storage_points_written_total", "Points (device messages) the sink has taken."),
		writeDuration: b.Histogram("ingest_storage_write_duration_seconds",
			"Duration of one sink write, failed ones included.", prometheus.ExponentialBuckets(0.0005, 2, 16)),
		delivery: b.Histogram("ingest_storage_delivery_latency_seconds",
			"End-to-end latency into the store: from a message's receipt at the frontend (its envelope's receive time) to the sink holding it (for the embedded TSDB, fsynced), once per point written. Across hosts it includes the clocks' difference; negative values count as 0.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}),
		sinkErrors: b.CounterVec("ingest_storage_sink_errors_total", "Failed sink writes (retried), by kind.", "kind"),
		skipped: b.CounterVec("ingest_storage_released_unstored_records_total",
			"Records a middletier released before this writer stored them (the consumer is not in its --consumers).", mt),
	}
	m.leases = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ingest_storage_group_streams",
		Help: "Middletiers' streams this writer follows as the holder of its group's lease (a writer with no group follows every middletier, and shows 0)."},
		func() float64 {
			n := 0
			for _, mb := range m.members {
				if mb.Held() {
					n++
				}
			}
			return float64(n)
		})
	m.leaseByMT = &leaseCollector{m: m, desc: prometheus.NewDesc("ingest_storage_group_lease",
		"1 for each middletier whose stream this writer follows as the holder of its group's lease, 0 for those another writer of the group follows.",
		[]string{"middletier"}, nil)}
	var err error
	b.Add(m.leases, m.leaseByMT)
	m.set, err = b.Register(reg)
	return m, err
}
