package feed

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/wire"
)

// maxFetch is the most records asked for in one fetch (a middletier answers
// at most 4096).
const maxFetch = 4096

// source follows one middletier. Its receiver goroutine only drains the SUB
// socket into buf (a zmq4 PUB writes its subscribers one after another, so
// a slow subscriber slows every other one, storage writers included on a
// shared socket); its dispatcher goroutine does everything else: sequence
// checks, gap fills, decoding and fan-out to readers.
type source struct {
	s   *Server
	cfg Source
	buf chan *wire.Stream

	gap    *fetcher // used by the dispatcher only; nil without Consumer
	resume *fetcher // shared by readers that resume; nil without Consumer

	name atomic.Pointer[string] // the middletier's id, from its stream
	head atomic.Uint64          // last sequence received on the socket
	// next is the next sequence to dispatch, 0 before the first message. It
	// is stored with the hub's read lock held, and read with its write lock:
	// a reader registered when next was n gets every record from n on.
	next atomic.Uint64

	connected atomic.Bool
}

func newSource(s *Server, cfg Source) *source {
	src := &source{s: s, cfg: cfg, buf: make(chan *wire.Stream, s.opts.SourceBuffer)}
	if cfg.Consumer != "" {
		src.gap = newFetcher(cfg.Consumer, s.opts.ID, "gap", s.opts.FetchTimeout)
		src.resume = newFetcher(cfg.Consumer, s.opts.ID, "resume", s.opts.FetchTimeout)
	}
	return src
}

// receive drains the SUB socket until ctx ends, dialling again whenever the
// connection is lost.
func (src *source) receive(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		sck := zmq4.NewSub(ctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(time.Second))
		if err := sck.Dial(src.cfg.Feed); err != nil {
			sck.Close()
			src.s.lg.Debug("feed: dial middletier", "feed", src.cfg.Feed, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if err := sck.SetOption(zmq4.OptionSubscribe, ""); err != nil {
			sck.Close()
			continue
		}
		src.connected.Store(true)
		src.s.lg.Info("feed: subscribed to middletier", "feed", src.cfg.Feed)
		for {
			msg, err := sck.Recv()
			if err != nil {
				break
			}
			if len(msg.Frames) != 1 {
				src.s.m.invalid.Inc()
				continue
			}
			m, err := wire.Decode(msg.Frames[0])
			st, ok := m.(*wire.Stream)
			if err != nil || !ok {
				src.s.m.invalid.Inc()
				continue
			}
			src.head.Store(st.First + uint64(len(st.Records)) - 1)
			select {
			case src.buf <- st:
			default:
				// Dropped here rather than block the socket; the dispatcher
				// sees the jump in sequence and fetches it.
				src.s.m.overflows.WithLabelValues(src.cfg.Feed).Inc()
			}
		}
		src.connected.Store(false)
		sck.Close()
		if ctx.Err() == nil {
			src.s.lg.Warn("feed: lost the middletier's feed socket; dialling again", "feed", src.cfg.Feed)
		}
	}
}

// dispatch handles stream messages in order until ctx ends.
func (src *source) dispatch(ctx context.Context) {
	var d dispatcher
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-src.buf:
			src.handle(ctx, &d, st)
		}
	}
}

func (src *source) handle(ctx context.Context, d *dispatcher, st *wire.Stream) {
	if p := src.name.Load(); p == nil || *p != st.Middletier {
		name := st.Middletier
		src.name.Store(&name)
		src.s.hub.nameSource(name, src)
	}
	mt := st.Middletier
	src.s.m.received.WithLabelValues(mt).Add(float64(len(st.Records)))
	first, records := st.First, st.Records
	last := first + uint64(len(records)) - 1
	next := src.next.Load()
	switch {
	case next == 0:
		// The first message: live from here.
	case first == 1 && next > 1:
		// A middletier whose WAL was created again: its sequence restarts.
		src.s.lg.Warn("feed: middletier sequence restarted at 1", "middletier", mt, "expected", next)
	case last < next:
		src.s.m.repeats.Add(float64(len(records)))
		return
	case first < next:
		records = records[next-first:]
		first = next
	case first > next:
		src.fillGap(ctx, d, mt, next, first)
	}
	src.publish(d, mt, first, records)
}

