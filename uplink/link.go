package uplink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/varint"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// Link forwards a frontend's WAL to a middletier: it reads the WAL in
// order, sends batches over a DEALER connected to one middletier, and
// releases entries from the WAL only once the middletier has acknowledged
// them. See doc.go.
type Link struct {
	opts   Options
	log    *wal.Log
	lg     *slog.Logger
	m      *metrics
	origin string

	socketSeq atomic.Uint64
	// free holds the buffers of batches the sockets have written
	// (DealerOptions.Written), for the next batches to be encoded into.
	free *zsock.Buffers

	// afterFill, set by tests only, runs after each fill on Run's
	// goroutine: an append there lands a commit between fill's look at
	// the log and the wait.
	afterFill func()
}

// New returns a Link for log. It starts nothing. reg and lg may be nil.
func New(opts Options, log *wal.Log, reg prometheus.Registerer, lg *slog.Logger) (*Link, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	lg = lifecycle.Logger(lg)
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("uplink: register metrics: %w", err)
	}
	return &Link{opts: opts, log: log, lg: lg, m: m, origin: Origin(opts.ID, log.ID()),
		free: zsock.NewBuffers(opts.Window+2, minBuffer, maxRecycled)}, nil
}

// Close unregisters the Link's metrics, as Run does when it returns: for a
// Link that never ran. Call it after Run has returned, or instead of Run;
// it does not stop Run (end Run's context for that). It is idempotent.
func (k *Link) Close() error {
	k.m.unregister()
	return nil
}

// Origin is the name under which a middletier knows the entries of the
// frontend id's WAL with the given identity.
func Origin(id string, logID uint64) string {
	return fmt.Sprintf("%s.%016x", id, logID)
}

// sent is a batch waiting for its acknowledgement.
type sent struct {
	last uint64
	at   time.Time
}

// state is the Link's state, owned by Run's goroutine.
type state struct {
	acked     uint64 // every entry up to it is durable in a middletier
	cur       *wal.Cursor
	next      uint64      // index of the next entry to read
	pending   []wal.Entry // read, not yet sent; their Data are the cursor's until its next read (fill reads only once pending is empty)
	batch     wire.Batch  // the batch being encoded, reused
	entries   [][]byte    // its entries, reused
	inflight  []sent
	waitSince time.Time // when the oldest unacknowledged batch was sent, or the last progress
	lastAck   time.Time // last progress, for failover
	timeouts  int       // ack timeouts in a row
	paused    time.Time // no sends before this (busy)
	conn      *zsock.Dealer
	endpoints []string
	at        int // index in endpoints
	dials     int // failed dials, and connections that ended within flapWindow, in a row, for backoff
	// flapped is the middletier whose last connection ended within
	// flapWindow, while no dial since has failed and no failover moved
	// the Link on; "" if none.
	flapped   string
	nextDial  time.Time
	connected time.Time // when the current connection began
	// The last resend asked for on this connection: every batch in flight
	// behind a lost one draws the same request, and one rewind answers
	// them all. A new connection forgets it.
	resentFrom uint64
	resentAt   time.Time

	// Going back to the first choice: every Return a look is taken
	// (probe); when it finds a first choice other than the current
	// middletier and connects to it, that socket waits as standby. Once
	// its connection has lasted flapWindow, the current middletier drains
	// (nothing new is sent until what is in flight is acknowledged), and
	// then the standby takes over. A first choice that drops connections
	// as soon as it takes them is thus never returned to.
	nextLook   time.Time
	lookEvery  time.Duration
	looking    bool
	standby    *zsock.Dealer
	standbyAt  time.Time // when the standby connected
	drainSince time.Time // zero: not draining
	returned   bool      // the current middletier was reached by a return
	returnedAt time.Time
	// lingerUntil is when committed entries that wait for more are read
	// and sent; zero: none wait.
	lingerUntil time.Time
}

// look is what a probe found: the middletiers ranked, and a socket
// connected to the first of them when that is not the current one.
type look struct {
	ranked []string
	conn   *zsock.Dealer
	err    error
}

