package feed

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ingest-io/ingest/zsock"
)

// hub is the set of readers and what dispatch needs to reach them.
//
// Lock order: hub.mu, then client.mu. Dispatchers hold hub.mu for reading
// while they queue an event for every reader (never blocking: a full queue
// drops); a reader's (un)registration holds it for writing, so that it sees
// every source's next sequence exactly as of the first event it will get.
type hub struct {
	mu      sync.RWMutex
	clients map[*client]struct{}
	list    []*client // the clients again, for dispatch's loop
	byName  map[string]*source

	seenMu sync.Mutex
	seen   seenByOrigin // the indexes dispatched

	frames frames // device messages' frames readers are done with
}

func newHub() *hub {
	return &hub{clients: make(map[*client]struct{}), byName: make(map[string]*source), seen: seenByOrigin{},
		frames: frames{free: make(chan *sharedFrame, keptFrames)}}
}

func (h *hub) nameSource(name string, src *source) {
	h.mu.Lock()
	h.byName[name] = src
	h.mu.Unlock()
}

// first reports whether (origin, index) was not yet dispatched, and
// records it (seenIndexes).
func (h *hub) first(origin string, index uint64) bool {
	h.seenMu.Lock()
	defer h.seenMu.Unlock()
	return h.seen.add(origin, index)
}

// dispatch queues every event for the readers whose filter matches it, then
// runs advance (which moves the source's next sequence) under the same lock.
// An event's frame is built by build, into one of h.frames, when the first
// reader takes it, and shared by every reader that does; an event no reader
// takes costs no frame.
func (h *hub) dispatch(evs []event, build func(*event, []byte) []byte, advance func()) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for i := range evs {
		ev := &evs[i]
		var f *sharedFrame
		for _, c := range h.list {
			if !c.filter.Load().takes(ev) {
				continue
			}
			if f == nil {
				f = h.frames.get()
				f.b = build(ev, f.b[:0])
				f.device, f.group, f.command = ev.device, ev.group, ev.command
			}
			c.enqueue(f, true, 0)
		}
		if f != nil {
			f.release() // dispatch's own reference
		}
	}
	advance()
}

// broadcast queues a notice for every reader.
func (h *hub) broadcast(frame []byte, missed uint64, advance func()) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	f := &sharedFrame{b: frame} // not kept: notices are few
	for _, c := range h.list {
		c.enqueue(f, false, missed)
	}
	advance()
}

// keptFrames bounds how many frames readers are done with are kept for
// later messages, and maxKeptFrame the size of one: 1,024 of 4 KiB at most.
const (
	keptFrames   = 1024
	maxKeptFrame = 4 << 10
)

// sharedFrame is a frame queued for one or more readers. A device message's
// frame comes from the hub's frames and is counted: one reference for the
// dispatch that builds it and one for each reader's queue it is in. Whoever
// lets go of the last gives it back, to be built into again for a later
// message. A notice's frame (pool nil) is not counted nor kept.
type sharedFrame struct {
	b    []byte
	refs atomic.Int32
	pool *frames
	// What a reader's filter judges a device message by, set when its
	// frame is built: a reader whose filter changed while the frame was in
	// its queue gets it only if the new filter takes it too.
	device, group string
	command       bool
}

// hold adds a reference to f. The caller must hold one already (dispatch
// holds its own while it queues f), so that the count cannot reach zero
// while f is still being handed out.
func (f *sharedFrame) hold() {
	if f.pool != nil {
		f.refs.Add(1)
	}
}

// release lets go of a reference to f; f must not be used afterwards.
func (f *sharedFrame) release() {
	if f.pool != nil && f.refs.Add(-1) == 0 {
		f.pool.put(f)
	}
}

// frames keeps the frames of device messages every reader is done with.
type frames struct {
	free chan *sharedFrame
}

// get returns a frame with one reference and an empty buffer: a kept one,
// or a new one.
func (p *frames) get() *sharedFrame {
	var f *sharedFrame
	select {
	case f = <-p.free:
	default:
		f = &sharedFrame{pool: p}
	}
	f.refs.Store(1)
	return f
}

// put keeps f unless its buffer is over maxKeptFrame or keptFrames are
// kept. In test binaries (zsock.PoisonReleasedFrames) its buffer is filled
// with 0xEE first, kept or not, so that a frame written after its release
// reads as garbage.
func (p *frames) put(f *sharedFrame) {
	zsock.Poison(f.b)
	if cap(f.b) > maxKeptFrame {
		return
	}
	f.b = f.b[:0]
	select {
	case p.free <- f:
	default:
	}
}

// register adds c with its filter, or changes its filter, and returns where
// each middletier's live messages for c start.
func (h *hub) register(c *client, f *filter) map[string]uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.filter.Store(f)
	if _, ok := h.clients[c]; !ok {
		h.clients[c] = struct{}{}
		h.list = append(h.list, c)
	}
	live := make(map[string]uint64, len(h.byName))
	for name, src := range h.byName {
		live[name] = src.next.Load()
	}
	return live
}

