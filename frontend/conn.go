package frontend

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// conn is one device connection.
//
// Goroutines: one started by Server.run after the upgrade is the one reader
// (serve); a flusher goroutine exists only while frames wait for the WAL; a
// keepalive timer goroutine exists only while a ping is in flight. Writes come
// from all three and are serialised by wmu, each under a socket deadline.
//
// The reader numbers data frames 1, 2, 3… (seq) and queues every frame, even
// one whose messages were all rejected, in pending; the flusher appends the
// accepted envelopes of everything pending with one AppendBatch and then
// writes one cumulative ack for the last frame it covered. Error frames are
// written by the reader before the frame is queued, so a device always sees a
// frame's errors before the ack that covers it.
type conn struct {
	s  *Server
	ws *websocket.Conn
	nc net.Conn // the socket under ws, for write deadlines
	// bounded: ws writes through hijack.Bounded, which bounds each write
	// by Options.WriteTimeout itself; write sets no deadline.
	bounded bool
	device  string
	exp     time.Time // token expiry; zero: none
	done    chan struct{}
	att     *downlink.Attachment // with Options.Downlink: where commands for the device are written

	lastRead atomic.Int64 // unix nanos of the last frame or pong

	// Reader-only state. bucket is the device's, handed over between its
	// connections through Server.limits.
	seq    uint64
	bucket bucket

	// wmu serialises this server's writes, each under a socket deadline
	// that is cleared afterwards (the library's own writes, pongs and close
	// frames, carry their own timeouts).
	wmu sync.Mutex

	// Frames waiting for the flusher, and the connection's end.
	flushQueue[pending, *pending]

	pingMu      sync.Mutex
	pingTimer   *time.Timer
	pingStopped bool
}

// pending holds the frames a flusher will append together.
type pending struct {
	batch
	frames []pframe // every queued frame, in seq order
	ids    []byte   // comma-separated raw client ids of accepted messages
	out    []byte   // scratch for the ack frame
}

type pframe struct {
	seq   uint64
	recv  int64 // unix nanos
	nenv  int   // envelopes of the frame in buf
	idEnd int   // end offset in ids of the frame's ids
}

func (p *pending) reset() {
	p.batch.reset()
	p.frames, p.ids, p.out = p.frames[:0], p.ids[:0], p.out[:0]
}

func (p *pending) queued() int { return len(p.frames) }

// pframeBytes is what one queued frame holds beside its envelopes.
const pframeBytes = int(unsafe.Sizeof(pframe{}))

// size is what p holds for the frames it queues: their envelopes, ids and
// frame records. A frame without messages (an empty batch) has neither
// envelope nor rate-limit token, so only its record bounds how many of
// them wait while the flusher does.
func (p *pending) size() int { return len(p.buf) + len(p.ids) + len(p.frames)*pframeBytes }

// batch is the envelopes a flusher appends with one AppendBatch, over a
// WebSocket connection or an MQTT session.
type batch struct {
	buf     []byte   // encoded envelopes, back to back
	ends    []int    // end offset in buf of each envelope
	entries [][]byte // scratch for AppendBatch
}

func (b *batch) reset() {
	b.buf, b.ends = b.buf[:0], b.ends[:0]
	clear(b.entries)
	b.entries = b.entries[:0]
}

// add encodes the accepted messages of msgs (those without a Code) as
// envelopes like e, received at now, and returns how many it added. A
// message without a device time takes its receive time from the device's
// bucket (see bucket.stamp), which lead bounds.
func (b *batch) add(e *envelope.Envelope, msgs []protocol.Message, now time.Time, bk *bucket, lead int64) int {
	n := len(b.ends)
	for i := range msgs {
		m := &msgs[i]
		if m.Code != "" {
			continue
		}
		e.HasDeviceTime, e.DeviceTime = m.TS != nil, m.Time
		e.Received = now.UnixNano()
		if !e.HasDeviceTime {
			e.Received = bk.stamp(e.Received, lead)
		}
		e.Payload = m.Raw
		b.buf = envelope.AppendEncode(b.buf, e)
		b.ends = append(b.ends, len(b.buf))
	}
	return len(b.ends) - n
}

// split fills entries with the envelopes in buf, for AppendBatch.
func (b *batch) split() [][]byte {
	start := 0
	for _, end := range b.ends {
		b.entries = append(b.entries, b.buf[start:end])
		start = end
	}
	return b.entries
}

