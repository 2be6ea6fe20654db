package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/wire"
)

// Endpoints are the two sockets of one middletier a Subscriber uses.
type Endpoints struct {
	// Stream is the middletier's PUB stream (--stream.addr), e.g.
	// tcp://mt-0:5557.
	Stream string
	// Consumer is the middletier's consumer ROUTER (--consumer.addr), for
	// fetch and commit, e.g. tcp://mt-0:5556.
	Consumer string
}

// Options configure a Subscriber. Zero fields mean their defaults.
type Options struct {
	// Consumer is the name the Subscriber commits its checkpoints under at
	// every middletier; name it in the middletiers' --consumers so that
	// they keep every record until it is in the store. Writers that share
	// a name share a checkpoint. Default "storage".
	Consumer string
	// Middletiers are the middletiers to follow. Required.
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
	// FetchTimeout is how long a fetch may go unanswered before it is
	// asked again; after three, the sockets are dialled again.
	// Default 2s.
	FetchTimeout time.Duration
	// IdlePoll is how long the stream may be silent before the Subscriber
	// fetches to see whether it missed the stream's last messages.
	// Default 1s.
	IdlePoll time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed sink writes
	// and between failed connections. Defaults 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		Consumer:     "storage",
		StreamBuffer: 256,
		MaxBatch:     4096,
		FetchTimeout: 2 * time.Second,
		IdlePoll:     time.Second,
		MinBackoff:   100 * time.Millisecond,
		MaxBackoff:   5 * time.Second,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
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
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	setD := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&o.StreamBuffer, d.StreamBuffer)
	set(&o.MaxBatch, d.MaxBatch)
	setD(&o.FetchTimeout, d.FetchTimeout)
	setD(&o.IdlePoll, d.IdlePoll)
	setD(&o.MinBackoff, d.MinBackoff)
	setD(&o.MaxBackoff, d.MaxBackoff)
	return o, nil
}

// Subscriber follows the streams of one or more middletiers and writes
// every record, as a point, to a sink; it commits its checkpoint to a
// middletier only after the sink has the records. See doc.go.
//
// Goroutines, all started and awaited by Run: per middletier, one follower,
// and per connection one that drains the SUB socket and one that reads the
// DEALER socket. Followers take turns at the sink (sinkMu, a leaf lock),
// unless it is a concurrentSink (the embedded TSDB), whose Writes may
// overlap: one follower's transaction then runs during another's fsync,
// and writes committed together share one fsync.
type Subscriber struct {
	opts Options
	sink Sink
	lg   *slog.Logger
	m    *subMetrics

	sinkMu sync.Mutex
	caught atomic.Int32 // followers that have caught up with their middletier once
}

// concurrentSink is a Sink whose Write may be called from several
// goroutines at once.
type concurrentSink interface {
	Sink
	concurrentWrites()
}

// New returns a Subscriber that writes to sink. It starts nothing; the
// caller closes sink after Run. reg and lg may be nil.
func New(opts Options, sink Sink, reg prometheus.Registerer, lg *slog.Logger) (*Subscriber, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	m, err := newSubMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("storage: register metrics: %w", err)
	}
	return &Subscriber{opts: opts, sink: sink, lg: lg, m: m}, nil
}

// CaughtUp reports whether every middletier has been caught up with at
// least once since Run started: the readiness of a storage writer.
func (s *Subscriber) CaughtUp() bool { return int(s.caught.Load()) == len(s.opts.Middletiers) }

// Run follows every middletier until ctx ends, then sends each its last
// checkpoint and returns nil once every goroutine has ended. Records not
// yet written when ctx ends are not committed: the next Run fetches them.
func (s *Subscriber) Run(ctx context.Context) error {
	defer s.m.unregister()
	var wg sync.WaitGroup
	for _, ep := range s.opts.Middletiers {
		f := &follower{s: s, ep: ep, name: ep.Consumer}
		wg.Go(func() { f.run(ctx) })
	}
	wg.Wait()
	return nil
}