func (h *hub) unregister(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[c]; !ok {
		return
	}
	delete(h.clients, c)
	h.list = slices.DeleteFunc(h.list, func(x *client) bool { return x == c })
}

func (h *hub) source(name string) *source {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.byName[name]
}

// item is one frame queued for a reader. missed counts the messages dropped
// for the reader just before this one (its queue was full).
type item struct {
	frame  *sharedFrame // the item's reference, released once the item is written, fails to be, or is abandoned
	missed uint64
	notice bool    // a notice, not a device message
	tells  uint64  // a notice's: the messages it tells the reader of (a gap's records)
	filter *filter // the reader's filter that took the message (nil for a notice)
}

// client is a reader's side of the hub: a bounded queue filled by the
// dispatchers and emptied by the connection's writer.
type client struct {
	queue     chan item
	filter    atomic.Pointer[filter]
	grace     time.Duration
	maxMissed uint64
	m         *metrics

	behind atomic.Bool // something was dropped and not yet reported
	mu     sync.Mutex  // guards the fields below
	missed uint64      // dropped since the last queued item or notice
	since  time.Time   // when the reader began dropping; zero when caught up
	run    uint64      // dropped since then
	// verdict judges the reader at the end of its grace, whether or not
	// anything is dropped or written meanwhile (the stream gone quiet).
	verdict *time.Timer

	slow     chan struct{} // closed when the reader is judged too slow
	slowOnce sync.Once
}

func newClient(o *Options, m *metrics) *client {
	return &client{queue: make(chan item, o.ClientQueue), grace: o.SlowGrace, maxMissed: uint64(o.MaxMissed), m: m, slow: make(chan struct{})}
}

// enqueue queues frame without blocking, with a reference of its own. A
// full queue drops it and counts it for the reader's next missed notice (a
// notice, which is not message, counts the messages it tells of: missed); a
// reader that keeps dropping for longer than its grace, or drops more than
// its limit before catching up, is marked slow and its writer closes it.
func (c *client) enqueue(frame *sharedFrame, message bool, missed uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	frame.hold()
	it := item{frame: frame, missed: c.missed, notice: !message}
	if message {
		// The filter dispatch judged it by: it cannot change meanwhile
		// (register stores it under the hub's write lock).
		it.filter = c.filter.Load()
	} else {
		it.tells = missed
	}
	select {
	case c.queue <- it:
		c.missed = 0
		return
	default:
	}
	frame.release()
	if !message {
		// A notice that does not fit: what it tells of is told by the
		// next notice the reader gets, which the drops behind it bring.
		c.missed += missed
		c.behind.Store(true)
		return
	}
	c.m.dropped.Inc()
	c.missed++
	c.run++
	c.behind.Store(true)
	now := time.Now()
	if c.since.IsZero() {
		c.since = now
		if c.verdict == nil {
			c.verdict = time.AfterFunc(c.grace, c.judge)
		} else {
			c.verdict.Reset(c.grace)
		}
	}
	if c.run > c.maxMissed || now.Sub(c.since) > c.grace {
		c.slowOnce.Do(func() { close(c.slow) })
	}
}

// judge marks the reader slow if it has been behind for its grace.
func (c *client) judge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.since.IsZero() && time.Since(c.since) >= c.grace {
		c.slowOnce.Do(func() { close(c.slow) })
	}
}

// stillBehind is called by the writer after each frame while the reader is
// behind: a reader that has not emptied its queue within its grace since it
// began dropping is marked slow, even when nothing more is being dropped.
func (c *client) stillBehind() {
	if !c.behind.Load() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.since.IsZero() && time.Since(c.since) > c.grace {
		c.slowOnce.Do(func() { close(c.slow) })
	}
}

// caughtUp is called by the writer when the queue is empty: the reader is no
// longer behind. It returns the drops not yet reported.
func (c *client) caughtUp() uint64 {
	if !c.behind.Load() {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.missed
	c.missed, c.run, c.since = 0, 0, time.Time{}
	c.behind.Store(false)
	if c.verdict != nil {
		c.verdict.Stop()
	}
	return n
}

// abandon empties the queue of a reader being closed, releasing its
// frames, and returns how many messages it will not get: those queued,
// those dropped unreported, and those a queued notice tells of.
func (c *client) abandon() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.verdict != nil {
		c.verdict.Stop()
	}
	n := c.missed
	c.missed = 0
	for {
		select {
		case it := <-c.queue:
			n += it.missed
			switch {
			case it.notice:
				n += it.tells // a gap it will not be told of now
			case !c.stale(it):
				n++
			}
			it.frame.release()
		default:
			return n
		}
	}
}

// stale reports whether it is a device message queued under a filter the
// reader has since replaced (a subscribe again) and that its filter now
// does not take: it is not the reader's any more, and is not written.
func (c *client) stale(it item) bool {
	cur := c.filter.Load()
	if it.notice || it.filter == cur {
		return false
	}
	return !cur.admits(it.frame.command, it.frame.device, it.frame.group)
}