// bucket is a token bucket refilled at Options.Rate up to Options.Burst. It
// also carries the device's last receive stamp (see stamp), so that both
// survive a reconnect to the same frontend.
type bucket struct {
	tokens  float64
	last    int64
	stampMS int64 // the last receive stamp given, in unix ms
}

// stamp returns the receive time of a message without a device timestamp.
// The stores keep one sample per series and millisecond, so a device's
// messages must not share one: a message received in the millisecond of
// the previous one (or behind it) takes the next free millisecond.
//
// The lead over the clock is bounded by lead, in ms, which the server sets
// to Options.Burst: a device within a rate of at most 1,000 messages a
// second can send at most Burst messages more than one per millisecond, so
// its stamps never reach the bound and stay distinct. Past it (a rate over
// 1,000/s), the stamp is the receive time and may repeat.
func (b *bucket) stamp(now, lead int64) int64 {
	ms := now / 1e6
	switch {
	case ms > b.stampMS:
		b.stampMS = ms
		return now
	case b.stampMS+1-ms <= lead:
		b.stampMS++
		return b.stampMS * 1e6
	}
	return now
}

// level returns the tokens the bucket holds at now.
func (b *bucket) level(now int64, rate, burst float64) float64 {
	return min(burst, b.tokens+float64(max(now-b.last, 0))/1e9*rate)
}

// take removes n tokens, or reports how long until n would be available.
func (b *bucket) take(now int64, n int, rate, burst float64) (bool, time.Duration) {
	b.tokens = b.level(now, rate, burst)
	b.last = now
	if b.tokens >= float64(n) {
		b.tokens -= float64(n)
		return true, 0
	}
	return false, time.Duration((float64(n) - b.tokens) / rate * 1e9)
}

func (c *conn) setReason(r string) {
	c.mu.Lock()
	if c.reason == "" {
		c.reason = r
	}
	c.mu.Unlock()
}

// serve is the connection's one reader.
func (c *conn) serve() {
	defer close(c.done)
	c.lastRead.Store(time.Now().UnixNano())
	c.armPing(c.s.opts.PingInterval)

	readErr := c.readLoop()

	c.mu.Lock()
	stopped := c.stopped
	c.stopped = true
	if c.reason == "" {
		switch {
		case errors.Is(readErr, websocket.ErrMessageTooBig):
			c.reason = reasonTooBig
		default:
			c.reason = reasonPeer
		}
	}
	c.mu.Unlock()
	if !stopped {
		c.ws.CloseNow()
	}
	reason := c.dropPending()
	c.stopPing()
	c.s.m.closes.WithLabelValues(reason).Inc()
	c.s.lg.Debug("device disconnected", "device", c.device, "reason", reason)
	// Before done is closed: a newer connection of the device waits for it.
	c.s.limits.put(c.device, c.bucket, time.Now().UnixNano())
}

func (c *conn) readLoop() error {
	s := c.s
	for {
		typ, r, err := c.ws.Reader(context.Background())
		if err != nil {
			return err
		}
		// The frame buffer is taken only once a frame has begun, and goes
		// back to the pool after it, so an idle connection holds none.
		bp := s.readPool.Get().(*[]byte)
		buf, err := readAll(r, (*bp)[:0])
		*bp = buf
		if err == nil && typ == websocket.MessageText && protocol.IsCommandResult(buf) {
			// An answer to a command: not a data frame, so not numbered,
			// whether or not this frontend serves commands (the device
			// numbers its data frames only).
			c.lastRead.Store(time.Now().UnixNano())
			c.commandResult(buf)
		} else if err == nil {
			now := time.Now()
			c.lastRead.Store(now.UnixNano())
			c.seq++
			s.m.bytes.Add(float64(len(buf)))
			c.handleFrame(typ, buf, now)
		}
		if cap(*bp) <= 64<<10 {
			s.readPool.Put(bp)
		}
		if err != nil {
			return err
		}
	}
}

// commandResult carries a device's answer to a command to its home. A
// frame that does not decode, or one sent to a frontend that serves no
// commands (no Options.Downlink), is answered with an invalid_message
// error frame naming frame 0, which no data frame has. One that comes after
// the token's expiry is not taken, as a data frame is not (handleFrame),
// nor an MQTT device's answer: the device is told unauthorized (naming
// frame 0) and the connection ends.
func (c *conn) commandResult(frame []byte) {
	if c.s.expired(c.exp, time.Now()) {
		c.s.m.rejected.WithLabelValues(protocol.CodeUnauthorized).Inc()
		c.writeError(protocol.CodeUnauthorized, 0, -1, nil, 0, "token expired")
		c.finish(protocol.ClosePolicyViolation, reasonExpired)
		return
	}
	r, err := protocol.DecodeCommandResult(frame)
	if err == nil && c.s.opts.Downlink == nil {
		err = errors.New("this frontend serves no commands; the answer is dropped")
	}
	if err != nil {
		c.s.m.rejected.WithLabelValues(protocol.CodeInvalidMessage).Inc()
		c.writeError(protocol.CodeInvalidMessage, 0, -1, nil, 0, err.Error())
		return
	}
	c.s.answerCommand(c.device, r)
}

