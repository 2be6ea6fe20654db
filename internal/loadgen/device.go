package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/ingest-io/ingest/protocol"
)

// device is one device: its connection, when it has one, and the messages
// it has sent and not yet settled.
type device struct {
	f     *Fleet
	i     int
	id    string
	tg    target
	local net.Addr

	mu       sync.Mutex // guards the fields below and every write to nc
	nc       net.Conn   // nil while disconnected
	base     uint64     // the message before frame 1 of this connection
	frames   uint64     // frames written on this connection
	ackedTo  uint64     // the highest frame acknowledged on this connection
	ring     []Msg      // unsettled messages: message seq at ring[(seq-1) % window]
	settled  uint64     // every message up to here is settled
	next     uint64     // the last message made
	owed     int        // paced: messages due and not yet made
	owedFrom uint64     // paced: the round of the oldest message owed
	lastTS   int64
	out      []byte // frames being written
	msg      []byte // a message being made
	notAcked []uint64
	stopped  bool          // the device takes no further part
	retry    time.Duration // the server's latest retry hint
	dialTime time.Duration // first dial
	dialErr  error         // first dial

	// sockMu guards sock, the connection Close ends without waiting for mu
	// (which a blocked write may hold).
	sockMu sync.Mutex
	sock   net.Conn

	// Owned by the device's goroutine.
	rbuf    []byte
	frag    []byte // a fragmented message being put together
	fragOp  byte   // its opcode; 0 when there is none
	settle  []Msg
	attempt int    // failed reconnects in a row
	pubacks uint64 // MQTT: PUBACKs read on this connection (reset by attach)
	quota   uint64 // MQTT: the first publish of the PUBACKs in a row that said quota exceeded; 0: none (reset by attach)
	topic   string // MQTT: devices/{id}
}

func (d *device) dial(ctx context.Context) (net.Conn, []byte, error) {
	tok := ""
	if d.f.opts.Token != nil {
		var err error
		if tok, err = d.f.opts.Token(d.i); err != nil {
			return nil, nil, fmt.Errorf("get token: %w", err)
		}
	}
	if d.tg.mqtt != 0 {
		return dialMQTT(ctx, d.tg, d.local, d.id, tok, d.f.opts.DialTimeout)
	}
	return dial(ctx, d.tg, d.local, tok, d.f.opts.DialTimeout)
}

// appendMsg appends the frame (or MQTT PUBLISH) that carries message seq,
// held in d.msg, to d.out. With mu held.
func (d *device) appendMsg(seq uint64) {
	if d.tg.mqtt != 0 {
		d.out = appendPublish(d.out, d.tg.mqtt, d.topic, packetID(seq-d.base), d.msg)
		return
	}
	d.out = appendFrame(d.out, opText, d.msg)
}

// attach makes nc the device's connection: what was unacknowledged goes
// out again first, then what the window has room for. It reports false
// (and leaves nc alone) when the fleet is closing.
func (d *device) attach(nc net.Conn) bool {
	d.sockMu.Lock()
	if d.f.closing.Load() {
		d.sockMu.Unlock()
		return false
	}
	d.sock = nc
	d.sockMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ring == nil {
		d.ring = make([]Msg, d.f.window)
	}
	d.nc, d.base, d.frames, d.ackedTo, d.pubacks, d.quota = nc, d.settled, 0, 0, 0, 0
	if n := d.next - d.settled; n > 0 {
		d.out = d.out[:0]
		for seq := d.settled + 1; seq <= d.next; seq++ {
			m := &d.ring[(seq-1)%uint64(len(d.ring))]
			m.Code = "" // a rejection is the server's to repeat
			d.msg = d.f.opts.Message(d.msg[:0], d.i, seq, m.TS)
			d.appendMsg(seq)
		}
		d.frames = n
		d.f.resent.Add(int64(n))
		if err := d.write(); err != nil {
			d.closeSock()
			return true
		}
	}
	if err := d.refill(); err != nil {
		d.closeSock()
	}
	return true
}

// detach forgets the connection nc and closes it.
func (d *device) detach(nc net.Conn) {
	d.mu.Lock()
	if d.nc == nc {
		d.nc = nil
	}
	d.mu.Unlock()
	d.sockMu.Lock()
	if d.sock == nc {
		d.sock = nil
	}
	d.sockMu.Unlock()
	nc.Close()
}

// closeSock closes the current connection, so that its reader ends and the
// device reconnects; for a failed write, with mu held.
func (d *device) closeSock() {
	if d.nc != nil {
		d.nc.Close()
	}
}

