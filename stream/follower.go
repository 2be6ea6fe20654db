package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

var (
	// ErrNoConsumer is returned by Fetch of a Follower without a consumer
	// endpoint.
	ErrNoConsumer = errors.New("stream: no consumer endpoint")
	// ErrStopped is returned by Fetch once Run has returned.
	ErrStopped = errors.New("stream: follower stopped")
)

// Endpoints are the two sockets of one middletier a Follower uses.
type Endpoints struct {
	// Stream is the middletier's PUB socket to subscribe to: its stream
	// (--stream.addr) or its feed (--feed.addr), e.g. tcp://mt-0:5557.
	Stream string
	// Consumer is its consumer ROUTER (--consumer.addr), for fetch and
	// commit, e.g. tcp://mt-0:5556. A durable Follower needs it; without it
	// a live Follower reports every gap as lost, and Fetch is refused.
	Consumer string
}

// Options configure a Follower. Zero fields mean their defaults.
type Options struct {
	// Consumer is the name the Follower fetches and commits under, and the
	// prefix of its socket identities. A durable consumer's middletier
	// keeps every record until the consumer has committed it, if the name
	// is in its --consumers. Required.
	Consumer string
	// Durable makes a durable Follower: it starts from the consumer's
	// checkpoint at the middletier, fills every gap (asking again after a
	// reconnection for as long as it takes), and commits what the Handler
	// has taken. Otherwise the Follower is live: it starts at the first
	// stream message it receives, fills a gap only up to MaxGapFill records
	// and with one fetch each, reports the rest as lost, and never commits.
	Durable bool
	// Buffer is how many stream messages wait between the socket and the
	// Follower; past it they are dropped, and their records are a gap.
	// Default 256.
	Buffer int
	// MaxBatch is the most records handed over at once, and asked for in
	// one fetch. Default 4096.
	MaxBatch int
	// Linger is how long a Follower waits for more of the stream after the
	// first record of a batch before it hands the batch over (sooner when
	// it is full). Zero hands over what the socket holds at once. A Handler
	// whose every batch costs an fsync and a commit does one per Linger at
	// most, instead of one per stream message, for up to Linger more delay.
	Linger time.Duration
	// MaxGapFill is the most records a live Follower fetches to fill one
	// gap; older ones are lost. Default 10,000. A durable Follower fills
	// every gap.
	MaxGapFill int
	// FetchTimeout is how long a fetch may go unanswered before it is asked
	// again (durable, three times before the connection is taken for dead)
	// or given up (live); it bounds every dial and send too. Default 2s.
	FetchTimeout time.Duration
	// IdlePoll is how long the stream may be silent before a Follower
	// with a consumer endpoint fetches to see whether it missed the
	// stream's last messages, and whether the middletier still answers.
	// Default 1s.
	IdlePoll time.Duration
	// MinBackoff and MaxBackoff bound the wait before dialling again after
	// a connection failed. Defaults 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// Name begins the Follower's log messages ("storage", "feed").
	// Default "stream".
	Name string
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		Buffer:       256,
		MaxBatch:     4096,
		MaxGapFill:   10000,
		FetchTimeout: 2 * time.Second,
		IdlePoll:     time.Second,
		MinBackoff:   100 * time.Millisecond,
		MaxBackoff:   5 * time.Second,
		Name:         "stream",
	}
}

func (o Options) withDefaults(ep Endpoints) (Options, error) {
	d := DefaultOptions()
	if o.Consumer == "" || len(o.Consumer) > wire.MaxNameLen-zsock.IdentitySuffixLen {
		return o, fmt.Errorf("stream: consumer name must be 1 to %d bytes", wire.MaxNameLen-zsock.IdentitySuffixLen)
	}
	if ep.Stream == "" {
		return o, errors.New("stream: no stream endpoint")
	}
	if o.Durable && ep.Consumer == "" {
		return o, fmt.Errorf("stream: a durable consumer needs the consumer endpoint of %s", ep.Stream)
	}
	if o.Buffer < 0 || o.MaxBatch < 0 || o.MaxGapFill < 0 || o.Linger < 0 {
		return o, errors.New("stream: limits must not be negative")
	}
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setD := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&o.Buffer, d.Buffer)
	set(&o.MaxBatch, d.MaxBatch)
	set(&o.MaxGapFill, d.MaxGapFill)
	setD(&o.FetchTimeout, d.FetchTimeout)
	setD(&o.IdlePoll, d.IdlePoll)
	setD(&o.MinBackoff, d.MinBackoff)
	setD(&o.MaxBackoff, d.MaxBackoff)
	if o.FetchTimeout < time.Millisecond {
		// A fetch that times out at once is dialled again at once: a
		// Follower of 1ns did nothing but redial.
		return o, fmt.Errorf("stream: fetch timeout %v: want at least 1ms", o.FetchTimeout)
	}
	if o.Name == "" {
		o.Name = d.Name
	}
	return o, nil
}

