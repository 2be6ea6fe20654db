package feed

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/internal/hijack"
)

// Close codes of the live feed beside the standard ones.
const (
	// StatusTooSlow closes a reader that stayed too slow (Options.SlowGrace,
	// Options.MaxMissed); a missed notice precedes it.
	StatusTooSlow websocket.StatusCode = 4000
)

// handleFeed authenticates a reader, upgrades and serves the connection.
func (s *Server) handleFeed(w http.ResponseWriter, r *http.Request) {
	var exp time.Time
	reader := "anonymous"
	if s.auth != nil {
		tok, ok := auth.BearerToken(r)
		if !ok {
			s.refuse(w, http.StatusUnauthorized, "unauthorized", "missing bearer token")
			return
		}
		var claims auth.ScopedClaims
		if err := s.auth.Verify(tok, &claims); err != nil {
			s.lg.Debug("feed: token refused", "remote", r.RemoteAddr, "err", err)
			code := "unauthorized"
			if errors.Is(err, auth.ErrTokenTooLarge) {
				code = "token_too_large"
			}
			s.refuse(w, http.StatusUnauthorized, code, err.Error())
			return
		}
		if !claims.Scope.Has(s.opts.Scope) {
			s.refuse(w, http.StatusForbidden, "forbidden", "token lacks scope "+s.opts.Scope)
			return
		}
		if claims.ExpiresAt != nil {
			exp = claims.ExpiresAt.Time
		}
		reader = claims.Subject
	}
	if s.nreaders.Add(1) > int64(s.opts.MaxReaders) {
		s.nreaders.Add(-1)
		w.Header().Set("Retry-After", "5")
		s.refuse(w, http.StatusServiceUnavailable, "too_many_readers", "too many readers")
		return
	}
	defer s.nreaders.Add(-1)
	s.connMu.Lock()
	if s.closing {
		s.connMu.Unlock()
		s.refuse(w, http.StatusServiceUnavailable, "shutting_down", "server shutting down")
		return
	}
	s.connWG.Add(1)
	s.connMu.Unlock()
	defer s.connWG.Done()

	hj := &hijacker{ResponseWriter: w, linger: s.opts.WriteTimeout}
	ws, err := websocket.Accept(hj, r, &websocket.AcceptOptions{
		CompressionMode: websocket.CompressionDisabled,
		OriginPatterns:  s.opts.OriginPatterns,
		OnPingReceived:  hj.answerPing,
	})
	if err != nil {
		s.m.handshakes.WithLabelValues("upgrade_failed").Inc()
		return
	}
	// The socket's flusher ends by Close (the connection's), within the
	// linger it was given; the handler waits for it.
	defer hj.sc.wait()
	s.m.handshakes.WithLabelValues("ok").Inc()
	s.m.readers.Inc()
	defer s.m.readers.Dec()
	reason := s.serveConn(r.Context(), ws, hj.sc, exp)
	s.m.disconnects.WithLabelValues(reason).Inc()
	s.lg.Debug("feed: reader disconnected", "reader", reader, "remote", r.RemoteAddr, "reason", reason)
}

func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.m.handshakes.WithLabelValues(code).Inc()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ingest"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(errorFrame(code, msg), '\n'))
}