// breakConn is closeSock without mu held.
func (d *device) breakConn() {
	d.mu.Lock()
	d.closeSock()
	d.mu.Unlock()
}

func (d *device) write() error {
	d.f.writes.Add(1)
	_, err := d.nc.Write(d.out)
	d.out = d.out[:0]
	return err
}

// refill makes and writes new messages as far as the window has room: in
// closed loop while sending lasts, paced the messages owed. With mu held.
func (d *device) refill() error {
	if d.nc == nil || d.stopped {
		return nil
	}
	room := d.f.window - int(d.next-d.settled)
	if d.f.paced {
		room = min(room, d.owed)
	}
	if room <= 0 {
		return nil
	}
	return d.send(room)
}

// send makes up to n new messages and writes them, with mu held.
func (d *device) send(n int) error {
	f := d.f
	made := 0
	d.out = d.out[:0]
	first := d.next + 1
	for made < n {
		now := f.Now()
		var due int64
		if f.paced {
			due = f.dueAt(d.i, d.owedFrom)
			d.owedFrom++
			d.owed--
		} else {
			if !f.take(now) {
				break
			}
			due = now
			f.pending.Add(1)
		}
		d.next++
		made++
		ts := max(f.epoch.UnixMilli()+due/int64(time.Millisecond), d.lastTS+1)
		d.lastTS = ts
		d.ring[(d.next-1)%uint64(len(d.ring))] = Msg{Seq: d.next, TS: ts, Due: due}
		d.msg = f.opts.Message(d.msg[:0], d.i, d.next, ts)
		d.appendMsg(d.next)
		if !f.opts.Coalesce || made == n {
			if err := d.flush(first); err != nil {
				return err
			}
			first = d.next + 1
		}
	}
	if len(d.out) > 0 { // the closed loop's sending ended within a group
		return d.flush(first)
	}
	return nil
}

// flush stamps messages first..next as sent and writes them.
func (d *device) flush(first uint64) error {
	f := d.f
	sent := f.Now()
	for seq := first; seq <= d.next; seq++ {
		m := &d.ring[(seq-1)%uint64(len(d.ring))]
		m.Sent = sent
		if f.opts.OnSend != nil {
			f.opts.OnSend(d.i, seq, sent)
		}
	}
	d.frames += d.next - first + 1
	f.sent.Add(int64(d.next - first + 1))
	return d.write()
}

// due makes paced message round of the device due, and sends it if it can.
func (d *device) due(round uint64) {
	f := d.f
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	if d.owed == 0 {
		d.owedFrom = round
	}
	if d.owed >= max(f.opts.Backlog, 1) {
		// The backlog is full: the oldest message owed is skipped.
		d.owedFrom++
		f.skipped.Add(1)
	} else {
		d.owed++
		f.pending.Add(1)
	}
	err := d.refill()
	if f.opts.Backlog == 0 && d.owed > 0 {
		// It could not go at once: skipped.
		d.owed = 0
		f.skipped.Add(1)
		f.pending.Add(-1)
	}
	if err != nil {
		d.closeSock()
	}
}

// giveUp stops the device and settles every unacknowledged message as
// CodeClosed; messages owed are dropped. From the device's goroutine, or
// Close's once the goroutines have ended.
func (d *device) giveUp() {
	d.mu.Lock()
	d.stopped = true
	ms := d.settle[:0]
	for seq := d.settled + 1; seq <= d.next; seq++ {
		m := d.ring[(seq-1)%uint64(len(d.ring))]
		m.Code = CodeClosed
		ms = append(ms, m)
		d.notAcked = append(d.notAcked, seq)
	}
	d.settled = d.next
	d.f.pending.Add(-int64(len(ms) + d.owed))
	d.owed = 0
	d.mu.Unlock()
	d.settle = ms
	if len(ms) == 0 {
		return
	}
	d.f.rejected.Add(int64(len(ms)))
	d.f.count(CodeClosed, int64(len(ms)))
	if d.f.opts.OnSettle != nil {
		d.f.opts.OnSettle(d.i, ms, d.f.Now())
	}
}