// Metrics are the collectors a Follower counts in. Its user creates them
// under its own names and registers them; a nil field is not kept. The
// vectors have one label left, the middletier's id (its consumer endpoint,
// or stream endpoint, until the id is known).
type Metrics struct {
	Received   *prometheus.CounterVec // records in the stream messages taken from the buffer
	Gaps       *prometheus.CounterVec // jumps in sequence
	Filled     *prometheus.CounterVec // records taken by fetch rather than from the stream
	Fetches    *prometheus.CounterVec // fetches sent, retries not counted
	Reconnects *prometheus.CounterVec // connections lost and dialled again
	Lag        *prometheus.GaugeVec   // the middletier's last sequence known, less the last committed (durable) or handed over (live)
	Checkpoint *prometheus.GaugeVec   // the checkpoint the middletier last acknowledged
	Repeats    prometheus.Counter     // records received again, by sequence, and skipped
	Overflows  prometheus.Counter     // stream messages dropped because the buffer was full
	Invalid    prometheus.Counter     // stream messages that did not decode
}

// Batch is a run of consecutive records of one middletier's stream:
// Records[i] is the record at sequence First+i.
type Batch struct {
	Middletier string
	First      uint64
	Records    [][]byte
}

// Cause says why records are lost.
type Cause uint8

const (
	// Released: the middletier no longer holds them. A durable consumer
	// sees this only if the middletier was not told it is durable (its
	// --consumers).
	Released Cause = iota + 1
	// BeyondLimit: the gap was longer than MaxGapFill (live only).
	BeyondLimit
	// Unfetched: the fetch failed, or there is no consumer endpoint (live
	// only).
	Unfetched
)

func (c Cause) String() string {
	switch c {
	case Released:
		return "released"
	case BeyondLimit:
		return "beyond_limit"
	case Unfetched:
		return "unfetched"
	}
	return fmt.Sprintf("cause(%d)", uint8(c))
}

// Gap is a run of records the Follower will not hand over: From to To,
// both included.
type Gap struct {
	Middletier string
	From, To   uint64
	Cause      Cause
}

// Handler takes what a Follower follows. Its methods are called from the
// Follower's Run goroutine, one at a time, in sequence order.
type Handler interface {
	// Records takes a batch. The slice b.Records is the Follower's and is
	// reused once Records returns, and so are the bytes of the records: a
	// later message from the stream may be read into them. A Handler
	// copies what it keeps. For a durable Follower, nil means the
	// records are durable downstream: the Follower commits them (with
	// every record before them). An error, such as ctx's end, hands them
	// back: they are taken again, from the stream or by fetch (a live
	// Follower reports them lost if it cannot fetch them). Records
	// may block (a sink that is down): the socket is still drained, and
	// what overflows is fetched later.
	Records(ctx context.Context, b *Batch) error
	// Lost says the records of g will never be handed over.
	Lost(g Gap)
}

// Follower follows one middletier's stream and hands its records to a
// Handler in sequence order, filling gaps by fetch. See doc.go.
type Follower struct {
	ep Endpoints
	o  Options
	h  Handler
	m  Metrics
	lg *slog.Logger

	fetches chan fetchReq // Fetch's requests, served by Run
	stopped chan struct{} // closed when Run returns
	ran     atomic.Bool

	name      atomic.Pointer[string]
	connected atomic.Bool
	caught    atomic.Bool

	// Owned by Run's goroutine.
	next      uint64 // the next sequence to take; 0: not known yet
	last      uint64 // the middletier's last sequence, as last known
	upTo      uint64 // every sequence up to it is taken into the batch, handed over or lost
	committed uint64 // sent as checkpoint
	acked     uint64 // acknowledged as checkpoint
	first     uint64 // the batch's first sequence
	batch     [][]byte
	held      [][]byte // stream frames read since the last hand-over, which batch's records may be slices of
	out       Batch
	fresh     bool // no stream message taken yet in this connection
	cons      consumer
	c         counters
}

