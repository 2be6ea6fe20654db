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

	"github.com/ingest-io/ingest/wire"
)

// Group makes a durable consumer one member of a writer group: the writers
// that share Name divide the middletiers' streams among themselves, each
// stream followed by one of them at a time.
type Group struct {
	// Name is the group's, and the consumer name its checkpoint is kept
	// under at every middletier.
	Name string
	// Member names this writer in its group; unique among the group's
	// writers for as long as it runs.
	Member string
	// Slot is the middletier's position in the writer's list of
	// middletiers: writers with the same list divide them evenly.
	Slot int
}

// Member follows one middletier's stream as a member of a writer group. It
// asks the middletier for the group's lease every fifth of the lease's
// time to live and, while it holds it, runs a durable Follower under the
// group's consumer name, which resumes from the group's checkpoint. It
// stops following when the middletier revokes the lease (another member is
// chosen) and then commits its last checkpoint and releases the lease, so
// that the next holder resumes where it stopped; and it stops following,
// without a word, once the lease may have run out unrenewed (the
// middletier unreachable), so that two members never follow at once while
// their clocks run at the same rate. The lease lasts from the sending of
// the request that was granted; the middletier counts it from its receipt.
// A timer ends the Follower when the lease runs out, even while a request
// is held up (a dial to a middletier that answers nothing waits for its
// timeout). Requests that go unanswered for three FetchTimeouts end the
// connection, and the next dials again: a half-open connection (the
// middletier's host gone without a word) may otherwise last for many
// minutes after the middletier is back elsewhere.
//
// Goroutines, all started and awaited by Run: its own, which asks for the
// lease, and the Follower's Run (with the goroutines it owns) while the
// lease is held. The timer's function only cancels the Follower.
type Member struct {
	ep   Endpoints
	o    Options
	g    Group
	h    Handler
	m    Metrics
	lg   *slog.Logger
	held prometheus.Gauge // 1 while the lease is held; nil: not kept

	ran   atomic.Bool
	known atomic.Bool // the middletier has answered: it knows who follows
	hold  atomic.Bool
	fol   atomic.Pointer[Follower]
	name  atomic.Pointer[string]
}