// ack settles every message up to frame s of the current connection and
// refills the window.
func (d *device) ack(s uint64, now int64) error {
	f := d.f
	d.mu.Lock()
	if s > d.frames {
		d.mu.Unlock()
		return fmt.Errorf("%w: ack for frame %d of %d sent", errProtocol, s, d.frames)
	}
	if s <= d.ackedTo {
		d.mu.Unlock()
		return nil
	}
	d.ackedTo = s
	ms := d.settle[:0]
	var rejected int64
	for seq := d.settled + 1; seq <= d.base+s; seq++ {
		m := d.ring[(seq-1)%uint64(len(d.ring))]
		if m.Code != "" {
			rejected++
			d.notAcked = append(d.notAcked, seq)
		}
		ms = append(ms, m)
	}
	d.settled = d.base + s
	err := d.refill()
	d.mu.Unlock()
	d.settle = ms
	f.pending.Add(-int64(len(ms)))
	f.acked.Add(int64(len(ms)) - rejected)
	f.rejected.Add(rejected)
	for {
		last := f.lastAck.Load()
		if now <= last || f.lastAck.CompareAndSwap(last, now) {
			break
		}
	}
	if f.opts.OnSettle != nil {
		f.opts.OnSettle(d.i, ms, now)
	}
	return err
}

// reject handles an error frame.
func (d *device) reject(r protocol.ServerFrame) error {
	f := d.f
	f.count(r.Code, 1)
	d.mu.Lock()
	defer d.mu.Unlock()
	if protocol.EndsConnection(r.Code) {
		// The frame and every later one were not accepted; the server
		// closes the connection and they go out again on the next.
		d.retry = max(d.retry, r.RetryAfter)
		return nil
	}
	if r.Seq <= d.ackedTo || r.Seq > d.frames {
		return fmt.Errorf("%w: error for frame %d, acknowledged up to %d of %d", errProtocol, r.Seq, d.ackedTo, d.frames)
	}
	m := &d.ring[(d.base+r.Seq-1)%uint64(len(d.ring))]
	if m.Code == "" {
		m.Code = r.Code
	}
	return nil
}

// control writes a control frame.
func (d *device) control(nc net.Conn, op byte, p []byte) {
	d.mu.Lock()
	if d.nc == nc {
		nc.Write(appendFrame(nil, op, p))
	}
	d.mu.Unlock()
}

// closeError is a close frame from the server.
type closeError struct {
	code   int
	reason string
	mqtt   bool // an MQTT DISCONNECT; code is its reason code
}

func (e *closeError) Error() string {
	if e.mqtt {
		return fmt.Sprintf("disconnected by the server: %#x", e.code)
	}
	return fmt.Sprintf("closed by the server: %d %s", e.code, e.reason)
}

const readSize = 2048

// read handles the server's frames on nc until the connection ends; rest
// is what the handshake read past its response.
func (d *device) read(nc net.Conn, rest []byte) error {
	if cap(d.rbuf) < readSize {
		d.rbuf = make([]byte, readSize)
	}
	buf := d.rbuf[:cap(d.rbuf)]
	if len(rest) > len(buf) {
		buf = make([]byte, len(rest))
	}
	r, w := 0, copy(buf, rest)
	now := d.f.Now()
	var rerr error
	for {
		var (
			n     int
			ackTo uint64
			err   error
		)
		if d.tg.mqtt != 0 {
			n, ackTo, err = d.handleMQTT(buf[r:w])
		} else {
			n, ackTo, err = d.handle(nc, buf[r:w])
		}
		r += n
		// One ack covers every frame before it: only the latest of a read
		// counts. It is settled even when the connection ends after it.
		if ackTo > 0 {
			if aerr := d.ack(ackTo, now); aerr != nil && err == nil {
				err = aerr
			}
		}
		if err != nil {
			return err
		}
		if rerr != nil {
			return rerr
		}
		switch {
		case r == w:
			r, w = 0, 0
		case w == len(buf) && r > 0:
			w = copy(buf, buf[r:w])
			r = 0
		case w == len(buf):
			nb := make([]byte, 2*len(buf))
			w = copy(nb, buf[r:w])
			r, buf = 0, nb
		}
		n, err = nc.Read(buf[w:])
		now = d.f.Now()
		d.f.reads.Add(1)
		w += n
		if err != nil {
			if n == 0 {
				return err
			}
			rerr = err
		}
	}
}