// counters are the Metrics resolved for the middletier's current name.
type counters struct {
	received, gaps, filled, fetches, reconnects prometheus.Counter
	lag, checkpoint                             prometheus.Gauge
}

type fetchReq struct {
	ctx       context.Context // the requester's
	from, max uint64
	reply     chan fetchResult
}

type fetchResult struct {
	r   *wire.FetchReply
	err error
}

// New returns a Follower of the middletier at ep that hands records to h.
// It starts nothing. lg may be nil.
func New(ep Endpoints, opts Options, h Handler, m Metrics, lg *slog.Logger) (*Follower, error) {
	o, err := opts.withDefaults(ep)
	if err != nil {
		return nil, err
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	discard := prometheus.NewCounter(prometheus.CounterOpts{Name: "discard", Help: "Not registered."})
	for _, c := range []*prometheus.Counter{&m.Repeats, &m.Overflows, &m.Invalid} {
		if *c == nil {
			*c = discard
		}
	}
	f := &Follower{ep: ep, o: o, h: h, m: m, lg: lg,
		fetches: make(chan fetchReq),
		stopped: make(chan struct{}),
		batch:   make([][]byte, 0, o.MaxBatch),
		cons:    consumer{endpoint: ep.Consumer, name: o.Consumer, timeout: o.FetchTimeout},
	}
	name := ep.Consumer
	if name == "" {
		name = ep.Stream
	}
	f.setName(name)
	return f, nil
}

// Middletier is the id of the middletier followed, once known; before, its
// consumer endpoint, or its stream endpoint without one.
func (f *Follower) Middletier() string { return *f.name.Load() }

// Connected reports whether the Follower is subscribed to the stream.
func (f *Follower) Connected() bool { return f.connected.Load() }

// CaughtUp reports whether a durable Follower has caught up with the
// middletier at least once: a fetch found nothing more.
func (f *Follower) CaughtUp() bool { return f.caught.Load() }

func (f *Follower) setName(name string) {
	// The gauges of the name known before (the consumer endpoint, until
	// the middletier says its id) are of no middletier: gone, not left at
	// their last value. Its counters move to the new name, so that no
	// series is left of a middletier under its endpoint and no count is
	// lost from a sum.
	if old := f.name.Load(); old != nil && *old != name {
		for _, g := range []*prometheus.GaugeVec{f.m.Lag, f.m.Checkpoint} {
			if g != nil {
				g.DeleteLabelValues(*old)
			}
		}
		for _, v := range []*prometheus.CounterVec{f.m.Received, f.m.Gaps, f.m.Filled, f.m.Fetches, f.m.Reconnects} {
			if v == nil {
				continue
			}
			var m dto.Metric
			if v.WithLabelValues(*old).Write(&m) == nil && m.GetCounter().GetValue() > 0 {
				v.WithLabelValues(name).Add(m.GetCounter().GetValue())
			}
			v.DeleteLabelValues(*old)
		}
	}
	f.name.Store(&name)
	counter := func(v *prometheus.CounterVec) prometheus.Counter {
		if v == nil {
			return prometheus.NewCounter(prometheus.CounterOpts{Name: "discard", Help: "Not registered."})
		}
		return v.WithLabelValues(name)
	}
	gauge := func(v *prometheus.GaugeVec) prometheus.Gauge {
		if v == nil {
			return prometheus.NewGauge(prometheus.GaugeOpts{Name: "discard", Help: "Not registered."})
		}
		return v.WithLabelValues(name)
	}
	f.c = counters{
		received: counter(f.m.Received), gaps: counter(f.m.Gaps), filled: counter(f.m.Filled),
		fetches: counter(f.m.Fetches), reconnects: counter(f.m.Reconnects),
		lag: gauge(f.m.Lag), checkpoint: gauge(f.m.Checkpoint),
	}
}

// Run follows the middletier until ctx ends, dialling again whenever a
// connection fails, and serves Fetch. A durable Follower then sends its
// last checkpoint once more and waits a moment for its acknowledgement.
// Run returns nil once every goroutine it started has ended; records
// handed over but not yet committed when ctx ends are not committed (the
// next Run takes them again). A Follower runs once.
func (f *Follower) Run(ctx context.Context) error {
	if !f.ran.CompareAndSwap(false, true) {
		return errors.New("stream: follower already ran")
	}
	defer close(f.stopped)
	var wg sync.WaitGroup
	defer wg.Wait()
	if f.ep.Consumer != "" {
		wg.Go(func() { f.serveFetches(ctx) })
	}
	backoff := f.o.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := f.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*f.o.MaxBackoff {
			backoff = f.o.MinBackoff
		}
		f.c.reconnects.Inc()
		f.lg.Warn(f.o.Name+": middletier connection lost; dialling again", "middletier", f.Middletier(),
			"stream", f.ep.Stream, "consumer", f.ep.Consumer, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, f.o.MaxBackoff)
	}
	return nil
}

