package middletier

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/lograte"
	"github.com/ingest-io/ingest/internal/varint"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// Router is a middletier: it takes batches from frontends, makes them
// durable in its WAL, acknowledges them, publishes them as a stream, and
// serves fetch and commit to the stream's consumers. See doc.go.
//
// Goroutines, all started and awaited by Run: each ROUTER socket's Run
// (a receiver and a sender), the ingest worker, the publisher, the fetch
// worker and the state keeper. Lock order: mu and gmu are leaves.
type Router struct {
	opts Options
	log  *wal.Log
	lg   *slog.Logger
	m    *metrics
	// tooLarge spaces the lines that say a batch can never fit.
	tooLarge lograte.Limiter

	ingest   *zsock.Router
	consumer *zsock.Router
	stream   *zsock.Pub
	feed     *zsock.Pub
	// pub holds the buffers of the messages stream and feed send. Its own
	// allocation: a PUB socket's writer outlives the socket (zmq4 never
	// ends it), and holds pub's method, not the Router.
	pub *published

	batches chan inbound
	fetches chan fetchReq
	wake    chan struct{} // wakes the state keeper; capacity 1

	failOnce sync.Once
	failErr  error
	failed   chan struct{} // closed by fail

	stateNoSpace atomic.Bool // the last state write failed for lack of room

	life lifecycle.Once

	mu        sync.Mutex
	highest   map[string]uint64 // per origin: every index up to it is durable here or acknowledged elsewhere
	applied   uint64            // WAL index up to which highest accounts for every record
	ckpt      map[string]uint64 // per consumer: checkpoint
	published uint64            // WAL index up to which records were published
	waiters   []commitWaiter    // commits to acknowledge once the state is durable
	lagging   map[string]bool   // consumers logged as lagging

	scratch appendScratch // the ingest worker's, reused from group to group

	started time.Time // when Run began: no lease is granted for LeaseTTL after (groups.go)

	gmu     sync.Mutex        // guards groups and holders; a leaf
	groups  map[string]*group // writer groups, by name (groups.go)
	holders map[string]string // per group, the holder its gauge shows
}

// appendScratch holds appendGroup's buffers, reused from one group to the
// next: the WAL has copied what it appends when AppendBatch returns, unless
// the append was abandoned (its context ended).
type appendScratch struct {
	buf     []byte
	ends    []int
	records [][]byte
	answers []answer
	marks   map[string]uint64
	// abandoned: an append returned when its context ended, and the WAL
	// may still read what it was given; nothing is reused from then on.
	abandoned bool
}

// maxScratch bounds the records' buffer kept for the next group.
const maxScratch = 16 << 20

// answer is what appendGroup answers a batch: an ack, or a resend.
type answer struct {
	in     inbound
	resend uint64 // non-zero: ask again from here
}

type inbound struct {
	identity []byte
	b        *wire.Batch
	frame    []byte // the frame b was decoded from, whose bytes its entries are
}

type fetchReq struct {
	identity []byte
	f        *wire.Fetch
}

type commitWaiter struct {
	identity []byte
	consumer string
}

// maxCheckpoints bounds the checkpoints kept for consumers that are not
// durable (not in Options.Consumers): a connection may commit under any
// name, and each name would otherwise stay in memory and in the state file
// for good. Past it, a new name takes the place of the lowest checkpoint.
const maxCheckpoints = 1024

// Addrs are the endpoints a Router listens on, ports resolved.
type Addrs struct {
	Ingest, Consumer, Stream, Feed string
}