// NewMember returns a Member of group g that follows the middletier at ep
// while it holds the group's lease there, handing records to h. opts are
// the Follower's: Durable is implied, and Consumer is the group's name.
// held, if not nil, is set to 1 while the lease is held. It starts
// nothing. lg may be nil.
func NewMember(ep Endpoints, opts Options, g Group, h Handler, m Metrics, held prometheus.Gauge, lg *slog.Logger) (*Member, error) {
	opts.Consumer, opts.Durable = g.Name, true
	o, err := opts.withDefaults(ep)
	if err != nil {
		return nil, err
	}
	if g.Member == "" || len(g.Member) > wire.MaxNameLen {
		return nil, fmt.Errorf("stream: group member name must be 1 to %d bytes", wire.MaxNameLen)
	}
	if g.Slot < 0 {
		return nil, errors.New("stream: negative slot")
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	mb := &Member{ep: ep, o: o, g: g, h: h, m: m, lg: lg, held: held}
	name := ep.Consumer
	mb.name.Store(&name)
	return mb, nil
}

// Middletier is the id of the middletier, once it has answered; before,
// its consumer endpoint.
func (mb *Member) Middletier() string { return *mb.name.Load() }

// Held reports whether the Member holds its group's lease and follows.
func (mb *Member) Held() bool { return mb.hold.Load() }

// CaughtUp reports whether the middletier has answered and, if this
// Member holds the lease, its Follower has caught up once: the readiness
// of a writer, which has nothing to catch up with on a stream that another
// member follows.
func (mb *Member) CaughtUp() bool {
	if !mb.known.Load() {
		return false
	}
	f := mb.fol.Load()
	return f == nil || f.CaughtUp()
}

// Run asks for the lease and follows while it holds it, until ctx ends;
// then it stops following (the Follower sends its last checkpoint), leaves
// the group and returns nil once every goroutine it started has ended. A
// Member runs once.
func (mb *Member) Run(ctx context.Context) error {
	if !mb.ran.CompareAndSwap(false, true) {
		return errors.New("stream: member already ran")
	}
	l := leaser{Member: mb, c: consumer{endpoint: mb.ep.Consumer, name: mb.g.Name, timeout: mb.o.FetchTimeout},
		sent: map[uint64]time.Time{}, renew: time.Second}
	defer l.closeConn()
	defer l.stop()
	tick := time.NewTimer(0)
	defer tick.Stop()
	for {
		var replies <-chan [][]byte
		var done <-chan struct{}
		if l.c.d != nil {
			replies, done = l.c.d.Recv(), l.c.d.Done()
		}
		select {
		case <-ctx.Done():
			l.stop()
			l.ask(wire.LeaseLeave)
			return nil
		case <-tick.C:
			if l.c.d != nil && !l.waiting.IsZero() && time.Since(l.waiting) > leaseSilence*l.o.FetchTimeout {
				// A connection that answers nothing (a half-open one, its
				// middletier's host gone) may not end for many minutes:
				// the next request dials again.
				mb.lg.Warn(mb.o.Name+": lease requests unanswered; dialling the middletier again", "middletier", mb.Middletier(),
					"group", mb.g.Name, "silent_for", time.Since(l.waiting))
				l.closeConn()
			}
			if l.following() && time.Now().After(l.until) {
				mb.lg.Warn(mb.o.Name+": lease not renewed in time; stopped following", "middletier", mb.Middletier(), "group", mb.g.Name)
				l.stop()
			}
			l.ask(wire.LeaseHold)
			tick.Reset(l.renew)
		case frames := <-replies:
			l.waiting = time.Time{} // the connection answers
			if r, ok := decode(frames).(*wire.LeaseReply); ok {
				l.onReply(ctx, r)
			}
		case <-done:
			l.closeConn() // asked again at the next tick
		}
	}
}

// leaseSilence is how many FetchTimeouts a Member's requests for the lease
// may go unanswered before it dials again: as many as a durable Follower's
// fetch tries.
const leaseSilence = 3

// leaser is a Member's Run state, owned by its goroutine, but for mu's.
type leaser struct {
	*Member
	c      consumer
	req    uint64
	sent   map[uint64]time.Time // requests in flight, by number
	renew  time.Duration
	until  time.Time // the lease held lasts until then
	cancel context.CancelFunc
	f      *Follower // the Follower of the current or last follow
	wg     sync.WaitGroup
	// waiting is when the oldest request unanswered on the connection was
	// sent; zero: none, or no connection.
	waiting time.Time
	// expiry ends the Follower when the lease runs out unrenewed, on a
	// goroutine of its own: Run may then be held up in a request (a dial
	// to a middletier that answers nothing waits for its timeout).
	expiry *time.Timer

	mu  sync.Mutex
	gen uint64 // follows begun or ended; an expiry of an earlier one does nothing
}

func (l *leaser) following() bool { return l.cancel != nil }

// ask sends a lease request; a failure is answered by the next tick's.
func (l *leaser) ask(op uint8) {
	l.req++
	now := time.Now()
	l.sent[l.req] = now
	for n, at := range l.sent {
		if now.Sub(at) > time.Minute {
			delete(l.sent, n)
		}
	}
	if err := l.c.send(&wire.Lease{Group: l.g.Name, Member: l.g.Member, Req: l.req, Slot: uint64(l.g.Slot), Op: op}); err != nil {
		l.lg.Debug(l.o.Name+": lease request not sent", "middletier", l.Middletier(), "err", err)
		l.waiting = time.Time{} // the socket was closed
		return
	}
	if l.waiting.IsZero() {
		l.waiting = now
	}
}

// closeConn closes the connection for the lease; the next request dials.
func (l *leaser) closeConn() {
	l.c.close()
	l.waiting = time.Time{}
}

// onReply takes the middletier's answer: follow while the lease is held,
// hand the stream over when it is revoked, stop when another holds it.
func (l *leaser) onReply(ctx context.Context, r *wire.LeaseReply) {
	at, ok := l.sent[r.Req]
	if !ok || r.Group != l.g.Name || r.Member != l.g.Member {
		return
	}
	delete(l.sent, r.Req)
	if r.Middletier != l.Middletier() {
		id := r.Middletier
		l.name.Store(&id)
	}
	l.known.Store(true)
	l.renew = max(r.TTL/5, time.Millisecond)
	switch {
	case r.Holder == l.g.Member && r.Revoked:
		if l.following() {
			l.lg.Info(l.o.Name+": handing the stream over to another writer of the group", "middletier", r.Middletier, "group", l.g.Name)
			l.stop()
		}
		l.ask(wire.LeaseRelease)
	case r.Holder == l.g.Member:
		// The middletier counts from the request's receipt, later than
		// its sending: the lease ends here first.
		l.until = at.Add(r.TTL)
		if l.following() && !l.expiry.Stop() {
			// It ran out before this renewal came: the Follower was
			// stopped. Follow again, from the group's checkpoint.
			l.lg.Warn(l.o.Name+": lease not renewed in time; stopped following", "middletier", r.Middletier, "group", l.g.Name)
			l.stop()
		}
		switch {
		case l.following():
			l.expiry.Reset(time.Until(l.until))
		case time.Now().Before(l.until):
			l.start(ctx, r)
		default:
			// The reply came after the lease it grants had run out here
			// (its request was held up for longer than the TTL): a
			// Follower would be stopped as soon as it started. The next
			// tick asks again.
			l.lg.Debug(l.o.Name+": lease granted too late to follow on", "middletier", r.Middletier, "group", l.g.Name, "late_by", time.Since(l.until))
		}
	default:
		if l.following() {
			l.lg.Warn(l.o.Name+": another writer of the group holds the lease; stopped following", "middletier", r.Middletier,
				"group", l.g.Name, "holder", r.Holder)
			l.stop()
		}
	}
}

// start runs a Follower of the stream for as long as the lease is held.
func (l *leaser) start(ctx context.Context, r *wire.LeaseReply) {
	f, err := New(l.ep, l.o, l.h, l.m, l.lg)
	if err != nil {
		l.lg.Error(l.o.Name+": cannot follow", "middletier", r.Middletier, "err", err) // options were checked in NewMember
		return
	}
	l.lg.Info(l.o.Name+": lease taken; following", "middletier", r.Middletier, "group", l.g.Name, "member", l.g.Member, "writers", r.Writers)
	fctx, cancel := context.WithCancel(ctx)
	l.cancel = cancel
	l.f = f
	l.mu.Lock()
	l.gen++
	gen := l.gen
	l.fol.Store(f)
	l.hold.Store(true)
	if l.held != nil {
		l.held.Set(1)
	}
	l.mu.Unlock()
	l.expiry = time.AfterFunc(time.Until(l.until), func() { l.expire(gen, cancel) })
	l.wg.Go(func() { f.Run(fctx) })
}

// expire ends follow gen, unless it has ended already: the lease ran out
// unrenewed. The Follower is cancelled, not waited for: Run waits for it
// when it next looks at the lease.
func (l *leaser) expire(gen uint64, cancel context.CancelFunc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if gen != l.gen {
		return
	}
	cancel()
	l.ended()
}

// ended marks the follow ended. The caller holds mu.
func (l *leaser) ended() {
	l.gen++
	l.fol.Store(nil)
	l.hold.Store(false)
	if l.held != nil {
		l.held.Set(0)
	}
}

// stop ends the Follower, which sends its last checkpoint, and waits for
// it.
func (l *leaser) stop() {
	if l.cancel == nil {
		return
	}
	l.expiry.Stop()
	l.cancel()
	l.wg.Wait()
	l.cancel = nil
	// The lag and the checkpoint are the follower's: a member that no
	// longer follows the stream shows neither for it (another member, or
	// none, follows it now, and moves the group's checkpoint on).
	for _, g := range []*prometheus.GaugeVec{l.m.Lag, l.m.Checkpoint} {
		if g != nil {
			g.DeleteLabelValues(l.f.Middletier())
			g.DeleteLabelValues(l.ep.Consumer)
		}
	}
	l.mu.Lock()
	if l.hold.Load() { // not ended by expire
		l.ended()
	}
	l.mu.Unlock()
}