// follower follows one middletier. Its fields are owned by its goroutine.
type follower struct {
	s    *Subscriber
	ep   Endpoints
	name string // the middletier's id once known, its consumer endpoint before

	next      uint64 // the next sequence to take; 0: not known yet
	last      uint64 // the middletier's last sequence, as last seen
	committed uint64 // sent as checkpoint
	caught    bool

	points []Point
	upTo   uint64 // the batch covers every sequence up to it

	conn *link
}

var errStale = errors.New("connection stale")

func (f *follower) run(ctx context.Context) {
	backoff := f.s.opts.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := f.session(ctx)
		if ctx.Err() != nil {
			return
		}
		f.s.m.reconnects.WithLabelValues(f.name).Inc()
		f.s.lg.Warn("storage: middletier connection lost; dialling again", "middletier", f.name,
			"stream", f.ep.Stream, "consumer", f.ep.Consumer, "err", err, "retry_in", backoff)
		if time.Since(start) > 10*f.s.opts.MaxBackoff {
			backoff = f.s.opts.MinBackoff
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, f.s.opts.MaxBackoff)
	}
}

// session connects, resumes from the checkpoint, catches up and follows
// the stream until the connection fails or ctx ends.
func (f *follower) session(ctx context.Context) error {
	o := f.s.opts
	// The sockets outlive ctx by a moment: finalCommit sends on them.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var err error
	f.conn, err = dialLink(sctx, f.ep.Consumer, o.Consumer, o.FetchTimeout, func(ca *wire.CommitAck) {
		f.s.m.checkpoint.WithLabelValues(f.name).Set(float64(ca.Seq))
	})
	if err != nil {
		return err
	}
	defer f.conn.close()
	sub := zmq4.NewSub(sctx, zmq4.WithDialerTimeout(o.FetchTimeout), zmq4.WithDialerMaxRetries(0))
	defer sub.Close()
	if err := sub.Dial(f.ep.Stream); err != nil {
		return fmt.Errorf("dial stream %s: %w", f.ep.Stream, err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	stream := make(chan []byte, o.StreamBuffer)
	subDead := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer sub.Close()
	wg.Go(func() {
		// Drain the socket whatever the sink does: a SUB that stops
		// reading slows the PUB for every subscriber.
		defer close(subDead)
		for {
			msg, err := sub.Recv()
			if err != nil {
				return
			}
			if len(msg.Frames) != 1 {
				f.s.m.invalid.Inc()
				continue
			}
			select {
			case stream <- msg.Frames[0]:
			default:
				f.s.m.overflows.Inc() // its records are fetched
			}
		}
	})

	if f.next == 0 {
		// Where to resume: the middletier answers a fetch from 0 from
		// this consumer's checkpoint + 1.
		r, err := f.fetch(ctx, 0, 0)
		if err != nil {
			return err
		}
		f.next = r.First
		f.committed = r.First - 1
		f.s.lg.Info("storage: resuming", "middletier", f.name, "from", f.next, "last", r.Last)
	}
	if err := f.catchUp(ctx, 0); err != nil {
		return err
	}
	idle := time.NewTimer(o.IdlePoll)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			f.finalCommit()
			return nil
		case <-subDead:
			return errors.New("stream socket closed")
		case b := <-stream:
			if err := f.onStream(ctx, b); err != nil {
				return err
			}
			// Take whatever else waits, up to a batch, before writing.
		more:
			for len(f.points) < o.MaxBatch {
				select {
				case b := <-stream:
					if err := f.onStream(ctx, b); err != nil {
						return err
					}
				default:
					break more
				}
			}
		case <-idle.C:
			// Silence may mean the stream's last messages were lost.
			if err := f.catchUp(ctx, 0); err != nil {
				return err
			}
		}
		if err := f.flush(ctx); err != nil {
			return err
		}
		idle.Reset(o.IdlePoll)
	}
}