// session subscribes, resumes (durable), catches up and follows the stream
// until a connection fails or ctx ends.
func (f *Follower) session(ctx context.Context) error {
	sub, err := zsock.Subscribe(f.ep.Stream, zsock.SubOptions{Buffer: f.o.Buffer, DialTimeout: f.o.FetchTimeout, OnOverflow: f.m.Overflows.Inc})
	if err != nil {
		return fmt.Errorf("stream socket: %w", err)
	}
	defer sub.Close()
	f.connected.Store(true)
	defer f.connected.Store(false)
	f.lg.Info(f.o.Name+": subscribed to middletier", "middletier", f.Middletier(), "stream", f.ep.Stream)
	f.fresh = true
	defer f.cons.close()
	if !f.o.Durable {
		var idle *time.Timer
		if f.ep.Consumer != "" {
			idle = time.NewTimer(f.o.IdlePoll)
			defer idle.Stop()
		}
		return f.follow(ctx, sub, idle)
	}
	defer func() {
		if ctx.Err() != nil {
			f.finalCommit()
		}
	}()
	if err := f.resume(ctx); err != nil {
		return err
	}
	if err := f.fill(ctx, 0); err != nil {
		return err
	}
	if err := f.flush(ctx); err != nil {
		return err
	}
	idle := time.NewTimer(f.o.IdlePoll)
	defer idle.Stop()
	return f.follow(ctx, sub, idle)
}

// follow takes the stream until a connection fails or ctx ends. idle, for
// a Follower with a consumer endpoint, fires when the stream has been
// silent for IdlePoll.
func (f *Follower) follow(ctx context.Context, sub *zsock.Sub, idle *time.Timer) error {
	var idleC <-chan time.Time
	if idle != nil {
		idleC = idle.C
	}
	for {
		var replies <-chan [][]byte
		var consDone <-chan struct{}
		if f.cons.d != nil {
			replies, consDone = f.cons.d.Recv(), f.cons.d.Done()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sub.Done():
			if err := f.drain(ctx, sub); err != nil {
				return err
			}
			return errors.New("stream socket closed")
		case frames := <-sub.Recv():
			if err := f.onStream(ctx, frames); err != nil {
				return err
			}
			if err := f.gather(ctx, sub); err != nil {
				return err
			}
		case <-idleC:
			// Silence may mean the stream's last messages were lost.
			if !f.o.Durable {
				if err := f.poll(ctx); err != nil {
					return err
				}
			} else if err := f.fill(ctx, 0); err != nil {
				return err
			}
		case frames := <-replies:
			if m := decode(frames); m != nil {
				f.onConsumer(m)
			}
			continue
		case <-consDone:
			err := f.cons.d.Err()
			f.cons.close()
			if f.o.Durable {
				return fmt.Errorf("consumer socket: %w", err)
			}
			continue // a live Follower dials again when it next fetches
		}
		if err := f.flush(ctx); err != nil {
			return err
		}
		if idle != nil {
			idle.Reset(f.o.IdlePoll)
		}
	}
}

// drain takes what the stream socket received before its end, and hands
// it over. The socket's reader hands over all it received before it ends;
// a select that sees the end may pick it before what is still waiting.
func (f *Follower) drain(ctx context.Context, sub *zsock.Sub) error {
	for {
		select {
		case frames := <-sub.Recv():
			if err := f.onStream(ctx, frames); err != nil {
				return err
			}
		default:
			return f.flush(ctx)
		}
	}
}

