package feed

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/stream"
	"github.com/ingest-io/ingest/wire"
)

// maxFetch is the most records asked for in one fetch (a middletier answers
// at most 4096).
const maxFetch = 4096

// source is the feed's side of one middletier: its stream.Follower (live,
// never committing) follows the middletier's feed socket and hands the
// records to it, on the Follower's goroutine, to be decoded once and fanned
// out to readers; it tells readers of records lost.
type source struct {
	s   *Server
	cfg Source
	f   *stream.Follower

	name atomic.Pointer[string] // the middletier's id, from its stream
	// next is the next sequence to dispatch, 0 before the first message. It
	// is stored with the hub's read lock held, and read with its write lock:
	// a reader registered when next was n gets every record from n on.
	next atomic.Uint64

	d dispatcher // used by the Follower's goroutine only
}

func newSource(s *Server, cfg Source) (*source, error) {
	src := &source{s: s, cfg: cfg}
	m := s.m
	f, err := stream.New(stream.Endpoints{Stream: cfg.Feed, Consumer: cfg.Consumer}, stream.Options{
		Consumer:     s.opts.ID,
		Buffer:       s.opts.SourceBuffer,
		MaxBatch:     maxFetch,
		MaxGapFill:   s.opts.MaxGapFill,
		FetchTimeout: s.opts.FetchTimeout,
		MaxBackoff:   2 * time.Second,
		Name:         "feed",
	}, src, stream.Metrics{
		Received:  m.received,
		Gaps:      m.gaps,
		Filled:    m.gapRecords.MustCurryWith(prometheus.Labels{"result": "filled"}),
		Lag:       m.lagRecords,
		Repeats:   m.repeats,
		Overflows: m.overflows.WithLabelValues(cfg.Feed),
		Invalid:   m.invalid,
	}, s.lg)
	if err != nil {
		return nil, err
	}
	src.f = f
	return src, nil
}

// named makes the middletier known to the hub by its id.
func (src *source) named(mt string) {
	if p := src.name.Load(); p == nil || *p != mt {
		src.name.Store(&mt)
		src.s.hub.nameSource(mt, src)
	}
}

// Records dispatches a batch of the middletier's records to readers.
func (src *source) Records(_ context.Context, b *stream.Batch) error {
	src.named(b.Middletier)
	src.publish(b.Middletier, b.First, b.Records)
	return nil
}

// Lost tells every reader that the records of g will not come.
func (src *source) Lost(g stream.Gap) {
	src.named(g.Middletier)
	n := g.To - g.From + 1
	src.s.m.gapRecords.WithLabelValues(g.Middletier, "lost").Add(float64(n))
	src.s.hub.broadcast(missedFrame(n, "gap", g.Middletier, g.From, g.To), n, func() { src.next.Store(g.To + 1) })
}

// dispatcher holds the reusable buffers of a source's dispatch.
type dispatcher struct {
	evs      []event
	received []int64 // the envelopes' receive times (Unix ns), for the latency histogram
}

// event is one device message ready for fan-out. Its frame is built only
// when a reader's filter takes it, once, and then shared by every reader it
// is queued for, unchanged until the last of them lets go of it.
type event struct {
	device  string
	group   string
	command bool // a command event: a command frame

	// What the frame is built from.
	env    envelope.Envelope
	dev    registry.Device
	hasDev bool
	mt     string
	seq    uint64
	origin string
	index  uint64
}

// appendFrame appends ev's frame to b.
func (ev *event) appendFrame(b []byte) []byte {
	var dev *registry.Device
	if ev.hasDev {
		dev = &ev.dev
	}
	return appendMessage(b, &ev.env, dev, ev.mt, ev.seq, ev.origin, ev.index, ev.command)
}

// publish decodes records from sequence first on and hands them to the hub.
func (src *source) publish(mt string, first uint64, records [][]byte) {
	d := &src.d
	d.evs = d.evs[:0]
	d.received = d.received[:0]
	var received int64
	origin := ""
	for i, rb := range records {
		ev, ok := src.s.decode(mt, first+uint64(i), rb, origin, true)
		if !ok {
			continue
		}
		origin = ev.origin
		received = ev.env.Received
		d.evs = append(d.evs, ev)
		d.received = append(d.received, received)
	}
	last := first + uint64(len(records)) - 1
	src.s.hub.dispatch(d.evs, (*event).appendFrame, func() { src.next.Store(last + 1) })
	clear(d.evs)
	m := src.s.m
	// Measured after the hand-over to every reader's queue: the frontend's
	// wall clock against this process's, so across hosts it includes their
	// clock skew (a negative difference counts as 0).
	now := time.Now().UnixNano()
	for _, r := range d.received {
		m.latency.Observe(max(float64(now-r), 0) / 1e9)
	}
	if received != 0 {
		m.lagSeconds.WithLabelValues(mt).Set(max(time.Since(time.Unix(0, received)).Seconds(), 0)) // a receive stamp may lead the clock
	}
}

// decode turns one record into an event, its frame not yet built. dedup
// drops records whose (origin, index) was already dispatched. known is
// the origin of the record decoded before, which the event shares if its
// own is the same (wire.DecodeRecordKnown).
//
// A device's payload is not parsed again: the frontend took only a JSON
// object, and the envelope's checksum holds it to what the frontend
// wrote. A command event, which no device wrote, is decoded.
func (s *Server) decode(mt string, seq uint64, rb []byte, known string, dedup bool) (event, bool) {
	rec, err := wire.DecodeRecordKnown(rb, known)
	if err != nil {
		s.m.invalid.Inc()
		return event{}, false
	}
	env, err := envelope.Decode(rec.Data)
	if err != nil {
		s.m.invalid.Inc()
		return event{}, false
	}
	if dedup && !s.hub.first(rec.Origin, rec.Index) {
		s.m.repeats.Inc()
		return event{}, false
	}
	ev := event{device: env.Device, env: env, mt: mt, seq: seq, origin: rec.Origin, index: rec.Index}
	if env.Topic == wire.CommandEventTopic {
		if _, err := wire.DecodeCommandEvent(env.Payload); err != nil {
			s.m.invalid.Inc()
			return event{}, false
		}
		ev.command = true
	}
	if s.opts.Registry != nil {
		if dev, ok := s.opts.Registry.Lookup(env.Device); ok {
			ev.group = dev.Group
			ev.dev, ev.hasDev = dev, true
		}
	}
	return ev, true
}