// Run forwards until ctx ends, then closes its socket. Entries not yet
// acknowledged stay in the WAL for the next Run. It returns nil when ctx
// ends, or the WAL's failure.
func (k *Link) Run(ctx context.Context) error {
	defer k.m.unregister()
	now := time.Now()
	s := &state{acked: k.log.Released(), lastAck: now, waitSince: now, lookEvery: k.opts.Return, nextLook: now.Add(k.opts.Return)}
	if err := k.rewind(s, s.acked+1); err != nil {
		return err
	}
	looks := make(chan look, 1)
	var probes sync.WaitGroup
	defer func() {
		probes.Wait()
		select {
		case l := <-looks:
			if l.conn != nil {
				l.conn.Close()
			}
		default:
		}
		if s.standby != nil {
			s.standby.Close()
		}
		if s.conn != nil {
			s.conn.Close()
		}
	}()
	tick := time.NewTicker(k.opts.AckTimeout / 4)
	defer tick.Stop()
	wakeT := time.NewTimer(time.Hour)
	defer wakeT.Stop()
	for {
		if s.conn == nil && s.standby != nil {
			// The current connection was dropped (no acknowledgement,
			// failover, a full sender queue) while a standby waited:
			// as when it ends, the standby takes over at once. Its
			// probation and the drain need a current connection.
			if err := k.takeStandby(s, "link dropped"); err != nil {
				return err
			}
		}
		if s.conn == nil && !time.Now().Before(s.nextDial) {
			k.connect(ctx, s)
		}
		if s.standby != nil && s.drainSince.IsZero() {
			k.probation(s)
		}
		if s.draining() && len(s.inflight) == 0 {
			if err := k.takeStandby(s, "drained"); err != nil {
				return err
			}
		}
		if k.lookDue(s) {
			s.looking = true
			cur := s.conn.Endpoint()
			probes.Go(func() { looks <- k.probe(ctx, cur) })
		}
		if err := k.fill(ctx, s); err != nil {
			return err
		}
		if ctx.Err() != nil {
			// fill keeps quiet about a read that failed at shutdown,
			// and the loop below would read again at once.
			return nil
		}
		if k.afterFill != nil {
			k.afterFill()
		}
		k.sendReady(s)
		k.m.inflight.Set(float64(s.next - 1 - s.acked - uint64(len(s.pending))))

		var notify <-chan struct{}
		if len(s.pending) == 0 {
			last := k.log.LastIndex()
			if s.next <= last && s.lingerUntil.IsZero() {
				// More is committed than fill read (committed since
				// it looked, or past its limit): read it now. Waiting
				// here would wait for no commit, only for an
				// acknowledgement or the next tick.
				continue
			}
			notify = k.log.Notify()
			if k.log.LastIndex() != last { // committed meanwhile
				continue
			}
		}
		var wake <-chan time.Time
		if at := k.wakeAt(s); !at.IsZero() {
			wakeT.Reset(time.Until(at))
			wake = wakeT.C
		}
		var replies <-chan [][]byte
		var dead <-chan struct{}
		if s.conn != nil {
			replies, dead = s.conn.Recv(), s.conn.Done()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-notify:
			if err := k.log.Err(); err != nil {
				return err
			}
		case <-wake:
		case frames := <-replies:
			if len(frames) != 1 {
				continue
			}
			m, err := wire.Decode(frames[0])
			if err != nil {
				continue
			}
			if err := k.handle(s, m); err != nil {
				return err
			}
		case <-dead:
			k.drop(s, "link lost")
			if s.standby != nil {
				if err := k.takeStandby(s, "link lost"); err != nil {
					return err
				}
			}
		case l := <-looks:
			if err := k.looked(s, l); err != nil {
				return err
			}
		case <-tick.C:
			if err := k.checkTimeouts(s); err != nil {
				return err
			}
		}
	}
}

// wakeAt is when Run has something to do that no message, commit or
// tick announces: the next dial; the end of a busy pause, with entries
// to send; the end of a linger, with entries waiting for it; the end of
// a standby's probation. Zero: none. Called after sendReady; a time past
// makes Run go round again at once.
func (k *Link) wakeAt(s *state) time.Time {
	at := k.wakeToSend(s)
	if s.standby != nil && s.drainSince.IsZero() {
		if p := s.standbyAt.Add(flapWindow); at.IsZero() || p.Before(at) {
			at = p
		}
	}
	return at
}