// gather takes whatever else waits on the stream, up to a batch, before
// the batch is handed over, and with a Linger waits that long for more.
func (f *Follower) gather(ctx context.Context, sub *zsock.Sub) error {
	var until <-chan time.Time
	if f.o.Linger > 0 && len(f.batch) > 0 {
		t := time.NewTimer(f.o.Linger)
		defer t.Stop()
		until = t.C
	}
	for len(f.batch) > 0 && len(f.batch) < f.o.MaxBatch {
		if until == nil {
			select {
			case frames := <-sub.Recv():
				if err := f.onStream(ctx, frames); err != nil {
					return err
				}
				continue
			default:
				return nil
			}
		}
		select {
		case frames := <-sub.Recv():
			if err := f.onStream(ctx, frames); err != nil {
				return err
			}
		case <-until:
			return nil
		case <-ctx.Done():
			return nil
		case <-sub.Done():
			return nil
		}
	}
	return nil
}

// resume asks the middletier where this consumer resumes (a fetch from 0
// is answered from its checkpoint + 1) at the start of every connection.
// A Follower that has taken records before goes on from where it is,
// unless the middletier has lost a checkpoint it acknowledged or resumed
// it from, or holds fewer records than were taken from it: its WAL was created again and its
// sequence restarted, and the Follower starts over from the checkpoint it
// has now. It does the same when the middletier does not hold a checkpoint
// committed and not yet acknowledged: the commit was lost on the way, or
// the sequence restarted before any acknowledgement came, and only
// starting over is safe (repeats, not loss). What it held of the old
// sequence is handed over, not committed.
func (f *Follower) resume(ctx context.Context) error {
	r, err := f.fetch(ctx, 0, 0)
	if err != nil {
		return err
	}
	if f.next != 0 {
		switch {
		case r.First-1 >= f.acked && r.First-1 >= f.committed && r.Last+1 >= f.next:
			return nil
		case r.First-1 >= f.acked && r.Last+1 >= f.next:
			// A commit not acknowledged is not held there: lost on the way,
			// or the middletier's sequence restarted before its state held
			// it (a restart found by nothing else when the Follower has had
			// no acknowledgement since it resumed). Which, the Follower
			// cannot tell: it takes again from the checkpoint held, a
			// repeat at worst.
			f.lg.Info(f.o.Name+": last commit not held by the middletier; taking again from its checkpoint", "middletier", f.Middletier(),
				"checkpoint", r.First-1, "committed", f.committed, "last", r.Last)
		default:
			f.lg.Warn(f.o.Name+": middletier sequence restarted", "middletier", f.Middletier(),
				"checkpoint", r.First-1, "acknowledged", f.acked, "last", r.Last, "expected", f.next)
		}
		if err := f.handOver(ctx); err != nil {
			return err
		}
	}
	// The checkpoint the middletier resumes from counts as acknowledged: a
	// middletier found later with a lower one has lost it, or restarted its
	// sequence, even if nothing has been committed since (a Follower that
	// resumed and had nothing to take).
	f.next, f.upTo, f.committed, f.acked, f.last = r.First, r.First-1, r.First-1, r.First-1, r.Last
	f.lg.Info(f.o.Name+": resuming", "middletier", f.Middletier(), "from", f.next, "last", r.Last)
	return nil
}