// serveConn runs one reader connection: a reader goroutine (coder/websocket
// needs one always reading: it answers pings and sees the close), a pinger,
// and this goroutine as the only writer of data frames. It returns why the
// connection ended.
//
// Frames go out through sc, whose writes never block: a reader slower than
// its messages is found out by its queue, not by a write that hangs, and
// its last missed notice and its 4000 close can always be written. While
// sc's backlog is over its bound (the reader is not taking what it was
// sent), messages stay in the queue, which drops and counts what does not
// fit; a reader that stays so for SlowGrace is judged too slow, its notice
// and close wait behind what it has not read yet, for as long as a reader
// that reads nothing at all could live by the keepalive (PingInterval plus
// PongTimeout), and then the socket is closed.
//
// ctx ends at shutdown (Run's connection context): the reader is then
// closed with 1001.
func (s *Server) serveConn(ctx context.Context, ws *websocket.Conn, sc *sendConn, exp time.Time) (reason string) {
	// The reader and the pinger do not use the shutdown context: a read or
	// ping whose context ends closes the connection at once, and shutdown
	// closes it with 1001 instead.
	rctx, rcancel := context.WithCancel(context.Background())
	ws.SetReadLimit(int64(s.opts.MaxFrameBytes))
	c := newClient(&s.opts, s.m)
	defer func() {
		s.hub.unregister(c) // no frame is queued for c after this
		c.abandon()         // releases the frames still queued
	}()

	// Subscribes wait here while the writer answers one (a resume's replay
	// can take a while): a reader that keeps its reader goroutine blocked
	// here would have its pongs unread, and be cut at the next ping.
	subs := make(chan []byte, maxWaitingSubscribes)
	var tooMany atomic.Bool
	readerGone := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer rcancel()
	wg.Go(func() {
		defer close(readerGone)
		for {
			typ, b, err := ws.Read(rctx)
			if err != nil {
				return
			}
			if typ != websocket.MessageText {
				b = nil // answered as invalid
			}
			select {
			case subs <- b:
			case <-rctx.Done():
				return
			default:
				// More waiting than a dashboard has reason to send.
				tooMany.Store(true)
				ws.Close(websocket.StatusPolicyViolation, "too many subscribes waiting")
				return
			}
		}
	})
	wg.Go(func() {
		t := time.NewTicker(s.opts.PingInterval)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-readerGone:
				return
			case <-t.C:
			}
			pctx, pcancel := context.WithTimeout(rctx, s.opts.PongTimeout)
			err := ws.Ping(pctx)
			pcancel()
			if err != nil {
				ws.CloseNow() // the reader sees it and ends
				return
			}
		}
	})

	// writeNow writes b at once: into sc's buffer, whatever its backlog.
	// sc never blocks a write (its flusher does the waiting), so the write
	// needs no deadline, and a context without one spares the websocket
	// library a timer and an AfterFunc for every message; a reader that
	// takes nothing is timed out by write, through congested.
	writeNow := func(b []byte) error {
		return ws.Write(context.Background(), websocket.MessageText, b)
	}
	// write writes b once sc's backlog is under its bound: a write that
	// waits longer than WriteTimeout fails (the connection then ends).
	write := func(b []byte) error {
		if room := sc.congested(); room != nil {
			t := time.NewTimer(s.opts.WriteTimeout)
			defer t.Stop()
			select {
			case <-room:
			case <-t.C:
				return errWriteTimeout
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return writeNow(b)
	}
	var expired <-chan time.Time
	if !exp.IsZero() {
		// Past the leeway, as the verifier has it: a token it accepts is
		// served until then.
		t := time.NewTimer(time.Until(exp.Add(s.opts.Auth.Leeway)))
		defer t.Stop()
		expired = t.C
	}
	subTimer := time.NewTimer(s.opts.SubscribeTimeout)
	defer subTimer.Stop()
	subscribed := false

	for {
		// Messages are taken from the queue only while the socket takes
		// what it is given (see above).
		queue, room := c.queue, sc.congested()
		if room != nil {
			queue = nil
		}
		select {
		case <-room:
		case <-ctx.Done():
			ws.Close(websocket.StatusGoingAway, "server shutting down")
			return "shutdown"
		case <-readerGone:
			ws.CloseNow()
			if tooMany.Load() {
				return "too_many_subscribes"
			}
			return "closed"
		case <-expired:
			ws.Close(websocket.StatusPolicyViolation, "unauthorized")
			return "unauthorized"
		case <-subTimer.C:
			if !subscribed {
				ws.Close(websocket.StatusPolicyViolation, "subscribe expected")
				return "subscribe_timeout"
			}
		case <-c.slow:
			s.hub.unregister(c)
			n := c.abandon()
			// Behind whatever the reader has not read yet: it gets them
			// when it reads again, within the linger.
			sc.setLinger(s.opts.PingInterval+s.opts.PongTimeout, ctx.Done())
			if writeNow(missedFrame(n, "slow", "", 0, 0)) != nil {
				ws.CloseNow()
				return "slow"
			}
			ws.Close(StatusTooSlow, "too slow")
			return "slow"
		case b := <-subs:
			sub, err := DecodeSubscribe(b, s.opts.MaxFilters)
			if err != nil {
				if write(errorFrame("invalid_subscribe", err.Error())) != nil {
					ws.CloseNow()
					return "write_error"
				}
				continue
			}
			if len(sub.From) > 0 && subscribed {
				if write(errorFrame("invalid_subscribe", "from is allowed in the first subscribe only")) != nil {
					ws.CloseNow()
					return "write_error"
				}
				continue
			}
			subscribed = true
			live := s.hub.register(c, newFilter(sub))
			if write(subscribedFrame(live)) != nil {
				ws.CloseNow()
				return "write_error"
			}
			if len(sub.From) > 0 {
				if err := s.replay(ctx, sub, live, write); err != nil {
					ws.CloseNow()
					return "write_error"
				}
			}
		case it := <-queue:
			// The socket was taking frames when the item was taken: it
			// goes out whole, notice and all, at once (a wait here would
			// keep the slow verdict waiting).
			//
			// A message queued under a filter the reader has replaced
			// since goes out only if the new one takes it too.
			stale := c.stale(it)
			var err error
			if it.missed > 0 {
				err = writeNow(missedFrame(it.missed, "slow", "", 0, 0))
			}
			if err == nil && !stale {
				err = writeNow(it.frame.b) // copies it: the frame can go
			}
			it.frame.release()
			if err != nil {
				ws.CloseNow()
				return "write_error"
			}
			if !it.notice && !stale {
				s.m.delivered.Inc()
			}
			if len(c.queue) > 0 {
				c.stillBehind()
			} else {
				if n := c.caughtUp(); n > 0 {
					if writeNow(missedFrame(n, "slow", "", 0, 0)) != nil {
						ws.CloseNow()
						return "write_error"
					}
				}
			}
		}
	}
}

// replay writes, before any live message, the records each middletier in
// sub.From holds from the asked sequence up to where the reader's live
// messages start, filtered like them. A frontend's entry that two
// middletiers hold (it failed over between them) is written once.
func (s *Server) replay(ctx context.Context, sub *Subscription, live map[string]uint64, write func([]byte) error) error {
	f := newFilter(sub)
	var frame []byte // reused: a write copies what it writes
	written := seenByOrigin{}
	for mt, from := range sub.From {
		src := s.hub.source(mt)
		to, known := live[mt]
		if src == nil || !known || src.cfg.Consumer == "" {
			if err := write(errorFrame("resume_unavailable", "no resume from middletier "+strconv.Quote(mt)+": not followed, no records seen yet, or no consumer endpoint")); err != nil {
				return err
			}
			continue
		}
		if from >= to {
			continue
		}
		if to-from > uint64(s.opts.MaxResume) {
			cut := to - uint64(s.opts.MaxResume)
			if err := write(missedFrame(cut-from, "resume_limit", mt, from, cut-1)); err != nil {
				return err
			}
			from = cut
		}
		for from < to {
			r, err := src.f.Fetch(ctx, from, min(to-from, maxFetch))
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				// Not fetched: the middletier may hold them still (a
				// resume later may get them), so not "released".
				if err := write(missedFrame(to-from, "gap", mt, from, to-1)); err != nil {
					return err
				}
				break
			}
			if r.First > from {
				n := min(r.First, to)
				if err := write(missedFrame(n-from, "released", mt, from, n-1)); err != nil {
					return err
				}
				from = n
			}
			if from >= to {
				break
			}
			if len(r.Records) == 0 {
				if err := write(missedFrame(to-from, "released", mt, from, to-1)); err != nil {
					return err
				}
				break
			}
			recs := r.Records[:min(uint64(len(r.Records)), to-from)]
			s.m.replayed.Add(float64(len(recs)))
			origin := ""
			for i, rb := range recs {
				ev, ok := s.decode(mt, from+uint64(i), rb, origin, false)
				if ok {
					origin = ev.origin
				}
				if !ok || !f.takes(&ev) {
					continue
				}
				if !written.add(ev.origin, ev.index) {
					s.m.repeats.Inc()
					continue
				}
				frame = ev.appendFrame(frame[:0])
				if err := write(frame); err != nil {
					return err
				}
				s.m.delivered.Inc()
			}
			from += uint64(len(recs))
		}
	}
	return nil
}