// answerCommand carries a device's answer to a command to its home, from a
// WebSocket command_result frame or an MQTT publish on the command's
// result topic. r may alias a read buffer, which is reused.
func (s *Server) answerCommand(device string, r protocol.CommandResult) {
	r.ID, r.Payload = strings.Clone(r.ID), bytes.Clone(r.Payload)
	s.opts.Downlink.Result(device, r)
}

func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

func (c *conn) handleFrame(typ websocket.MessageType, frame []byte, now time.Time) {
	s := c.s
	seq := c.seq
	c.mu.Lock()
	stopped := c.stopped
	c.mu.Unlock()
	if stopped {
		return // ending: the device resends whatever was not acknowledged
	}
	if s.expired(c.exp, now) {
		s.m.rejected.WithLabelValues(protocol.CodeUnauthorized).Inc()
		c.writeError(protocol.CodeUnauthorized, seq, -1, nil, 0, "token expired")
		c.finish(protocol.ClosePolicyViolation, reasonExpired)
		return
	}
	if typ != websocket.MessageText {
		s.m.received.Inc()
		s.m.rejected.WithLabelValues(protocol.CodeInvalidJSON).Inc()
		c.writeError(protocol.CodeInvalidJSON, seq, -1, nil, 0, "binary frames are not accepted; send JSON as text frames")
		c.enqueue(seq, now, nil)
		return
	}
	mp := s.msgPool.Get().(*[]protocol.Message)
	defer func() {
		clear(*mp)
		*mp = (*mp)[:0]
		s.msgPool.Put(mp)
	}()
	msgs, ferr := s.opts.limits().ParseFrame(frame, (*mp)[:0])
	*mp = msgs
	if ferr != nil {
		s.m.received.Inc()
		s.m.rejected.WithLabelValues(ferr.Code).Inc()
		c.writeError(ferr.Code, seq, -1, nil, 0, ferr.Reason)
		c.enqueue(seq, now, nil)
		return
	}
	s.m.received.Add(float64(len(msgs)))
	if ok, wait := c.bucket.take(now.UnixNano(), len(msgs), s.opts.Rate, float64(s.opts.Burst)); !ok {
		// Accepting later frames while this one waits would reorder the
		// device's messages, so the connection ends after acking what came
		// before; the device resends from this frame on.
		s.m.rejected.WithLabelValues(protocol.CodeRateLimited).Add(float64(len(msgs)))
		c.writeError(protocol.CodeRateLimited, seq, -1, nil, max(wait.Milliseconds(), 1),
			"over the device rate limit; resend from this frame on after the retry delay")
		c.finish(protocol.CloseTryAgainLater, reasonRateLimited)
		return
	}
	if bad := s.check(c.device, msgs, now); bad >= 0 {
		for i := range msgs[bad:] {
			if m := &msgs[bad+i]; m.Code != "" {
				c.writeError(m.Code, seq, m.Index, m.ID, 0, m.Reason)
			}
		}
	}
	c.enqueue(seq, now, msgs)
}

// check checks each message of a frame or publish of device, counting
// those it refuses, and returns the index of the first it refuses, or -1.
func (s *Server) check(device string, msgs []protocol.Message, now time.Time) int {
	first := -1
	for i := range msgs {
		m := &msgs[i]
		m.Check(device, now, s.opts.MaxFutureSkew)
		if m.Code == "" {
			continue
		}
		s.m.rejected.WithLabelValues(m.Code).Inc()
		if m.Rule != "" {
			s.m.fieldRules.WithLabelValues(m.Rule).Inc()
		}
		if first < 0 {
			first = i
		}
	}
	return first
}

// expired reports whether a token that expires at exp (zero: never) has
// expired at now, past the leeway.
func (s *Server) expired(exp, now time.Time) bool {
	return !exp.IsZero() && now.After(exp.Add(s.opts.Auth.Leeway))
}