// wakeToSend is when Run may dial or send again with nothing to announce
// it (wakeAt).
func (k *Link) wakeToSend(s *state) time.Time {
	switch {
	case s.conn == nil:
		if s.nextDial.IsZero() {
			// Dropped since the top of the loop (by sendReady), with no
			// dial failed: dial again now.
			return time.Now()
		}
		return s.nextDial
	case len(s.pending) > 0:
		if len(s.inflight) < k.opts.Window && !s.draining() {
			// sendReady sent what it could: only a pause held the rest
			// (one that may have ended since it looked at the clock).
			return s.paused
		}
		return time.Time{} // an acknowledgement makes room
	}
	return s.lingerUntil
}

// fill reads committed entries into pending, without waiting.
func (k *Link) fill(ctx context.Context, s *state) error {
	if len(s.pending) > 0 || s.next > k.log.LastIndex() {
		return nil
	}
	limit := k.opts.MaxBatchEntries * 4
	if k.opts.Linger > 0 {
		now := time.Now()
		if s.lingerUntil.IsZero() {
			s.lingerUntil = now.Add(k.opts.Linger)
		}
		if now.Before(s.lingerUntil) {
			// Lingering: read whole batches only, and wait up to Linger
			// for the rest, so that a tail read beside full batches does
			// not go as a small batch of its own.
			whole := (k.log.LastIndex() - s.next + 1) / uint64(k.opts.MaxBatchEntries)
			if whole == 0 {
				return nil
			}
			limit = int(min(whole, 4)) * k.opts.MaxBatchEntries
		}
	}
	s.lingerUntil = time.Time{}
	es, err := s.cur.NextBatchShared(ctx, s.pending[:0], limit)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("uplink: read wal: %w", err)
	}
	s.pending = es
	s.next = es[len(es)-1].Index + 1
	return nil
}

// batchOverhead bounds what a batch's encoding adds beside its origin and
// its entries with their lengths: the header and checksum (7 bytes), and
// four varints (the origin's length, acked, first, the count).
const batchOverhead = 7 + 4*binary.MaxVarintLen64

// sendReady sends pending entries while the window has room.
func (k *Link) sendReady(s *state) {
	now := time.Now()
	for s.conn != nil && !s.draining() && len(s.pending) > 0 && len(s.inflight) < k.opts.Window && !now.Before(s.paused) {
		n, bytes := 0, 0
		for n < len(s.pending) && n < k.opts.MaxBatchEntries && (n == 0 || bytes+len(s.pending[n].Data) <= k.opts.MaxBatchBytes) {
			bytes += len(s.pending[n].Data)
			n++
		}
		// The batch and its entries' list are only read while it is
		// encoded, and are reused. Its encoding is the Dealer's once sent,
		// until the Dealer has written it (k.free): it may still be
		// writing it after a stall, when it never gives it back.
		size := batchOverhead + len(k.origin)
		s.entries = s.entries[:0]
		for _, e := range s.pending[:n] {
			s.entries = append(s.entries, e.Data)
			size += varint.Len(uint64(len(e.Data))) + len(e.Data)
		}
		b := &s.batch
		*b = wire.Batch{Origin: k.origin, Acked: s.acked, First: s.pending[0].Index, Entries: s.entries}
		msg := wire.Append(k.free.Get(size), b)
		clear(s.entries) // keeps no entry alive
		if !s.conn.Send(msg) {
			k.drop(s, "sender queue full")
			return
		}
		if len(s.inflight) == 0 {
			s.waitSince = now
		}
		s.inflight = append(s.inflight, sent{last: b.First + uint64(n) - 1, at: now})
		s.pending = s.pending[n:]
		k.m.batches.Inc()
	}
}

func (k *Link) handle(s *state, m wire.Message) error {
	switch m := m.(type) {
	case *wire.Ack:
		if m.Origin == k.origin {
			return k.progress(s, m.UpTo)
		}
	case *wire.Busy:
		if m.Origin != k.origin {
			return nil
		}
		if err := k.progress(s, m.UpTo); err != nil {
			return err
		}
		k.m.retransmits.WithLabelValues("busy").Inc()
		s.paused = time.Now().Add(m.RetryAfter)
		s.lastAck = time.Now() // a busy middletier is alive: no failover
		return k.rewind(s, s.acked+1)
	case *wire.Resend:
		if m.Origin != k.origin {
			return nil
		}
		from := max(m.From, s.acked+1)
		if from <= s.resentFrom && time.Since(s.resentAt) < k.opts.AckTimeout {
			return nil // answered by the rewind already done
		}
		k.m.retransmits.WithLabelValues("gap").Inc()
		s.resentFrom, s.resentAt = from, time.Now()
		return k.rewind(s, from)
	}
	return nil
}