// onStream takes one stream message: records already taken are skipped,
// a gap before it is fetched first.
func (f *follower) onStream(ctx context.Context, b []byte) error {
	m, err := wire.Decode(b)
	st, ok := m.(*wire.Stream)
	if err != nil || !ok {
		f.s.m.invalid.Inc()
		return nil
	}
	f.learn(st.Middletier, st.First+uint64(len(st.Records))-1)
	if st.First > f.next {
		f.s.m.gaps.WithLabelValues(f.name).Inc()
		if err := f.catchUp(ctx, st.First); err != nil {
			return err
		}
	}
	for i, rec := range st.Records {
		if seq := st.First + uint64(i); seq == f.next {
			if err := f.add(ctx, seq, rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// catchUp fetches from next until the middletier has nothing more or,
// with until > 0, next reaches until.
func (f *follower) catchUp(ctx context.Context, until uint64) error {
	for until == 0 || f.next < until {
		r, err := f.fetch(ctx, f.next, uint64(f.s.opts.MaxBatch))
		if err != nil {
			return err
		}
		if r.First > f.next {
			// Released before this consumer had them: the middletier was
			// not told this consumer is durable (--consumers).
			f.s.m.skipped.WithLabelValues(f.name).Add(float64(r.First - f.next))
			f.s.lg.Error("storage: records released by the middletier before they were stored; name this consumer in the middletier's --consumers",
				"middletier", f.name, "consumer", f.s.opts.Consumer, "from", f.next, "to", r.First-1)
			f.next = r.First
			f.upTo = r.First - 1
		}
		for i, rec := range r.Records {
			if err := f.add(ctx, r.First+uint64(i), rec); err != nil {
				return err
			}
		}
		if len(r.Records) == 0 || f.next > r.Last {
			if !f.caught {
				f.caught = true
				f.s.caught.Add(1)
			}
			break
		}
	}
	return f.flush(ctx)
}

// learn notes the middletier's id and last sequence.
func (f *follower) learn(id string, last uint64) {
	if id != "" && f.name != id {
		f.name = id
	}
	f.last = max(f.last, last)
	f.s.m.lag.WithLabelValues(f.name).Set(float64(f.last - min(f.committed, f.last)))
}

// add takes the record at seq (== next) into the batch, writing the batch
// when it is full. A record that does not decode is counted and skipped:
// no retry could ever store it.
func (f *follower) add(ctx context.Context, seq uint64, b []byte) error {
	f.next = seq + 1
	f.upTo = seq
	rec, err := wire.DecodeRecord(b)
	if err == nil {
		var p Point
		if p, err = NewPoint(rec, f.s.opts.Labels); err == nil {
			f.points = append(f.points, p)
		}
	}
	if err != nil {
		f.s.m.invalid.Inc()
		f.s.lg.Debug("storage: record skipped", "middletier", f.name, "seq", seq, "err", err)
	}
	if len(f.points) >= f.s.opts.MaxBatch {
		return f.flush(ctx)
	}
	return nil
}

// flush writes the batch, retrying with backoff until the sink takes it,
// then commits the checkpoint.
//
// The commit may let the middletier release the records for good, so it
// is sent only once Write has returned nil, which a sink returns only when
// the store holds the points durably: the embedded TSDB after an fsync of
// its write logs (TSDB.Write); an external store when it has answered 2xx,
// and what it does with a power loss after that is its own guarantee
// (docs/storage.md, Crash safety).
func (f *follower) flush(ctx context.Context) error {
	if f.upTo <= f.committed {
		return nil
	}
	_, concurrent := f.s.sink.(concurrentSink)
	backoff := f.s.opts.MinBackoff
	for len(f.points) > 0 {
		if !concurrent {
			f.s.sinkMu.Lock()
		}
		start := time.Now()
		err := f.s.sink.Write(ctx, f.points)
		if !concurrent {
			f.s.sinkMu.Unlock()
		}
		f.s.m.writeDuration.Observe(time.Since(start).Seconds())
		if err == nil {
			n := 0
			for i := range f.points {
				n += len(f.points[i].Numbers) + len(f.points[i].Strings)
			}
			f.s.m.samples.Add(float64(n))
			f.s.m.points.Add(float64(len(f.points)))
			now := time.Now()
			for i := range f.points {
				f.s.m.delivery.Observe(max(now.Sub(f.points[i].Received).Seconds(), 0))
			}
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		kind := errorKind(err)
		f.s.m.sinkErrors.WithLabelValues(kind).Inc()
		f.s.lg.Warn("storage: sink write failed; retrying", "kind", kind, "points", len(f.points), "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, f.s.opts.MaxBackoff)
	}
	clear(f.points)
	f.points = f.points[:0]
	f.committed = f.upTo
	f.learn("", 0)
	// Only now, with the sink holding every record up to upTo.
	return f.conn.send(&wire.Commit{Consumer: f.s.opts.Consumer, Seq: f.upTo})
}

// finalCommit repeats the last checkpoint at shutdown and waits a moment
// for its acknowledgement, so that a restart fetches as little again as
// it can. A lost commit costs only repeats.
func (f *follower) finalCommit() {
	if f.committed == 0 {
		return
	}
	if f.conn.send(&wire.Commit{Consumer: f.s.opts.Consumer, Seq: f.committed}) != nil {
		return
	}
	deadline := time.Now().Add(f.s.opts.FetchTimeout)
	for f.conn.acked.Load() < f.committed && time.Now().Before(deadline) {
		select {
		case <-f.conn.ackCh:
		case <-time.After(time.Until(deadline)):
		}
	}
}

// fetch asks for records from from, asking again on timeout; after three
// unanswered fetches the connection is taken for dead.
func (f *follower) fetch(ctx context.Context, from, max uint64) (*wire.FetchReply, error) {
	f.s.m.fetches.WithLabelValues(f.name).Inc()
	for range 3 {
		if err := f.conn.send(&wire.Fetch{Consumer: f.s.opts.Consumer, From: from, Max: max}); err != nil {
			return nil, err
		}
		timer := time.NewTimer(f.s.opts.FetchTimeout)
	wait:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil, ctx.Err()
			case <-f.conn.dead:
				timer.Stop()
				return nil, errors.New("consumer socket closed")
			case <-timer.C:
				break wait
			case r := <-f.conn.replies:
				if from != 0 && r.First < from {
					continue // the answer to an earlier fetch
				}
				timer.Stop()
				f.learn(r.Middletier, r.Last)
				return r, nil
			}
		}
	}
	return nil, fmt.Errorf("fetch from %s: %w: no answer in %v, three times", f.ep.Consumer, errStale, f.s.opts.FetchTimeout)
}

// link is a DEALER socket to one middletier's consumer ROUTER, with a
// reader goroutine. Sends have a watchdog: zmq4 sends have no deadline.
type link struct {
	sck      zmq4.Socket
	timeout  time.Duration
	replies  chan *wire.FetchReply
	acked    atomic.Uint64
	ackCh    chan struct{}
	dead     chan struct{}
	deadOnce sync.Once
	wg       sync.WaitGroup
}

func dialLink(ctx context.Context, endpoint, consumer string, timeout time.Duration, onAck func(*wire.CommitAck)) (*link, error) {
	var rnd [6]byte
	rand.Read(rnd[:])
	// A fresh identity per connection, so that a middletier never answers
	// this socket's requests to an earlier one.
	id := consumer + "#" + hex.EncodeToString(rnd[:])
	sck := zmq4.NewDealer(ctx, zmq4.WithID(zmq4.SocketIdentity(id)), zmq4.WithTimeout(timeout),
		zmq4.WithDialerTimeout(timeout), zmq4.WithDialerMaxRetries(0))
	if err := sck.Dial(endpoint); err != nil {
		sck.Close()
		return nil, fmt.Errorf("dial consumer %s: %w", endpoint, err)
	}
	l := &link{sck: sck, timeout: timeout, replies: make(chan *wire.FetchReply, 4), ackCh: make(chan struct{}, 1), dead: make(chan struct{})}
	l.wg.Go(func() {
		defer l.die()
		for {
			msg, err := sck.Recv()
			if err != nil {
				return
			}
			if len(msg.Frames) != 1 {
				continue
			}
			m, err := wire.Decode(msg.Frames[0])
			if err != nil {
				continue
			}
			switch m := m.(type) {
			case *wire.FetchReply:
				select {
				case l.replies <- m:
				default: // nobody waits for it: the fetch was asked again
				}
			case *wire.CommitAck:
				if m.Seq > l.acked.Load() {
					l.acked.Store(m.Seq)
				}
				onAck(m)
				select {
				case l.ackCh <- struct{}{}:
				default:
				}
			}
		}
	})
	return l, nil
}

func (l *link) die() { l.deadOnce.Do(func() { close(l.dead) }) }

// send sends m, closing the socket if the send stalls.
func (l *link) send(m wire.Message) error {
	done := make(chan error, 1)
	b := wire.Append(nil, m)
	go func() { done <- l.sck.Send(zmq4.NewMsg(b)) }()
	timer := time.NewTimer(l.timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("send %s: %w", m.Kind(), err)
		}
		return nil
	case <-timer.C:
		l.sck.Close() // frees the stalled send
		<-done
		l.die()
		return fmt.Errorf("send %s: %w: stalled for %v", m.Kind(), errStale, l.timeout)
	}
}

func (l *link) close() {
	l.sck.Close()
	l.wg.Wait()
}

type subMetrics struct {
	reg           prometheus.Registerer
	samples       prometheus.Counter
	points        prometheus.Counter
	writeDuration prometheus.Histogram
	delivery      prometheus.Histogram
	sinkErrors    *prometheus.CounterVec
	lag           *prometheus.GaugeVec
	checkpoint    *prometheus.GaugeVec
	gaps          *prometheus.CounterVec
	fetches       *prometheus.CounterVec
	skipped       *prometheus.CounterVec
	reconnects    *prometheus.CounterVec
	overflows     prometheus.Counter
	invalid       prometheus.Counter
}

func newSubMetrics(reg prometheus.Registerer) (*subMetrics, error) {
	m := &subMetrics{
		reg: reg,
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_storage_samples_written_total",
			Help: "Samples (numeric and string fields) in points the sink has taken.",
		}),
		points: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_storage_points_written_total",
			Help: "Points (device messages) the sink has taken.",
		}),
		writeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ingest_storage_write_duration_seconds",
			Help:    "Duration of one sink write, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		delivery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ingest_storage_delivery_latency_seconds",
			Help:    "End-to-end latency into the store: from a message's receipt at the frontend (its envelope's receive time) to the sink holding it (for the embedded TSDB, fsynced), once per point written. Across hosts it includes the clocks' difference; negative values count as 0.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		sinkErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_sink_errors_total",
			Help: "Failed sink writes (retried), by kind.",
		}, []string{"kind"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ingest_storage_lag_records",
			Help: "Records a middletier holds beyond this writer's checkpoint there.",
		}, []string{"middletier"}),
		checkpoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ingest_storage_checkpoint",
			Help: "The checkpoint a middletier last acknowledged for this writer.",
		}, []string{"middletier"}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_stream_gaps_total",
			Help: "Gaps in a middletier's stream, filled by fetch.",
		}, []string{"middletier"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_fetches_total",
			Help: "Fetches sent to a middletier (retries not counted).",
		}, []string{"middletier"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_released_unstored_records_total",
			Help: "Records a middletier released before this writer stored them (the consumer is not in its --consumers).",
		}, []string{"middletier"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_reconnects_total",
			Help: "Connections to a middletier lost and dialled again.",
		}, []string{"middletier"}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_storage_stream_overflows_total",
			Help: "Stream messages dropped because the buffer was full; their records are fetched.",
		}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_storage_invalid_records_total",
			Help: "Messages and records that did not decode, skipped.",
		}),
	}
	if reg != nil {
		for _, c := range m.collectors() {
			if err := reg.Register(c); err != nil {
				m.unregister()
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *subMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.samples, m.points, m.writeDuration, m.delivery, m.sinkErrors, m.lag, m.checkpoint,
		m.gaps, m.fetches, m.skipped, m.reconnects, m.overflows, m.invalid}
}

func (m *subMetrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
