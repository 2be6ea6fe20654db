package frontend

import "sync"

// flushQueue is what the reader and the flusher of a connection share,
// over WebSocket (conn) or MQTT (mqttConn): what was read and waits for
// the WAL, in a pending buffer from a pool, and whether a flusher runs.
// The reader queues and starts a flusher when none runs; the flusher
// takes what is pending (next) until nothing is left. Its fields are
// guarded by mu.
type flushQueue[P any, PP pendingBuf[P]] struct {
	mu       sync.Mutex
	cond     *sync.Cond // signalled when flushing turns false or pending shrinks
	pend     PP         // read and waiting for the flusher; nil when idle
	flushing bool       // a flusher goroutine is running
	stopped  bool       // nothing more is taken; the connection is ending
	reason   string     // why it ends (metric label); first writer wins
	pool     *sync.Pool // of PP, so that an idle connection holds no buffer
	wg       *sync.WaitGroup
	flush    func(PP) (reuse bool)
}

// pendingBuf is a connection's pending buffer: pending or mqttPending.
type pendingBuf[P any] interface {
	*P
	reset()
	queued() int // frames or publishes queued
}

// init readies the queue: its buffers come from pool, and its flusher,
// counted by wg, hands what is pending to flush, which appends it to the
// WAL and acknowledges it and reports whether the buffer may be reused.
func (q *flushQueue[P, PP]) init(pool *sync.Pool, wg *sync.WaitGroup, flush func(PP) (reuse bool)) {
	q.cond = sync.NewCond(&q.mu)
	q.pool, q.wg, q.flush = pool, wg, flush
}

// pendingLocked returns the pending buffer, taking one from the pool when
// there is none. q.mu is held.
func (q *flushQueue[P, PP]) pendingLocked() PP {
	if q.pend == nil {
		q.pend = q.pool.Get().(PP)
	}
	return q.pend
}

// flushLocked starts a flusher unless one runs; it flushes what is pending
// until next tells it to end. q.mu is held.
func (q *flushQueue[P, PP]) flushLocked() {
	if q.flushing {
		return
	}
	q.flushing = true
	q.wg.Go(func() {
		var spare PP
		for {
			p, ok := q.next(spare)
			if !ok {
				return
			}
			spare = nil // next made it pending again
			if q.flush(p) {
				p.reset()
				spare = p
			}
		}
	})
}

// next hands the flusher what is pending, putting spare (a buffer it is
// done with, or nil) in its place. It reports false, and the flusher must
// end, when nothing is pending, or when the connection has stopped other
// than in order (see endsInOrder): it broke, and nothing more is
// acknowledged. The buffers then go back to the pool.
func (q *flushQueue[P, PP]) next(spare PP) (PP, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	p := q.pend
	if p == nil || p.queued() == 0 || q.stopped && !endsInOrder(q.reason) {
		if p != nil {
			p.reset()
			q.pool.Put(p)
			q.pend = nil
		}
		q.flushing = false
		q.cond.Broadcast()
		if spare != nil {
			q.pool.Put(spare)
		}
		return nil, false
	}
	q.pend = spare
	q.cond.Broadcast() // room for the reader again
	return p, true
}

// dropPending waits for the flusher to end and drops what is still
// pending: read but never appended, so never acknowledged. It returns why
// the connection ended.
func (q *flushQueue[P, PP]) dropPending() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.flushing {
		q.cond.Wait()
	}
	if q.pend != nil {
		q.pend.reset()
		q.pool.Put(q.pend)
		q.pend = nil
	}
	return q.reason
}

// failedLocked empties what is queued behind an append that failed, which
// must not be appended out of order, and reports whether the connection
// had stopped already. q.mu is held.
func (q *flushQueue[P, PP]) failedLocked() (already bool) {
	if q.pend != nil {
		q.pend.reset()
	}
	return q.stopped
}

// endsInOrder reports whether a connection that stopped for reason still
// appends and acknowledges what it had taken: it was drained, rate limited
// (WebSocket), expired, replaced or revoked, or its MQTT client sent
// DISCONNECT, rather than broken.
func endsInOrder(reason string) bool {
	switch reason {
	case reasonDrain, reasonRateLimited, reasonExpired, reasonReplaced, reasonRevoked, reasonClientDisconnect:
		return true
	}
	return false
}