// progress applies a cumulative acknowledgement.
func (k *Link) progress(s *state, upTo uint64) error {
	if upTo <= s.acked {
		return nil
	}
	if last := k.log.LastIndex(); upTo > last {
		// Not an entry of this log: a middletier that confused origins.
		k.lg.Error("uplink: acknowledgement beyond the last entry; ignored", "up_to", upTo, "last", last)
		return nil
	}
	if err := k.log.Release(upTo); err != nil {
		return fmt.Errorf("uplink: release: %w", err)
	}
	now := time.Now()
	k.m.acked.Add(float64(upTo - s.acked))
	s.acked = upTo
	s.lastAck, s.waitSince, s.timeouts = now, now, 0
	if s.returned && now.Sub(s.returnedAt) > k.opts.Failover {
		// The return held: look again at the usual pace.
		s.returned, s.lookEvery = false, k.opts.Return
	}
	i := 0
	for i < len(s.inflight) && s.inflight[i].last <= upTo {
		k.m.rtt.Observe(now.Sub(s.inflight[i].at).Seconds())
		i++
	}
	s.inflight = s.inflight[i:]
	if first := s.next - uint64(len(s.pending)); upTo >= first {
		// The middletier holds entries not yet sent in this session: skip them.
		return k.rewind(s, upTo+1)
	}
	return nil
}

// rewind makes from the next entry to send, forgetting what is in flight
// and any linger: what waits from there is judged again. (A linger kept
// across a rewind past the last entry would have Run wake for it again
// and again, with nothing to read, until the next commit.)
func (k *Link) rewind(s *state, from uint64) error {
	c, err := k.log.Cursor(from)
	if err != nil {
		return fmt.Errorf("uplink: rewind: %w", err)
	}
	s.cur, s.next, s.pending, s.inflight = c, from, nil, nil
	s.waitSince, s.lingerUntil = time.Now(), time.Time{}
	return nil
}

func (k *Link) checkTimeouts(s *state) error {
	now := time.Now()
	waiting := len(s.inflight) > 0 || len(s.pending) > 0 || s.next <= k.log.LastIndex()
	if !waiting {
		s.lastAck = now
		return nil
	}
	if s.standby != nil {
		select {
		case <-s.standby.Done():
			k.standbyLost(s)
		default:
			if s.draining() && now.Sub(s.drainSince) > k.opts.AckTimeout {
				// The current middletier does not answer what is in
				// flight: those entries go to the first choice too, as
				// across a failover.
				return k.takeStandby(s, "drain timed out")
			}
		}
	}
	// A middletier whose connections end as soon as they begin is as
	// silent as one that answers nothing, though the Link is seldom
	// connected to it when it looks.
	if (s.conn != nil || s.flapped != "") && now.Sub(s.lastAck) > k.opts.Failover && len(s.endpoints) > 1 {
		ep := s.flapped
		if s.conn != nil {
			ep = s.conn.Endpoint()
		}
		if i := slices.Index(s.endpoints, ep); i >= 0 {
			s.at = i // where a look has ranked it, if it has
		}
		k.m.failovers.Inc()
		k.lg.Warn("uplink: middletier silent; moving to the next", "middletier", ep, "silent_for", now.Sub(s.lastAck))
		if s.returned {
			// A first choice that takes connections and acknowledges
			// nothing: look less often, so as not to stall every Return.
			s.lookEvery = min(2*s.lookEvery, 32*k.opts.Return)
			s.returned = false
		}
		if s.conn == nil {
			// Waiting out a flap's backoff: dial the next at once.
			s.nextDial, s.dials = time.Time{}, 0
		}
		k.drop(s, "failover")
		s.at++
		s.lastAck, s.flapped = now, ""
		return k.rewind(s, s.acked+1)
	}
	if len(s.inflight) > 0 && now.Sub(s.waitSince) > k.opts.AckTimeout {
		k.m.retransmits.WithLabelValues("timeout").Inc()
		s.timeouts++
		if s.timeouts >= k.opts.Reconnect {
			// zmq4 drops messages silently while a connection is down: a
			// fresh socket is the way to a working connection.
			k.drop(s, "no acknowledgement")
			s.timeouts = 0
		}
		return k.rewind(s, s.acked+1)
	}
	return nil
}