// ListenError is returned by New when one of the Router's sockets cannot
// bind its address.
type ListenError struct {
	// Socket is the socket's name: ingest, consumer, stream or feed.
	Socket string
	// Addr is the endpoint it was to bind, as configured.
	Addr string
	Err  error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("middletier: %s socket: %v", e.Socket, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// New returns a Router over log, recovering its marks from StateDir and the
// WAL, and binds its sockets, so that Addrs is known before Run: a port 0
// in an address is resolved, and a test can dial the Router at once. It
// starts no goroutine of the Router's own (zmq4 accepts connections from
// the bind on; they wait for Run). Run, or Close instead, closes the
// sockets. reg and lg may be nil.
func New(opts Options, log *wal.Log, reg prometheus.Registerer, lg *slog.Logger) (*Router, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	lg = lifecycle.Logger(lg)
	st, err := readState(opts.StateDir)
	if errors.Is(err, errStateDamaged) {
		// Marks come back from the WAL's retained records, checkpoints start
		// again from nothing: repeats may follow, never loss.
		lg.Warn("middletier: state file damaged; marks recovered from the WAL only, consumer checkpoints reset", "dir", opts.StateDir, "err", err)
		st, err = &state{Origins: map[string]uint64{}, Consumers: map[string]uint64{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("middletier: %w", err)
	}
	r := &Router{
		opts: opts, log: log, lg: lg,
		batches: make(chan inbound, opts.IngestQueue),
		fetches: make(chan fetchReq, 64),
		wake:    make(chan struct{}, 1),
		failed:  make(chan struct{}),
		highest: st.Origins,
		ckpt:    st.Consumers,
		lagging: map[string]bool{},
		groups:  map[string]*group{},
		holders: map[string]string{},
		// The frontend sends a batch that can never fit again after
		// every busy: it is said once in a while, not each time.
		tooLarge: lograte.Limiter{Every: lograte.Every},
	}
	lost := st.Applied > log.LastIndex()
	if lost {
		// The WAL ends before records the state accounts for: it was cut
		// and repaired, or created again. The marks may name records it
		// lost, which frontends that had no acknowledgement for them
		// still hold: kept, they would have those entries taken for
		// repeats and acknowledged, and released nowhere held. Only the
		// records the WAL holds set the marks; the frontends' release
		// marks (a batch's Acked) cover what they were acknowledged
		// before. Repeats may follow, never loss.
		lg.Warn("middletier: the WAL ends before records the state file accounts for (it was repaired or created again); per-origin marks are recovered from the WAL only",
			"dir", opts.StateDir, "state_applied", st.Applied, "last_index", log.LastIndex())
		clear(r.highest)
	}
	if err := r.recoverMarks(); err != nil {
		return nil, err
	}
	r.applied = log.LastIndex()
	r.published = log.LastIndex()
	if err := r.clampCheckpoints(lost); err != nil {
		return nil, err
	}
	r.m, err = newMetrics(reg, opts.ID)
	if err != nil {
		return nil, fmt.Errorf("middletier: register metrics: %w", err)
	}
	r.ingest = r.newSocket("ingest", opts.IngestAddr, 4096)
	r.consumer = r.newSocket("consumer", opts.ConsumerAddr, 256)
	if err := r.listen(); err != nil {
		r.m.unregister()
		return nil, err
	}
	// Every durable consumer is a group, shown with no writer until one
	// shows up.
	now := time.Now()
	for _, c := range opts.Consumers {
		r.groupMetricsLocked(c, r.groupLocked(c, now))
	}
	return r, nil
}

// newSocket returns a ROUTER whose watchdog recycles it when a send stalls.
func (r *Router) newSocket(name, addr string, queue int) *zsock.Router {
	stalls := r.m.stalls.WithLabelValues(name)
	return zsock.NewRouter(addr, zsock.RouterOptions{SendStall: r.opts.SendStall, SendQueue: queue, OnStall: func() {
		r.lg.Warn("middletier: send stalled; closing the socket and listening again", "socket", name, "after", r.opts.SendStall)
		stalls.Inc()
	}}, r.lg.With("socket", name))
}

// recoverMarks raises the per-origin marks to cover every record retained in
// the WAL: the state file covers what was truncated.
func (r *Router) recoverMarks() error {
	err := r.log.ForEach(func(e wal.Entry) error {
		rec, err := wire.DecodeRecord(e.Data)
		if err != nil {
			return fmt.Errorf("entry %d: %w", e.Index, err)
		}
		r.highest[rec.Origin] = max(r.highest[rec.Origin], rec.Index)
		return nil
	})
	if err != nil {
		return fmt.Errorf("middletier: recover marks: %w", err)
	}
	return nil
}

// clampCheckpoints lowers every checkpoint past the WAL's last entry to it,
// durably, before anything is appended. A checkpoint is never set past the
// last entry, so one there says the WAL ends before what it held when the
// checkpoint was taken: it was repaired (cut short) or created again. Its
// next entries take sequences at or below the old checkpoint, and they are
// new to every consumer: left standing, the checkpoint would have a fetch
// from 0 skip them and the WAL released them unseen. The write comes before
// any append, so that a crash cannot leave the old checkpoints over entries
// appended since. With write, the state is written even if no checkpoint
// was lowered: New dropped marks, which must not come back from the old
// file once entries are appended past its Applied.
func (r *Router) clampCheckpoints(write bool) error {
	last := r.log.LastIndex()
	clamped := write
	for c, seq := range r.ckpt {
		if seq > last {
			r.lg.Warn("middletier: a consumer's checkpoint is past the WAL's last entry (the WAL was repaired or created again); it resumes from there",
				"consumer", c, "checkpoint", seq, "last_index", last)
			r.ckpt[c] = last
			clamped = true
		}
	}
	if !clamped {
		return nil
	}
	if err := writeState(r.opts.StateDir, r.stateLocked()); err != nil {
		return fmt.Errorf("middletier: %w", err)
	}
	return nil
}

// listen binds every socket, or none.
func (r *Router) listen() error {
	if err := r.ingest.Listen(); err != nil {
		return &ListenError{Socket: "ingest", Addr: r.opts.IngestAddr, Err: err}
	}
	if err := r.consumer.Listen(); err != nil {
		r.ingest.Close()
		return &ListenError{Socket: "consumer", Addr: r.opts.ConsumerAddr, Err: err}
	}
	r.pub = newPublished()
	stream, err := zsock.ListenPubSent(r.opts.StreamAddr, r.opts.StreamHWM, r.pub.sent)
	if err != nil {
		r.ingest.Close()
		r.consumer.Close()
		return &ListenError{Socket: "stream", Addr: r.opts.StreamAddr, Err: err}
	}
	if r.opts.FeedAddr != "" {
		if r.feed, err = zsock.ListenPubSent(r.opts.FeedAddr, r.opts.StreamHWM, r.pub.sent); err != nil {
			r.ingest.Close()
			r.consumer.Close()
			stream.Close()
			return &ListenError{Socket: "feed", Addr: r.opts.FeedAddr, Err: err}
		}
	}
	r.stream = stream
	return nil
}

// Addrs returns the endpoints the Router's sockets are bound to, ports
// resolved.
func (r *Router) Addrs() Addrs {
	a := Addrs{Ingest: r.ingest.Addr(), Consumer: r.consumer.Addr(), Stream: r.stream.Addr()}
	if r.feed != nil {
		a.Feed = r.feed.Addr()
	}
	return a
}

// Run serves until ctx ends or a WAL failure stops it, then closes every
// socket, waits for every goroutine, makes the state durable and
// unregisters the metrics. It returns nil after a clean stop, or the
// failure. A Router runs once.
func (r *Router) Run(ctx context.Context) error {
	if !r.life.Start() {
		return errors.New("middletier: run: the router has run or is closed")
	}
	r.started = time.Now() // before any lease request is read (groups.go)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.ingest.Run(ctx, r.recvIngest) })
	wg.Go(func() { r.consumer.Run(ctx, r.recvConsumer) })
	wg.Go(func() { r.ingestWorker(ctx) })
	wg.Go(func() { r.publisher(ctx) })
	wg.Go(func() { r.fetchWorker(ctx) })
	wg.Go(func() { r.stateKeeper(ctx) })
	select {
	case <-ctx.Done():
	case <-r.failed:
	}
	cancel()
	wg.Wait()
	r.stream.Close()
	if r.feed != nil {
		r.feed.Close()
	}
	r.pub.close()
	err := r.keepState()
	r.m.unregister()
	if r.failErr != nil {
		return r.failErr
	}
	return err
}

// Close closes the sockets of a Router that never ran and unregisters its
// metrics, as Run does when it returns. Call it after Run has returned, or
// instead of Run; it does not stop Run (end Run's context for that). It is
// idempotent.
func (r *Router) Close() error {
	return r.life.Close(func(ran bool) error {
		if !ran {
			r.ingest.Close()
			r.consumer.Close()
			r.stream.Close()
			if r.feed != nil {
				r.feed.Close()
			}
			r.pub.close()
		}
		r.m.unregister()
		return nil
	})
}

// fail stops the Router with err (a WAL or state failure: fail stop).
func (r *Router) fail(err error) {
	r.failOnce.Do(func() {
		r.failErr = err
		close(r.failed)
	})
}

// recvIngest takes one message from a frontend, on the ingest socket's
// reader goroutine.
func (r *Router) recvIngest(frames [][]byte) {
	m, err := decodeFrom(frames)
	b, ok := m.(*wire.Batch)
	if err != nil || !ok {
		r.m.invalid.WithLabelValues("ingest").Inc()
		if len(frames) == 2 {
			zsock.ReleaseFrame(frames[1])
		}
		return
	}
	r.m.batches.Inc()
	// Added before the worker can take it (and subtract it), so that the
	// gauge never reads below zero.
	r.m.ingestQueue.Add(float64(len(b.Entries)))
	select {
	case r.batches <- inbound{identity: frames[0], b: b, frame: frames[1]}:
	default:
		r.m.ingestQueue.Sub(float64(len(b.Entries)))
		r.m.busy.Inc()
		r.mu.Lock()
		upTo := r.highest[b.Origin]
		r.mu.Unlock()
		r.ingest.Send(frames[0], wire.Append(nil, &wire.Busy{Origin: b.Origin, UpTo: upTo, RetryAfter: r.opts.BusyRetry}))
		zsock.ReleaseFrame(frames[1])
	}
}

// decodeFrom decodes a ROUTER message: the peer's identity, then one frame.
func decodeFrom(frames [][]byte) (wire.Message, error) {
	if len(frames) != 2 {
		return nil, fmt.Errorf("%w: %d frames", wire.ErrInvalid, len(frames))
	}
	return wire.Decode(frames[1])
}

// ingestWorker appends batches to the WAL. It takes whatever batches are
// waiting and appends their new entries with one AppendBatch (one fsync),
// then answers each batch.
func (r *Router) ingestWorker(ctx context.Context) {
	var group []inbound
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-r.batches:
			group = append(group[:0], in)
		}
		size := batchBytes(group[0].b)
	more:
		for len(group) < 1024 && size < 8<<20 {
			select {
			case in := <-r.batches:
				group = append(group, in)
				size += batchBytes(in.b)
			default:
				break more
			}
		}
		for _, in := range group {
			r.m.ingestQueue.Sub(float64(len(in.b.Entries)))
		}
		r.appendGroup(ctx, group)
		// appendGroup copied the entries it appended, and kept nothing
		// of the batches: their frames are read into again.
		for _, in := range group {
			zsock.ReleaseFrame(in.frame)
		}
		clear(group)
	}
}

func batchBytes(b *wire.Batch) int {
	n := 0
	for _, e := range b.Entries {
		n += len(e)
	}
	return n
}

// appendGroup appends the new entries of a group of batches and answers
// each: ack, resend after a gap, or busy at the WAL's bound.
func (r *Router) appendGroup(ctx context.Context, group []inbound) {
	sc := &r.scratch
	if sc.marks == nil {
		sc.marks = map[string]uint64{}
	}
	clear(sc.marks)
	var (
		marks   = sc.marks // the group's marks, applied once durable
		answers = sc.answers[:0]
		buf     = sc.buf[:0]
		ends    = sc.ends[:0]
		repeats int
	)
	var records [][]byte
	// The buffers go back for the next group, but never once an append was
	// abandoned: the WAL may still be reading them.
	defer func() {
		clear(answers) // keeps no batch alive
		sc.answers, sc.ends = answers[:0], ends[:0]
		if sc.abandoned || cap(buf) > maxScratch {
			sc.buf, sc.records = nil, nil
			return
		}
		sc.buf = buf[:0]
		if records != nil {
			sc.records = records[:0]
		}
	}()
	r.mu.Lock()
	mark := func(origin string) uint64 {
		if v, ok := marks[origin]; ok {
			return v
		}
		return r.highest[origin]
	}
	for _, in := range group {
		b := in.b
		base := max(mark(b.Origin), b.Acked)
		if b.First > base+1 {
			// An earlier batch of this origin was lost on the way.
			answers = append(answers, answer{in: in, resend: base + 1})
			continue
		}
		for i, e := range b.Entries {
			idx := b.First + uint64(i)
			if idx <= base {
				repeats++
				continue
			}
			buf = wire.AppendRecord(buf, &wire.Record{Origin: b.Origin, Index: idx, Data: e})
			ends = append(ends, len(buf))
		}
		marks[b.Origin] = max(base, b.First+uint64(len(b.Entries))-1)
		answers = append(answers, answer{in: in})
	}
	r.mu.Unlock()

	var applied uint64 // the last record appended, if any
	if len(ends) > 0 {
		records = sc.records[:0]
		start := 0
		for _, end := range ends {
			records = append(records, buf[start:end:end])
			start = end
		}
		first, err := r.log.AppendBatch(ctx, records)
		if err != nil && ctx.Err() != nil {
			sc.abandoned = true
		}
		switch {
		case errors.Is(err, wal.ErrTooLarge) && len(group) > 1:
			// The group could never fit under the WAL's bound, though its
			// batches might: append them in two halves.
			h := len(group) / 2
			r.appendGroup(ctx, group[:h])
			r.appendGroup(ctx, group[h:])
			return
		case errors.Is(err, wal.ErrTooLarge):
			if n, ok := r.tooLarge.Allow(time.Now()); ok {
				r.lg.Error("middletier: a batch can never fit under the WAL's bound; raise the bound or lower the frontends' batch size",
					"origin", group[0].b.Origin, "entries", len(records), "more_since_last_logged", n)
			}
			fallthrough
		case errors.Is(err, wal.ErrFull), errors.Is(err, wal.ErrNoSpace):
			// At the bound, or the disk is full (the WAL logs it): the
			// WAL keeps what it has, and the frontends send again after
			// the retry hint.
			r.mu.Lock()
			for _, a := range answers {
				r.ingest.Send(a.in.identity, wire.Append(nil, &wire.Busy{Origin: a.in.b.Origin, UpTo: r.highest[a.in.b.Origin], RetryAfter: r.opts.BusyRetry}))
			}
			r.mu.Unlock()
			r.m.busy.Add(float64(len(answers)))
			return
		case err != nil:
			if ctx.Err() == nil {
				r.fail(fmt.Errorf("middletier: append: %w", err))
			}
			return
		}
		r.m.entries.Add(float64(len(records)))
		applied = first + uint64(len(records)) - 1
	}

	// The marks are raised with applied, in one step: a state snapshot
	// (keepState) must never hold an applied that its marks do not cover.
	r.mu.Lock()
	if applied != 0 {
		r.applied = applied
	}
	for origin, v := range marks {
		r.highest[origin] = max(r.highest[origin], v)
	}
	// Counted once the group is taken: a group answered busy, or split
	// in halves that count their own, is not.
	r.m.repeats.Add(float64(repeats))
	for _, a := range answers {
		b := a.in.b
		var msg []byte
		if a.resend != 0 {
			r.m.gaps.Inc()
			msg = wire.Append(nil, &wire.Resend{Origin: b.Origin, From: a.resend})
		} else {
			msg = wire.Append(nil, &wire.Ack{Origin: b.Origin, UpTo: r.highest[b.Origin]})
		}
		r.ingest.Send(a.in.identity, msg)
	}
	r.mu.Unlock()
}

// streamOverhead bounds what a stream message's encoding adds beside its
// middletier id and its records with their lengths: the header and
// checksum (7 bytes), and three varints (the id's length, first, the count).
const streamOverhead = 7 + 3*binary.MaxVarintLen64

// publisher publishes on the stream (and the feed) every record committed
// after New. Records committed before are served by fetch.
func (r *Router) publisher(ctx context.Context) {
	r.mu.Lock()
	from := r.published + 1
	r.mu.Unlock()
	c, err := r.log.Cursor(from)
	if err != nil {
		r.fail(fmt.Errorf("middletier: publish: %w", err))
		return
	}
	var es []wal.Entry
	var records [][]byte
	for {
		es, err = c.NextBatchShared(ctx, es[:0], r.opts.StreamBatch)
		for errors.Is(err, wal.ErrCompacted) && ctx.Err() == nil {
			// Released and truncated under the cursor: every durable
			// consumer committed them (a consumer may be ahead of the
			// stream: it fetches), so they need no publishing. Go on from
			// the first entry the WAL holds; subscribers see the gap.
			r.mu.Lock()
			from := r.published + 1
			r.mu.Unlock()
			if c, err = r.log.Cursor(max(from, r.log.FirstIndex())); err == nil {
				es, err = c.NextBatchShared(ctx, es[:0], r.opts.StreamBatch)
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				r.fail(fmt.Errorf("middletier: publish: %w", err))
			}
			return
		}
		// The entries' data are the cursor's until its next read. The
		// message is encoded into a buffer the sockets own until both are
		// done with it (r.pub): one they gave back, or a new one.
		records = records[:0]
		size := streamOverhead + len(r.opts.ID)
		for _, e := range es {
			records = append(records, e.Data)
			size += varint.Len(uint64(len(e.Data))) + len(e.Data)
		}
		msg := wire.Append(r.pub.buffer(size), &wire.Stream{Middletier: r.opts.ID, First: es[0].Index, Records: records})
		clear(records) // keeps no entry alive
		sockets := 1
		if r.feed != nil {
			sockets = 2
		}
		r.pub.sending(msg, sockets)
		// Past the socket's high-water mark zmq4 drops the message and says
		// nothing: subscribers see the gap by sequence and fetch it.
		r.stream.Send(msg)
		if r.feed != nil {
			r.feed.Send(msg)
		}
		r.m.published.Add(float64(len(es)))
		r.mu.Lock()
		r.published = es[len(es)-1].Index
		r.mu.Unlock()
		// Releasing what was published waits for the state keeper's tick:
		// a state write per publish would put three more fsyncs beside
		// every append to the WAL.
	}
}

// recvConsumer takes one message from a consumer, on the consumer socket's
// reader goroutine.
func (r *Router) recvConsumer(frames [][]byte) {
	m, err := decodeFrom(frames)
	if err != nil {
		r.m.invalid.WithLabelValues("consumer").Inc()
		return
	}
	switch m := m.(type) {
	case *wire.Fetch:
		r.touch(m.Consumer, frames[0])
		select {
		case r.fetches <- fetchReq{identity: frames[0], f: m}:
		default: // the consumer asks again when its fetch times out
		}
	case *wire.Commit:
		r.touch(m.Consumer, frames[0])
		r.mu.Lock()
		if m.Seq > r.ckpt[m.Consumer] && m.Seq <= r.log.LastIndex() {
			r.checkpointLocked(m.Consumer, m.Seq)
		}
		r.waiters = append(r.waiters, commitWaiter{identity: frames[0], consumer: m.Consumer})
		r.mu.Unlock()
		r.poke()
	case *wire.Lease:
		r.lease(frames[0], m)
	default:
		r.m.invalid.WithLabelValues("consumer").Inc()
	}
}

// checkpointLocked sets a consumer's checkpoint. A name that is not a
// durable consumer's, past maxCheckpoints such names, takes the place of
// the lowest of them: a consumer that lost its place resumes from the
// oldest entry it can fetch, which repeats and loses nothing that the WAL
// keeps for it (nothing is kept for a consumer that is not durable). Holds
// r.mu.
func (r *Router) checkpointLocked(consumer string, seq uint64) {
	if _, ok := r.ckpt[consumer]; !ok && !r.durable(consumer) {
		var lowest string
		n := 0
		for c, s := range r.ckpt {
			if r.durable(c) {
				continue
			}
			if n == 0 || s < r.ckpt[lowest] {
				lowest = c
			}
			n++
		}
		if n >= maxCheckpoints {
			delete(r.ckpt, lowest)
		}
	}
	r.ckpt[consumer] = seq
}

// fetchChunk is how many records the fetch worker reads at a time.
const fetchChunk = 16

// fetchWorker serves fetches one at a time from the WAL.
func (r *Router) fetchWorker(ctx context.Context) {
	var es []wal.Entry
	for {
		var req fetchReq
		select {
		case <-ctx.Done():
			return
		case req = <-r.fetches:
		}
		r.m.fetches.Inc()
		reply := &wire.FetchReply{Middletier: r.opts.ID}
		from := req.f.From
		if from == 0 {
			// From the consumer's checkpoint: how a consumer learns where
			// to resume after a restart.
			r.mu.Lock()
			from = r.ckpt[req.f.Consumer] + 1
			r.mu.Unlock()
		}
		for range 2 { // once more if a truncation raced the read
			es = es[:0]
			reply.Oldest, reply.Last = r.log.FirstIndex(), r.log.LastIndex()
			reply.First = max(from, reply.Oldest)
			if reply.First > reply.Last || req.f.Max == 0 {
				break
			}
			c, err := r.log.Cursor(reply.First)
			// A few records at a time, and no more once MaxFetchBytes is
			// reached: the reply holds no more, and reading up to
			// MaxFetchRecords of large records would take many times
			// the bound in memory for nothing.
			n := int(min(req.f.Max, uint64(r.opts.MaxFetchRecords), reply.Last-reply.First+1))
			for size := 0; err == nil && len(es) < n && size <= r.opts.MaxFetchBytes; {
				k := len(es)
				es, err = c.NextBatch(ctx, es, min(fetchChunk, n-len(es)))
				for _, e := range es[k:] {
					size += len(e.Data)
				}
			}
			if errors.Is(err, wal.ErrCompacted) {
				continue
			}
			if err != nil && ctx.Err() == nil {
				r.fail(fmt.Errorf("middletier: fetch: %w", err))
			}
			break
		}
		reply.Records = reply.Records[:0]
		size := 0
		for _, e := range es {
			if size += len(e.Data); size > r.opts.MaxFetchBytes && len(reply.Records) > 0 {
				break
			}
			reply.Records = append(reply.Records, e.Data)
		}
		r.consumer.Send(req.identity, wire.Append(nil, reply))
	}
}

func (r *Router) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// stateKeeper makes the marks and checkpoints durable, acknowledges commits
// once they are, releases the WAL up to what every durable consumer has,
// and keeps the lag gauges.
// The state file is written at most once per StateInterval: a commit that
// arrives sooner waits for the interval's end and shares the write.
func (r *Router) stateKeeper(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	gap := time.NewTimer(time.Hour)
	gap.Stop()
	var next time.Time // the earliest time of the next write
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-tick.C:
			r.keepGroups()
		}
		if d := time.Until(next); d > 0 {
			gap.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-gap.C:
			}
		}
		next = time.Now().Add(r.opts.StateInterval)
		if err := r.keepState(); err != nil {
			r.fail(err)
			return
		}
	}
}