// maxWaitingSubscribes bounds the subscribes a reader has sent and the
// feed not yet answered: past it the connection is closed with 1008.
const maxWaitingSubscribes = 16

// errWriteTimeout ends a connection whose socket took nothing for
// Options.WriteTimeout while a frame waited to be written.
var errWriteTimeout = errors.New("write timed out: the reader takes nothing")

// A reader's socket backlog (bytes written to its sendConn and not yet
// taken by the kernel) past sendHigh congests it; it is free again at
// sendLow. The kernel keeps at most sendUnsent bytes queued and not yet
// sent (limitUnsent).
const (
	sendHigh   = 32 << 10
	sendLow    = 8 << 10
	sendUnsent = 64 << 10
	// heldPongs bounds the pongs (2 bytes of header and the ping's
	// payload each) written for a reader while it is congested.
	heldPongs = 4 << 10
)

// hijacker wraps the ResponseWriter given to websocket.Accept: the upgraded
// connection writes through a sendConn.
type hijacker struct {
	http.ResponseWriter
	linger time.Duration
	sc     *sendConn
}

// answerPing lets the websocket library answer a reader's ping (it writes
// the pong itself, from the reader goroutine): the pong goes into the send
// buffer, whose writes never block. While the reader is not taking what it
// is sent, its pongs go there up to heldPongs bytes, so that a reader that
// pings now and then gets every pong once it reads again, however long it
// stopped; past them, a reader that pings and reads nothing would have the
// feed hold every pong it asked for, and its next ping is answered once it
// takes again. Waiting here, the reader goroutine reads nothing more from
// the reader meanwhile: its pings wait in its own socket. ctx is the one
// the library gives a control frame (5 s, and the reader goroutine's): a
// ping still waiting when it ends is not answered, one after it is.
func (h *hijacker) answerPing(ctx context.Context, p []byte) bool {
	if room := h.sc.pongRoom(2 + len(p)); room != nil {
		select {
		case <-room:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := hijack.Conn(h.ResponseWriter)
	if err != nil {
		return nil, nil, err
	}
	limitUnsent(nc, sendUnsent)
	h.sc = newSendConn(nc, h.linger)
	br, err := hijack.Reader(brw, h.sc, 4096)
	if err != nil {
		h.sc.Close()
		h.sc.wait()
		return nil, nil, err
	}
	return h.sc, bufio.NewReadWriter(br, bufio.NewWriterSize(h.sc, 4096)), nil
}

// sendConn is a reader's socket with a send buffer of its own, so that a
// write never blocks: a goroutine (the flusher) writes what is buffered to
// the socket, however long the reader takes to read it. What a write hands
// over is delivered in order, or the connection fails. The backlog it
// holds is bounded by its user (congested), not here.
//
// Close stops the writes and lets the flusher write what is left for up to
// the linger (setLinger; the one given to newSendConn otherwise), then
// closes the socket; wait waits for that.
type sendConn struct {
	net.Conn

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte // waiting for the flusher
	spare    []byte
	inflight int   // bytes the flusher is writing
	err      error // the socket failed
	closed   bool
	linger   time.Duration
	abort    <-chan struct{} // ends the linger early; nil: never
	room     chan struct{}   // while congested: closed when the backlog is down to sendLow
	pongs    int             // bytes of pongs written while congested (answerPing)

	flushed chan struct{} // closed when the flusher has closed the socket
	wg      sync.WaitGroup
}

func newSendConn(nc net.Conn, linger time.Duration) *sendConn {
	c := &sendConn{Conn: nc, linger: linger, flushed: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	c.wg.Add(1)
	go c.flush()
	return c
}

// Write buffers p for the flusher and returns at once.
func (c *sendConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return 0, c.err
	case c.closed:
		return 0, net.ErrClosed
	}
	c.buf = append(c.buf, p...)
	if c.room == nil && len(c.buf)+c.inflight > sendHigh {
		c.room = make(chan struct{})
	}
	c.cond.Signal()
	return len(p), nil
}

// congested returns nil while the backlog is under its bound, else a
// channel closed once the flusher has brought it down to sendLow or the
// socket has failed.
func (c *sendConn) congested() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.room == nil {
		return nil
	}
	return c.room
}

// pongRoom returns nil when a pong of n bytes may be written now: the
// backlog is under its bound, or the pongs written since it went over it
// and this one are within heldPongs. Else it returns congested's channel.
func (c *sendConn) pongRoom(n int) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.room == nil {
		return nil
	}
	if c.pongs+n <= heldPongs {
		c.pongs += n
		return nil
	}
	return c.room
}