// drop closes the current socket; Run connects again.
func (k *Link) drop(s *state, why string) {
	if s.conn == nil {
		return
	}
	ep := s.conn.Endpoint()
	k.lg.Info("uplink: closing connection", "middletier", ep, "reason", why)
	k.m.connected.WithLabelValues(ep).Set(0)
	s.conn.Close()
	s.conn = nil
	k.m.reconnects.Inc()
	s.inflight = nil
	if time.Since(s.connected) < flapWindow {
		// A connection that ended as soon as it began (a middletier
		// that takes connections and drops them) is dialed again after
		// a backoff, not again and again at once. Unlike a failed dial
		// it does not move the Link on to the next middletier at once:
		// checkTimeouts does, once the middletier has been silent for
		// Failover.
		k.backoff(s)
		s.flapped = ep
	} else {
		s.dials, s.flapped = 0, ""
	}
}

// flapWindow is how long a connection must last for the next dial, once
// it ends, to go at once.
const flapWindow = time.Second

// connect connects to the current middletier, or on failure arranges the
// next try (the next middletier, after a backoff).
func (k *Link) connect(ctx context.Context, s *state) {
	if len(s.endpoints) == 0 || s.at >= len(s.endpoints) {
		eps := k.opts.Middletiers
		if k.opts.Resolve != nil {
			var err error
			if eps, err = k.opts.Resolve(ctx); err != nil {
				k.lg.Warn("uplink: resolve middletiers", "err", err)
			}
		}
		s.endpoints, s.at = Rank(k.opts.ID, eps), 0
		if len(eps) == 0 {
			k.backoff(s)
			return
		}
	}
	ep := s.endpoints[s.at]
	c, err := k.dial(ep)
	if err != nil {
		if s.dials == 0 {
			k.lg.Warn("uplink: connect", "middletier", ep, "err", err)
		}
		s.at++
		k.backoff(s)
		s.flapped = ""
		return
	}
	s.conn, s.connected = c, time.Now()
	s.resentFrom, s.resentAt = 0, time.Time{}
	k.m.connected.WithLabelValues(ep).Set(1)
	k.lg.Info("uplink: connected", "middletier", ep)
	if err := k.rewind(s, s.acked+1); err != nil && !errors.Is(err, wal.ErrClosed) {
		k.lg.Error("uplink: rewind", "err", err)
	}
}

// dial connects a socket to ep.
func (k *Link) dial(ep string) (*zsock.Dealer, error) {
	// An identity of its own per socket, so that a middletier never
	// answers this socket's batches to an earlier one. The sequence is
	// shared with the probe's goroutine. The origin is cut where the whole
	// would pass ZMTP's bound: the batches carry it whole.
	n := k.socketSeq.Add(1)
	return zsock.Dial(ep, zsock.DealerOptions{
		Identity:    zsock.FitIdentity(k.origin, fmt.Sprintf("#%d-%x", n, rand.Uint32())),
		SendStall:   k.opts.SendStall,
		DialTimeout: k.opts.DialTimeout,
		SendQueue:   k.opts.Window * 2,
		RecvQueue:   k.opts.Window * 2,
		Written:     k.free.Put,
	})
}

// maxRecycled bounds the buffers the Link keeps: (Window+2) of them,
// 4.5 MiB at most at the default Window, whatever a burst of large
// batches left. A new buffer has at least minBuffer bytes, so that
// batches of a few entries fit in the buffers of others.
const (
	maxRecycled = 256 << 10
	minBuffer   = 4096
)

func (s *state) draining() bool { return s.standby != nil && !s.drainSince.IsZero() }

// lookDue reports whether it is time to look for a better middletier: the
// Link is connected, not already looking or returning, and either not on
// its first choice or finding its middletiers through Resolve (where a new
// one may have become the first choice).
func (k *Link) lookDue(s *state) bool {
	if s.conn == nil || s.looking || s.standby != nil || time.Now().Before(s.nextLook) {
		return false
	}
	return s.at > 0 || k.opts.Resolve != nil
}