// stateLocked is a copy of what the state file keeps. Holds r.mu, or runs
// before the router's goroutines start.
func (r *Router) stateLocked() *state {
	return &state{Applied: r.applied, Origins: maps.Clone(r.highest), Consumers: maps.Clone(r.ckpt)}
}

func (r *Router) keepState() error {
	r.mu.Lock()
	st := r.stateLocked()
	waiters := r.waiters
	r.waiters = nil
	published := r.published
	r.mu.Unlock()

	// Entries may go once every durable consumer has them (with none, once
	// published), and once the marks that cover them are durable
	// (st.Applied). A consumer may be ahead of the stream: it fetches.
	target := published
	if len(r.opts.Consumers) > 0 {
		target = st.Consumers[r.opts.Consumers[0]]
		for _, c := range r.opts.Consumers[1:] {
			target = min(target, st.Consumers[c])
		}
	}
	target = min(target, st.Applied)

	err := writeState(r.opts.StateDir, st)
	if err != nil && isNoSpace(err) && target > r.log.Released() && r.log.SpendReserve(target, r.opts.StateDir) {
		// The disk is full, likely of the WAL's own entries, which only
		// this state lets go: write it in the room the WAL kept.
		err = writeState(r.opts.StateDir, st)
	}
	if err != nil {
		if !isNoSpace(err) {
			return fmt.Errorf("middletier: %w", err)
		}
		// A full disk: the old state stays in place (its marks and
		// checkpoints are older: repeats after a crash, never loss).
		// Commits wait for a state that holds them, nothing is released,
		// and the next tick tries again.
		r.mu.Lock()
		r.waiters = append(waiters, r.waiters...)
		r.mu.Unlock()
		if r.stateNoSpace.CompareAndSwap(false, true) {
			r.m.stateNoSpace.Set(1)
			r.lg.Warn("middletier: disk full; the state file is written again once there is room, commits wait", "err", err)
		}
		return nil
	}
	r.m.stateWrites.Inc()
	if r.stateNoSpace.CompareAndSwap(true, false) {
		r.m.stateNoSpace.Set(0)
		r.lg.Info("middletier: state file written again")
	}

	if target > r.log.Released() {
		if err := r.log.Release(target); err != nil && !errors.Is(err, wal.ErrClosed) {
			return fmt.Errorf("middletier: release: %w", err)
		}
	}

	// Acknowledged once durable and applied: the room it freed is free.
	for _, w := range waiters {
		r.consumer.Send(w.identity, wire.Append(nil, &wire.CommitAck{Consumer: w.consumer, Seq: st.Consumers[w.consumer]}))
		r.m.commits.Inc()
	}

	last := r.log.LastIndex()
	r.m.streamLagged.Set(float64(last - min(published, last)))
	for _, c := range r.opts.Consumers {
		lag := last - min(st.Consumers[c], last)
		r.m.lag.WithLabelValues(c).Set(float64(lag))
		r.mu.Lock()
		was := r.lagging[c]
		r.lagging[c] = lag > r.opts.LagWarn
		r.mu.Unlock()
		if lag > r.opts.LagWarn && !was {
			r.lg.Warn("middletier: durable consumer far behind; the WAL keeps its entries and fills towards its bound", "consumer", c, "lag_entries", lag)
		}
	}
	return nil
}

// isNoSpace reports whether err says the disk is full (ENOSPC) or a quota
// is used up (EDQUOT).
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