// handle handles the whole frames at the start of b: it answers pings,
// records errors, and returns the bytes it took and the highest frame an
// ack in them covers. A close frame ends the connection: its error is a
// *closeError.
func (d *device) handle(nc net.Conn, b []byte) (int, uint64, error) {
	var r int
	var ackTo uint64
	for {
		fr, n, err := decodeFrame(b[r:], maxServerFrame)
		if err != nil || n == 0 {
			return r, ackTo, err
		}
		r += n
		p := fr.payload
		switch fr.op {
		case opPing:
			d.control(nc, opPong, p)
			continue
		case opPong:
			continue
		case opClose:
			code, reason, err := parseClose(p)
			if err != nil {
				return r, ackTo, err
			}
			echo := code
			if code == closeNoStatus {
				echo = closeNormal
			}
			d.control(nc, opClose, closePayload(echo))
			return r, ackTo, &closeError{code: code, reason: reason}
		case opContinuation:
			if d.fragOp == 0 {
				return r, ackTo, fmt.Errorf("%w: continuation of nothing", errProtocol)
			}
			d.frag = append(d.frag, p...)
			if len(d.frag) > maxServerFrame {
				return r, ackTo, fmt.Errorf("%w: message over %d bytes", errProtocol, maxServerFrame)
			}
			if !fr.fin {
				continue
			}
			p, d.fragOp = d.frag, 0
		default: // text, binary
			if d.fragOp != 0 {
				return r, ackTo, fmt.Errorf("%w: new message within a fragmented one", errProtocol)
			}
			if fr.op == opBinary {
				return r, ackTo, fmt.Errorf("%w: binary frame", errProtocol)
			}
			if !fr.fin {
				d.fragOp = fr.op
				d.frag = append(d.frag[:0], p...)
				continue
			}
		}
		rp, err := parseReply(p)
		if err != nil {
			return r, ackTo, err
		}
		switch rp.Type {
		case protocol.TypeAck:
			ackTo = max(ackTo, rp.Seq)
		case protocol.TypeError:
			// Errors for a frame come before the ack that covers it.
			if err := d.reject(rp); err != nil {
				return r, ackTo, err
			}
		}
	}
}

// run is the device's goroutine: it reads the server's frames and, when
// the connection ends, reconnects (Options.Reconnect) or stops.
func (d *device) run(nc net.Conn, rest []byte) {
	f := d.f
	defer f.readers.Done()
	for {
		err := d.read(nc, rest)
		d.mu.Lock()
		acked := d.ackedTo > 0
		d.mu.Unlock()
		d.detach(nc)
		if f.closing.Load() {
			return
		}
		fatal := false
		var ce *closeError
		switch {
		case errors.As(err, &ce) && ce.mqtt:
			f.count("disconnect_"+mqttCode(byte(ce.code)), 1)
			fatal = byte(ce.code) == mqttSessionTakenOff
		case errors.As(err, &ce):
			f.count("close_"+strconv.Itoa(ce.code), 1)
			// A newer connection of the same device took over: this one
			// is stale (docs/protocol.md).
			fatal = ce.code == protocol.ClosePolicyViolation && ce.reason == protocol.ReasonReplaced
		case errors.Is(err, errProtocol), errors.Is(err, errBadReply):
			f.count("protocol", 1)
		default:
			f.count("conn_lost", 1)
		}
		if fatal || !f.opts.Reconnect {
			d.giveUp()
			return
		}
		if acked {
			d.attempt = 0
		}
		if nc, rest = d.redial(); nc == nil {
			return
		}
	}
}

// redial connects again, with backoff, until it succeeds (and returns the
// connection, attached), the fleet closes, or the server refuses the device
// (nil).
func (d *device) redial() (net.Conn, []byte) {
	f := d.f
	for {
		wait := f.opts.MinBackoff << min(d.attempt, 20)
		if wait > f.opts.MaxBackoff || wait <= 0 {
			wait = f.opts.MaxBackoff
		}
		wait = wait/2 + rand.N(wait/2+1)
		d.mu.Lock()
		wait = max(wait, d.retry)
		d.retry = 0
		d.mu.Unlock()
		d.attempt++
		select {
		case <-time.After(wait):
		case <-f.closed:
			return nil, nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-f.closed:
				cancel()
			case <-ctx.Done():
			}
		}()
		nc, rest, err := d.dial(ctx)
		cancel()
		if err == nil {
			if !d.attach(nc) {
				nc.Close()
				return nil, nil
			}
			f.reconnects.Add(1)
			return nc, rest
		}
		if f.closing.Load() {
			return nil, nil
		}
		var (
			he *HandshakeError
			ce *ConnackError
		)
		if errors.As(err, &ce) {
			f.count(mqttCode(ce.Code), 1)
			if ce.refused() {
				d.giveUp()
				return nil, nil
			}
		} else if errors.As(err, &he) {
			f.count("http_"+strconv.Itoa(he.Status), 1)
			if he.refused() {
				d.giveUp()
				return nil, nil
			}
			d.mu.Lock()
			d.retry = max(d.retry, he.RetryAfter)
			d.mu.Unlock()
		} else {
			f.count("dial", 1)
		}
	}
}