// onStream takes one stream message: records already taken are skipped, a
// gap before it is filled first.
func (f *Follower) onStream(ctx context.Context, frames [][]byte) error {
	// Held only once taken: a hand-over while its records are taken
	// gives back the frames before it.
	defer func() { f.held = append(f.held, frames...) }()
	st, ok := decode(frames).(*wire.Stream)
	if !ok || len(st.Records) == 0 {
		f.m.Invalid.Inc()
		return nil
	}
	first, n := st.First, uint64(len(st.Records))
	last := first + n - 1
	fresh := f.fresh
	f.fresh = false
	if (first == 1 || fresh) && first < f.next && !f.o.Durable {
		// A middletier whose WAL was created again: its sequence restarts.
		// (Live: every record taken came after the message that carried 1.
		// And a new subscription is sent only what is published after it,
		// past every sequence taken before (a middletier publishes from its
		// last record on when it starts): the first message of a connection
		// below where the Follower is shows the restart, even when the
		// message from 1 came before the subscription reached the PUB. A
		// durable Follower fetches ahead of the stream, and finds a restart
		// when it resumes.)
		f.lg.Warn(f.o.Name+": middletier sequence restarted at 1", "middletier", st.Middletier, "expected", f.next)
		if err := f.handOver(ctx); err != nil {
			return err
		}
		// The new sequence starts at 1: what came before this message
		// (published before the subscription reached the PUB) is a gap,
		// filled or reported lost as any other, not skipped.
		f.next, f.upTo, f.last = 1, 0, 0
	}
	f.learn(st.Middletier, last)
	f.c.received.Add(float64(n))
	if f.next == 0 {
		// A live Follower's first message: live from here.
		f.next, f.upTo = first, first-1
	}
	switch {
	case last < f.next:
		f.m.Repeats.Add(float64(n))
		return nil
	case first > f.next:
		f.c.gaps.Inc()
		f.lg.Debug(f.o.Name+": gap in stream", "middletier", f.Middletier(), "from", f.next, "to", first-1)
		if err := f.fill(ctx, first); err != nil {
			return err
		}
	}
	for i, rec := range st.Records {
		if seq := first + uint64(i); seq == f.next {
			if err := f.add(ctx, seq, rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// poll is a live Follower's look at the middletier after the stream has
// been silent for IdlePoll: records past the last one taken were lost on
// the way (ZeroMQ drops without a word) or the stream's connection went
// silent without ending (its host gone), and are filled as a gap is. A
// fetch unanswered three times ends the connection, so that both sockets
// are dialled again: a half-open connection would otherwise hold the
// Follower for as long as the kernel keeps it (minutes). Before the
// connection has carried a message it only looks: a sequence past where
// the Follower is may be a restarted middletier's, which the connection's
// first message shows (onStream). A stream that carries nothing while
// the looks find records (its connection half-open, the consumer's
// answering) is followed by fetch, one look per IdlePoll: dialling it
// again would not bring it back (the PUB writes its subscribers in turn,
// and one that stopped reading holds the others), and its late messages,
// below where the Follower is, would be taken on a new connection for a
// restarted middletier's.
func (f *Follower) poll(ctx context.Context) error {
	r, err := f.fetchTries(ctx, max(f.next, 1), 0, 3)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if f.fresh || f.next == 0 || r.Last < f.next {
		return nil
	}
	return f.fill(ctx, r.Last+1)
}

// fill fetches the records from next up to to (excluded) or, with to 0,
// until the middletier has nothing more. A durable Follower returns the
// error of a fetch that failed, and leaves what the middletier did not give
// for later; a live one reports it lost.
func (f *Follower) fill(ctx context.Context, to uint64) error {
	if f.ep.Consumer == "" {
		if to == 0 {
			return nil
		}
		return f.lose(ctx, f.next, to-1, Unfetched)
	}
	if !f.o.Durable && to-f.next > uint64(f.o.MaxGapFill) {
		if err := f.lose(ctx, f.next, to-1-uint64(f.o.MaxGapFill), BeyondLimit); err != nil {
			return err
		}
	}
	for to == 0 || f.next < to {
		n := uint64(f.o.MaxBatch)
		if to != 0 {
			n = min(n, to-f.next)
		}
		r, err := f.fetch(ctx, f.next, n)
		if err != nil {
			if f.o.Durable || ctx.Err() != nil {
				return err
			}
			f.lg.Warn(f.o.Name+": could not fetch a gap", "middletier", f.Middletier(), "from", f.next, "to", to-1, "err", err)
			return f.lose(ctx, f.next, to-1, Unfetched)
		}
		if r.First > f.next {
			end := r.First - 1
			if to != 0 {
				end = min(end, to-1)
			}
			if err := f.lose(ctx, f.next, end, Released); err != nil {
				return err
			}
			if to != 0 && f.next >= to {
				return nil
			}
		}
		recs := r.Records
		if to != 0 {
			recs = recs[:min(uint64(len(recs)), to-f.next)]
		}
		f.c.filled.Add(float64(len(recs)))
		for i, rec := range recs {
			if err := f.add(ctx, r.First+uint64(i), rec); err != nil {
				return err
			}
		}
		if len(r.Records) == 0 || f.next > r.Last {
			if to == 0 {
				f.caught.Store(true)
				return nil
			}
			if f.next < to {
				if f.o.Durable {
					return nil // asked again at the next message or idle poll
				}
				return f.lose(ctx, f.next, to-1, Unfetched)
			}
		}
	}
	return nil
}

// add takes the record at seq (== next) into the batch, handing the batch
// over when it is full.
func (f *Follower) add(ctx context.Context, seq uint64, rec []byte) error {
	if len(f.batch) == 0 {
		f.first = seq
	}
	f.batch = append(f.batch, rec)
	f.next, f.upTo = seq+1, seq
	if len(f.batch) >= f.o.MaxBatch {
		return f.flush(ctx)
	}
	return nil
}

// handOver gives the batch to the Handler. If the Handler refuses it, its
// records are taken again: from the stream or by fetch.
//
// Then nothing refers to the stream frames held, whose records were in the
// batch or not taken: they are given back to the socket's reads.
func (f *Follower) handOver(ctx context.Context) error {
	defer func() {
		for _, b := range f.held {
			zsock.ReleaseFrame(b)
		}
		clear(f.held)
		f.held = f.held[:0]
	}()
	if len(f.batch) == 0 {
		return nil
	}
	f.out = Batch{Middletier: f.Middletier(), First: f.first, Records: f.batch}
	err := f.h.Records(ctx, &f.out)
	f.out = Batch{}
	if err != nil {
		f.next, f.upTo = f.first, f.first-1
	}
	clear(f.batch)
	f.batch = f.batch[:0]
	return err
}

// flush hands the batch over and, for a durable Follower, commits the
// checkpoint: only now, with the Handler holding every record up to upTo.
func (f *Follower) flush(ctx context.Context) error {
	if err := f.handOver(ctx); err != nil {
		return err
	}
	if f.o.Durable && f.upTo > f.committed {
		if err := f.cons.send(&wire.Commit{Consumer: f.o.Consumer, Seq: f.upTo}); err != nil {
			return err
		}
		f.committed = f.upTo
	}
	f.setLag()
	return nil
}

// lose reports the records from to to (included) lost, after handing over
// the batch before them.
func (f *Follower) lose(ctx context.Context, from, to uint64, cause Cause) error {
	if from > to {
		return nil
	}
	if err := f.handOver(ctx); err != nil {
		return err
	}
	f.h.Lost(Gap{Middletier: f.Middletier(), From: from, To: to, Cause: cause})
	f.next, f.upTo = to+1, to
	return nil
}

// learn notes the middletier's id and its last sequence.
func (f *Follower) learn(id string, last uint64) {
	if id != "" && id != f.Middletier() {
		f.setName(id)
	}
	f.last = max(f.last, last)
	f.setLag()
}

func (f *Follower) setLag() {
	done := f.upTo - uint64(len(f.batch))
	if f.o.Durable {
		done = f.committed
	}
	f.c.lag.Set(float64(f.last - min(done, f.last)))
}

// onConsumer takes a message from the consumer socket other than the
// reply awaited.
func (f *Follower) onConsumer(m wire.Message) {
	if ca, ok := m.(*wire.CommitAck); ok {
		f.acked = max(f.acked, ca.Seq)
		f.c.checkpoint.Set(float64(ca.Seq))
	}
	// A FetchReply here answers a fetch that timed out: asked again since.
}

// finalCommit repeats the last checkpoint at shutdown and waits a moment
// for its acknowledgement, so that a restart takes as little again as it
// can. A lost commit costs only repeats.
func (f *Follower) finalCommit() {
	if f.committed == 0 || f.cons.send(&wire.Commit{Consumer: f.o.Consumer, Seq: f.committed}) != nil {
		return
	}
	timer := time.NewTimer(f.o.FetchTimeout)
	defer timer.Stop()
	for f.acked < f.committed {
		select {
		case frames := <-f.cons.d.Recv():
			if m := decode(frames); m != nil {
				f.onConsumer(m)
			}
		case <-f.cons.d.Done():
			return
		case <-timer.C:
			return
		}
	}
}

// fetch asks the middletier for at most max records from from.
func (f *Follower) fetch(ctx context.Context, from, max uint64) (*wire.FetchReply, error) {
	attempts := 1
	if f.o.Durable {
		attempts = 3
	}
	return f.fetchTries(ctx, from, max, attempts)
}

// fetchTries is fetch, asked up to attempts times.
func (f *Follower) fetchTries(ctx context.Context, from, max uint64, attempts int) (*wire.FetchReply, error) {
	f.c.fetches.Inc()
	r, err := f.cons.fetch(ctx, from, max, attempts, f.onConsumer)
	if err != nil {
		return nil, err
	}
	f.learn(r.Middletier, r.Last)
	return r, nil
}