// probe ranks the middletiers anew and, when the first of them is not cur,
// connects a socket to it. It runs on a goroutine of its own: resolving
// and dialing take time, during which Run keeps forwarding.
func (k *Link) probe(ctx context.Context, cur string) look {
	eps := k.opts.Middletiers
	if k.opts.Resolve != nil {
		var err error
		if eps, err = k.opts.Resolve(ctx); err != nil {
			return look{err: err}
		}
	}
	l := look{ranked: Rank(k.opts.ID, eps)}
	if len(l.ranked) == 0 || l.ranked[0] == cur {
		return l
	}
	l.conn, l.err = k.dial(l.ranked[0])
	return l
}

// looked takes what a probe found.
func (k *Link) looked(s *state, l look) error {
	s.looking = false
	s.nextLook = time.Now().Add(s.lookEvery)
	if l.err != nil {
		k.lg.Debug("uplink: first choice not back", "err", l.err)
		return nil
	}
	if len(l.ranked) == 0 {
		return nil
	}
	if s.conn == nil {
		// Lost meanwhile: the next connect starts from the first choice.
		if l.conn != nil {
			l.conn.Close()
		}
		s.endpoints, s.at = l.ranked, len(l.ranked)
		return nil
	}
	if l.conn == nil || l.conn.Endpoint() == s.conn.Endpoint() {
		// Already on the first choice (or back on it meanwhile, by a
		// failover around the list).
		if l.conn != nil {
			l.conn.Close()
		}
		s.endpoints, s.at = l.ranked, max(0, slices.Index(l.ranked, s.conn.Endpoint()))
		return nil
	}
	k.lg.Debug("uplink: first choice back; on probation", "middletier", s.conn.Endpoint(), "first_choice", l.conn.Endpoint())
	s.endpoints, s.at = l.ranked, max(0, slices.Index(l.ranked, s.conn.Endpoint()))
	s.standby, s.standbyAt = l.conn, time.Now()
	return nil
}

// probation starts the drain for the standby once its connection has
// lasted flapWindow, and lets it go if it has ended before.
func (k *Link) probation(s *state) {
	select {
	case <-s.standby.Done():
		k.standbyLost(s)
		return
	default:
	}
	if time.Since(s.standbyAt) >= flapWindow {
		k.lg.Info("uplink: first choice back; draining the current middletier", "middletier", s.conn.Endpoint(), "first_choice", s.standby.Endpoint())
		s.drainSince = time.Now()
	}
}

// standbyLost lets go of a standby whose connection has ended, and looks
// less often at a first choice that drops connections.
func (k *Link) standbyLost(s *state) {
	k.lg.Info("uplink: first choice lost before the return", "middletier", s.standby.Endpoint())
	s.standby.Close()
	s.standby, s.standbyAt, s.drainSince = nil, time.Time{}, time.Time{}
	s.lookEvery = min(2*s.lookEvery, 32*k.opts.Return)
}

// takeStandby makes the standby socket the current one: the first choice,
// from the oldest unacknowledged entry on.
func (k *Link) takeStandby(s *state, why string) error {
	select {
	case <-s.standby.Done():
		// Ended too: stay, or connect as after any loss.
		k.standbyLost(s)
		return nil
	default:
	}
	c := s.standby
	s.standby, s.standbyAt, s.drainSince = nil, time.Time{}, time.Time{}
	k.drop(s, "returning to the first choice ("+why+")")
	k.m.returns.Inc()
	now := time.Now()
	s.conn, s.at, s.dials, s.connected = c, 0, 0, now
	s.returned, s.returnedAt, s.lastAck = true, now, now
	s.timeouts, s.resentFrom, s.resentAt = 0, 0, time.Time{}
	k.m.connected.WithLabelValues(c.Endpoint()).Set(1)
	k.lg.Info("uplink: connected", "middletier", c.Endpoint(), "reason", "first choice")
	return k.rewind(s, s.acked+1)
}

func (k *Link) backoff(s *state) {
	s.dials++
	s.nextDial = time.Now().Add(zsock.RedialAfter(s.dials))
}