// setLinger sets how long the flusher may still write after Close, and a
// channel that ends that early (nil: none).
func (c *sendConn) setLinger(d time.Duration, abort <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.linger, c.abort = d, abort
}

// flush writes the buffer to the socket until Close, then what is left
// within the linger, and closes the socket.
func (c *sendConn) flush() {
	defer c.wg.Done()
	defer close(c.flushed)
	defer c.Conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for len(c.buf) == 0 && !c.closed && c.err == nil {
			c.cond.Wait()
		}
		if c.err != nil || len(c.buf) == 0 {
			c.freeRoom()
			return
		}
		out := c.buf
		c.buf, c.spare = c.spare[:0], nil
		c.inflight = len(out)
		c.mu.Unlock()
		_, err := c.Conn.Write(out)
		c.mu.Lock()
		c.inflight = 0
		c.spare = out[:0]
		if err != nil {
			c.err = err
		}
		if c.room != nil && (c.err != nil || len(c.buf) <= sendLow) {
			c.freeRoom()
		}
	}
}

func (c *sendConn) freeRoom() {
	if c.room != nil {
		close(c.room)
		c.room = nil
		c.pongs = 0
	}
}

// Close ends the writes: the flusher writes what is buffered within the
// linger, then closes the socket. A read waiting on the socket returns.
func (c *sendConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	linger, abort := c.linger, c.abort
	c.cond.Signal()
	c.mu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(linger))
	c.Conn.SetReadDeadline(time.Now())
	if abort != nil {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			select {
			case <-abort:
				c.Conn.SetWriteDeadline(time.Now())
			case <-c.flushed:
			}
		}()
	}
	return nil
}

// wait waits until the flusher has closed the socket.
func (c *sendConn) wait() { c.wg.Wait() }