// fillGap fetches the records [from, to) the stream skipped, within
// MaxGapFill, and publishes them; what it cannot get is reported to every
// reader as missed.
func (src *source) fillGap(ctx context.Context, d *dispatcher, mt string, from, to uint64) {
	m := src.s.m
	m.gaps.WithLabelValues(mt).Inc()
	src.s.lg.Debug("feed: gap in stream", "middletier", mt, "from", from, "to", to-1)
	if src.gap == nil {
		src.lost(mt, from, to)
		return
	}
	if to-from > uint64(src.s.opts.MaxGapFill) {
		cut := to - uint64(src.s.opts.MaxGapFill)
		src.lost(mt, from, cut)
		from = cut
	}
	for from < to {
		r, err := src.gap.fetch(ctx, from, min(to-from, maxFetch))
		if err != nil {
			src.s.lg.Warn("feed: could not fetch a gap", "middletier", mt, "from", from, "to", to-1, "err", err)
			src.lost(mt, from, to)
			return
		}
		if r.First > from {
			src.lost(mt, from, min(r.First, to))
			from = min(r.First, to)
		}
		if from >= to {
			return
		}
		if len(r.Records) == 0 {
			src.lost(mt, from, to)
			return
		}
		recs := r.Records[:min(uint64(len(r.Records)), to-from)]
		m.gapRecords.WithLabelValues(mt, "filled").Add(float64(len(recs)))
		src.publish(d, mt, from, recs)
		from += uint64(len(recs))
	}
}

// lost tells every reader that the records [from, to) will not come.
func (src *source) lost(mt string, from, to uint64) {
	if from >= to {
		return
	}
	src.s.m.gapRecords.WithLabelValues(mt, "lost").Add(float64(to - from))
	src.s.hub.broadcast(missedFrame(to-from, "gap", mt, from, to-1), func() { src.next.Store(to) })
}

// dispatcher holds a dispatch goroutine's reusable buffers.
type dispatcher struct {
	evs      []event
	received []int64 // the envelopes' receive times (Unix ns), for the latency histogram
}

// event is one device message ready for fan-out: the frame is shared by
// every reader it is queued for, and never changed.
type event struct {
	device string
	group  string
	frame  []byte
}

// publish decodes records from sequence first on and hands them to the hub.
func (src *source) publish(d *dispatcher, mt string, first uint64, records [][]byte) {
	d.evs = d.evs[:0]
	d.received = d.received[:0]
	var received int64
	for i, rb := range records {
		ev, env, ok := src.s.decode(mt, first+uint64(i), rb, true)
		if !ok {
			continue
		}
		received = env.Received
		d.evs = append(d.evs, ev)
		d.received = append(d.received, received)
	}
	last := first + uint64(len(records)) - 1
	src.s.hub.dispatch(d.evs, func() { src.next.Store(last + 1) })
	clear(d.evs)
	m := src.s.m
	// Measured after the hand-over to every reader's queue: the frontend's
	// wall clock against this process's, so across hosts it includes their
	// clock skew (a negative difference counts as 0).
	now := time.Now().UnixNano()
	for _, r := range d.received {
		m.latency.Observe(max(float64(now-r), 0) / 1e9)
	}
	if h := src.head.Load(); h > last {
		m.lagRecords.WithLabelValues(mt).Set(float64(h - last))
	} else {
		m.lagRecords.WithLabelValues(mt).Set(0)
	}
	if received != 0 {
		m.lagSeconds.WithLabelValues(mt).Set(max(time.Since(time.Unix(0, received)).Seconds(), 0)) // a receive stamp may lead the clock
	}
}

// decode turns one record into an event. dedup drops records whose
// (origin, index) was already dispatched.
func (s *Server) decode(mt string, seq uint64, rb []byte, dedup bool) (event, *envelope.Envelope, bool) {
	rec, err := wire.DecodeRecord(rb)
	if err != nil {
		s.m.invalid.Inc()
		return event{}, nil, false
	}
	env, err := envelope.Decode(rec.Data)
	if err != nil || !json.Valid(env.Payload) {
		s.m.invalid.Inc()
		return event{}, nil, false
	}
	if dedup && !s.hub.first(rec.Origin, rec.Index) {
		s.m.repeats.Inc()
		return event{}, nil, false
	}
	ev := event{device: env.Device}
	if s.opts.Registry != nil {
		if dev, ok := s.opts.Registry.Lookup(env.Device); ok {
			ev.group = dev.Group
			ev.frame = appendMessage(make([]byte, 0, 256+len(env.Payload)), &env, &dev, mt, seq, rec.Origin, rec.Index)
			return ev, &env, true
		}
	}
	ev.frame = appendMessage(make([]byte, 0, 192+len(env.Payload)), &env, nil, mt, seq, rec.Origin, rec.Index)
	return ev, &env, true
}