// enqueue encodes the accepted messages of frame seq into pending and makes
// sure a flusher runs. It blocks while the connection's pending bytes are over
// the bound, which stops reading from the device (TCP backpressure).
func (c *conn) enqueue(seq uint64, now time.Time, msgs []protocol.Message) {
	s := c.s
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.pend != nil && c.pend.size() >= s.opts.MaxPendingBytes && !c.stopped {
		c.cond.Wait()
	}
	if c.stopped {
		return
	}
	p := c.pendingLocked()
	e := envelope.Envelope{Frontend: s.opts.ID, Device: c.device}
	nenv := p.add(&e, msgs, now, &c.bucket, int64(s.opts.Burst))
	for i := range msgs {
		if m := &msgs[i]; m.Code == "" && m.ID != nil {
			if len(p.ids) > 0 {
				p.ids = append(p.ids, ',')
			}
			p.ids = append(p.ids, m.ID...)
		}
	}
	p.frames = append(p.frames, pframe{seq: seq, recv: now.UnixNano(), nenv: nenv, idEnd: len(p.ids)})
	c.flushLocked()
}

// flush appends the frames of p to the WAL and acknowledges them. It
// reports whether p may be reused.
func (c *conn) flush(p *pending) bool {
	s := c.s
	var err error
	if len(p.ends) > 0 {
		_, err = s.log.AppendBatch(s.hard, p.split())
	}
	switch {
	case err == nil:
		c.ack(p, len(p.frames), p.ids)
		return true
	case errors.Is(err, wal.ErrTooLarge):
		// More than the WAL could hold even when empty (its bound is
		// small, or it bounds entries): append frame by frame.
		return c.appendEach(p)
	}
	return c.appendFailed(p, 0, err)
}

// ack writes one cumulative ack for the first to frames of p, naming ids,
// and counts them.
func (c *conn) ack(p *pending, to int, ids []byte) {
	s := c.s
	p.out = protocol.AppendAck(p.out[:0], p.frames[to-1].seq, ids)
	if c.write(p.out) != nil {
		return
	}
	now := time.Now().UnixNano()
	n := 0
	for _, f := range p.frames[:to] {
		s.m.ackLatency.Observe(float64(now-f.recv) / 1e9)
		n += f.nenv
	}
	s.m.acked.Add(float64(n))
}

// appendEach appends the frames of p one at a time, after a batch of them
// was too large for the WAL. A frame that alone is too large is refused
// with too_large and dropped (the device must split it); the first frame
// that meets any other failure ends the connection as appendFailed does,
// after the frames before it have been acknowledged. It reports whether p
// may be reused.
func (c *conn) appendEach(p *pending) bool {
	s := c.s
	var (
		env    int    // index of the frame's first envelope in p.ends
		ids    []byte // ids of the appended frames
		idFrom int    // offset in p.ids of the frame's first id
	)
	for i, f := range p.frames {
		fids := p.ids[idFrom:f.idEnd]
		idFrom = f.idEnd
		if f.nenv == 0 {
			continue
		}
		_, err := s.log.AppendBatch(s.hard, p.entries[env:env+f.nenv])
		env += f.nenv
		switch {
		case err == nil:
			if len(fids) > 0 && fids[0] == ',' {
				fids = fids[1:]
			}
			if len(ids) > 0 && len(fids) > 0 {
				ids = append(ids, ',')
			}
			ids = append(ids, fids...)
		case errors.Is(err, wal.ErrTooLarge):
			s.m.rejected.WithLabelValues(protocol.CodeTooLarge).Add(float64(f.nenv))
			c.writeError(protocol.CodeTooLarge, f.seq, -1, nil, 0,
				"frame holds more than the server's queue can ever take; split it")
			p.frames[i].nenv = 0 // not acknowledged as stored
		default:
			if i > 0 {
				c.ack(p, i, ids)
			}
			return c.appendFailed(p, i, err)
		}
	}
	c.ack(p, len(p.frames), ids)
	return true
}

// appendFailed answers a failed AppendBatch of frames from..end of p.
// ErrFull becomes overloaded for frame from and a 1013 close; anything else
// ends the connection without an ack. It reports whether p may be reused:
// not after a cancelled append, which the WAL may still be reading.
func (c *conn) appendFailed(p *pending, from int, err error) bool {
	s := c.s
	c.mu.Lock()
	already := c.failedLocked()
	c.stopped = true
	c.mu.Unlock()
	first := p.frames[from].seq
	n := 0
	for _, f := range p.frames[from:] {
		n += f.nenv
	}
	switch {
	case errors.Is(err, wal.ErrFull), errors.Is(err, wal.ErrNoSpace):
		// A full disk is backpressure as the bound is: the WAL keeps what
		// it has and takes appends again once there is room.
		c.setReason(reasonOverloaded)
		s.m.rejected.WithLabelValues(protocol.CodeOverloaded).Add(float64(n))
		msg := "server queue is full; resend from this frame on after the retry delay"
		if errors.Is(err, wal.ErrNoSpace) {
			msg = "server disk is full; resend from this frame on after the retry delay"
		}
		c.writeError(protocol.CodeOverloaded, first, -1, nil, s.opts.OverloadRetryAfter.Milliseconds(), msg)
		if !already {
			c.ws.Close(protocol.CloseTryAgainLater, protocol.ReasonOverloaded)
		}
	case errors.Is(err, context.Canceled):
		// Hard stop after the drain window; the writer may still hold p.
		c.setReason(reasonDrain)
		c.ws.CloseNow()
		return false
	default:
		c.setReason(reasonInternal)
		s.walErrLog.log(s.lg, slog.LevelError, "wal append failed; closing device connections", "device", c.device, "err", err)
		if errors.Is(err, wal.ErrClosed) {
			c.ws.Close(protocol.CloseServiceRestart, protocol.ReasonShutdown)
		} else {
			c.ws.Close(protocol.CloseInternalError, protocol.ReasonInternal)
		}
	}
	return true
}

// finish stops accepting frames, waits until everything already accepted has
// been appended and acknowledged, and closes with code.
func (c *conn) finish(code websocket.StatusCode, reason string) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	if c.reason == "" {
		c.reason = reason
	}
	for c.flushing {
		c.cond.Wait()
	}
	c.mu.Unlock()
	text := reason
	if reason == reasonDrain {
		text = protocol.ReasonShutdown
	}
	c.ws.Close(code, text)
}

func (c *conn) writeError(code string, seq uint64, index int, id []byte, retryMS int64, reason string) {
	c.write(protocol.AppendError(make([]byte, 0, 128), code, seq, index, id, retryMS, reason))
}

// write writes one text frame within Options.WriteTimeout. The bound is a
// socket deadline rather than a context: a context with a timeout costs a
// timer and three allocations per write, which at 10,000 devices was a
// good part of what made the garbage collector run (see docs/benchmarks.md).
// Over TCP the socket's writer sets that deadline only for a write that
// has to wait (c.bounded: each of the frame's writes to the socket, one
// for a frame that fits the 512-byte buffer, is bounded); elsewhere (TLS)
// it is set around the frame here. A hard stop after the drain window
// closes the socket, which ends a write in progress as well.
func (c *conn) write(b []byte) error {
	c.wmu.Lock()
	if !c.bounded {
		c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.WriteTimeout))
	}
	err := c.ws.Write(context.Background(), websocket.MessageText, b)
	if !c.bounded {
		c.nc.SetWriteDeadline(time.Time{})
	}
	c.wmu.Unlock()
	if err != nil {
		c.mu.Lock()
		if c.reason == "" {
			c.reason = reasonWriteFailed
		}
		c.stopped = true
		c.mu.Unlock()
		c.ws.CloseNow()
	}
	return err
}

// armPing schedules the keepalive check after d.
func (c *conn) armPing(d time.Duration) {
	c.pingMu.Lock()
	defer c.pingMu.Unlock()
	if c.pingStopped {
		return
	}
	if c.pingTimer == nil {
		c.pingTimer = time.AfterFunc(d, c.keepalive)
	} else {
		c.pingTimer.Reset(d)
	}
}

// keepalive pings a connection that has been silent for PingInterval and
// closes it if no pong comes within PongTimeout.
func (c *conn) keepalive() {
	c.pingMu.Lock()
	defer c.pingMu.Unlock()
	if c.pingStopped {
		return
	}
	o := c.s.opts
	idle := time.Duration(time.Now().UnixNano() - c.lastRead.Load())
	if idle < o.PingInterval {
		c.pingTimer.Reset(o.PingInterval - idle)
		return
	}
	ctx, cancel := context.WithTimeout(c.s.hard, o.PongTimeout)
	err := c.ws.Ping(ctx)
	cancel()
	if err != nil {
		c.setReason(reasonPingTimeout)
		c.ws.CloseNow()
		return
	}
	c.pingTimer.Reset(o.PingInterval)
}

func (c *conn) stopPing() {
	c.pingMu.Lock()
	c.pingStopped = true
	if c.pingTimer != nil {
		c.pingTimer.Stop()
	}
	c.pingMu.Unlock()
}
