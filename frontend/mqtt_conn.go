package frontend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/hijack"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// mqttConn is one MQTT session of a device, over TCP or WebSocket.
//
// Goroutines: the reader (serve, started by the handshake once the session
// is registered) reads and answers every packet but publishes; a flusher
// goroutine exists only while publishes wait for the WAL, as for a
// WebSocket connection (conn). Writes from both are serialised by wmu, each
// under a socket deadline.
//
// The reader queues every QoS 0, 1 and 2 PUBLISH, refused ones included, in
// pending, in the order received; the flusher appends the envelopes of
// everything pending with one AppendBatch and then writes the PUBACKs (QoS
// 1) and PUBRECs (QoS 2) of all of them, in that order, in one write. So
// every acknowledgement follows the fsync that covers its message, a
// session's acknowledgements keep the order of its publishes (MQTT requires
// it), and publishes of many sessions in flight together share one group
// commit.
//
// Lock order: Server.mu before mqttConn.mu; wmu is taken with neither held
// by the flusher and the reader, and never while waiting on cond. connack
// alone takes mu while it holds wmu: mu is never held while taking wmu.
type mqttConn struct {
	s       *Server
	nc      net.Conn
	bw      net.Conn // if not nil, nc's writes through hijack.Bounded: write sets no deadline
	closeFn func()   // closes the connection at once
	br      *bufio.Reader
	overWS  bool
	done    chan struct{}
	stopc   chan struct{} // closed when stopped turns true

	// Set by the handshake, then read-only.
	version       byte // mqtt311 or mqtt5
	device        string
	exp           time.Time     // token expiry; zero: none
	keepalive     time.Duration // 1.5 × the client's keep alive; zero: none
	lookDue       bool          // held back in enqueue: time to look at the peer (heldPeer); under mu
	heldSince     time.Time     // held back since then (heldPeer); the reader's
	heldClosed    bool          // held back: the device had closed its side at the last look; the reader's
	clientMax     uint32        // the client's Maximum Packet Size (MQTT 5); zero: none
	problems      bool          // MQTT 5 Request Problem Information: reason strings allowed
	sessionExpiry bool          // an MQTT 5 client asked for a session that outlives the connection
	assigned      bool          // the client sent no client id; it is given the device id
	connacked     bool          // CONNACK accepted the CONNECT (connack); under mu
	maxPkt        int

	// Reader-only.
	att      *downlink.Attachment // while subscribed to its commands (Options.Downlink)
	pk       packets.Packet
	bucket   bucket
	deadline time.Time   // the read deadline set for the keep alive
	reading  atomic.Bool // the reader waits for a packet (keepaliveExpired)
	// Over a WebSocket: the keep alive's deadline, as time since kaStart
	// (monotonic), for keepaliveExpired, which runs on the timer's
	// goroutine; kaStart is set before the timer starts.
	kaStart time.Time
	kaDue   atomic.Int64
	msgs    []protocol.Message

	wmu sync.Mutex

	// Publishes waiting for the flusher, and the session's end; its cond
	// is signalled when inflight drops too. The fields below are guarded
	// by its mu.
	flushQueue[mqttPending, *mqttPending]
	endCode  byte            // MQTT 5 DISCONNECT reason code the session ends with; 0: none
	counted  bool            // the end's reason is counted (countEndLocked)
	inflight int             // QoS 1 and 2 publishes not yet fully acknowledged
	qos2     map[uint16]bool // QoS 2 packet ids received and not yet released (PUBREL): whether PUBREC was sent
	// pubrecd counts the QoS 2 publishes of qos2 whose PUBREC was sent:
	// they wait for the client's PUBREL, which the reader must be free to
	// read, and hold no MQTT 3.1.1 reader back.
	pubrecd int

	// Commands to the device (mqtt_command.go).
	subscribed bool                // to its commands topic
	subQoS     byte                // the QoS granted, which command publishes are sent at
	sendMax    int                 // command publishes unacknowledged at most (the client's Receive Maximum)
	unacked    map[uint16]struct{} // packet ids of command publishes awaiting PUBACK
	nextID     uint16              // the last packet id given to a command publish
}

// mqttPending holds the publishes a flusher appends together.
type mqttPending struct {
	batch
	items []mqttItem // every queued publish, in the order received
	out   bytes.Buffer
}

// mqttItem is one queued PUBLISH.
type mqttItem struct {
	id     uint16
	qos    byte
	code   byte   // MQTT 5 reason code of its PUBACK or PUBREC: 0 stored, else refused
	dup    bool   // a QoS 2 publish repeated before its PUBREL: acknowledged, not stored again
	nenv   int    // envelopes of the publish in buf
	recv   int64  // unix nanos
	reason string // reason string of a refusal
}

func (p *mqttPending) reset() {
	p.batch.reset()
	p.items = p.items[:0]
	p.out.Reset()
}

func (p *mqttPending) queued() int { return len(p.items) }

// Reason codes the session ends with or refuses a publish with (MQTT 5).
const (
	rcSuccess            byte = 0x00
	rcUnspecified        byte = 0x80
	rcMalformed          byte = 0x81
	rcProtocolError      byte = 0x82
	rcImplementation     byte = 0x83
	rcNotAuthorized      byte = 0x87
	rcServerBusy         byte = 0x89
	rcShuttingDown       byte = 0x8B
	rcKeepAliveTimeout   byte = 0x8D
	rcAdministrative     byte = 0x98 // Administrative action: the device was disabled
	rcSessionTakenOver   byte = 0x8E
	rcTopicNameInvalid   byte = 0x90
	rcPacketIDNotFound   byte = 0x92
	rcReceiveMaximum     byte = 0x93
	rcPacketTooLarge     byte = 0x95
	rcQuotaExceeded      byte = 0x97
	rcPayloadInvalid     byte = 0x99
	rcRetainNotSupported byte = 0x9A
	rcNoSubscription     byte = 0x11
	rcSubIDsNotSupported byte = 0xA1
)

// Why an MQTT session ended, beyond the reasons WebSocket connections share.
const (
	reasonKeepalive      = "keepalive_timeout" // nothing received for 1.5 × the keep alive
	reasonProtocolError  = "protocol_error"    // a malformed packet or a protocol violation
	reasonReceiveMaximum = "receive_maximum"   // more publishes in flight than the receive maximum
	// The client sent DISCONNECT: what it published before is appended
	// (QoS 0 included), though its acknowledgements may find it gone.
	reasonClientDisconnect = "client_disconnect"
)

// mqttEnd ends a session: code is the MQTT 5 DISCONNECT reason code.
type mqttEnd struct {
	code   byte
	reason string // metric label
	text   string
}

func (e *mqttEnd) Error() string { return e.reason + ": " + e.text }

var (
	errPeerDisconnect = errors.New("client sent DISCONNECT")
	errStopped        = errors.New("session stopped")
)

func protocolError(code byte, text string) error {
	return &mqttEnd{code: code, reason: reasonProtocolError, text: text}
}

// decode runs a decoder of the packet library and turns a panic inside it
// into a malformed-packet error: the library indexes some buffers without
// checking their length, and a hostile packet must not take the server down.
func decode(f func([]byte) error, buf []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode packet: %v", r)
		}
	}()
	return f(buf)
}

// readPacket reads one control packet: its fixed header is decoded into
// c.pk (otherwise reset) and its remaining bytes returned in a pooled
// buffer, which the caller gives back with putBuf.
func (c *mqttConn) readPacket() (*[]byte, error) {
	hb, err := c.br.ReadByte()
	if err != nil {
		return nil, err
	}
	c.pk = packets.Packet{ProtocolVersion: c.version}
	if err := c.pk.FixedHeader.Decode(hb); err != nil {
		return nil, protocolError(rcMalformed, "fixed header: "+err.Error())
	}
	n, _, err := packets.DecodeLength(c.br)
	if err != nil {
		var code packets.Code
		if errors.As(err, &code) {
			return nil, protocolError(rcMalformed, "remaining length: "+code.Reason)
		}
		return nil, err
	}
	if n > c.maxPkt {
		return nil, &mqttEnd{code: rcPacketTooLarge, reason: reasonTooBig,
			text: "packet of " + strconv.Itoa(n) + " bytes, the maximum is " + strconv.Itoa(c.maxPkt)}
	}
	c.pk.FixedHeader.Remaining = n
	// The packet is read into a buffer that grows with the bytes that
	// arrive, at most doubling: a header that announces a large packet
	// (before CONNECT, from anyone) holds no memory for bytes not sent.
	bp := c.s.readPool.Get().(*[]byte)
	b := (*bp)[:0]
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, max(len(b), minPacketGrow))
		}
		k := min(n, cap(b))
		if _, err := io.ReadFull(c.br, b[len(b):k]); err != nil {
			*bp = b
			c.putBuf(bp)
			return nil, err
		}
		b = b[:k]
	}
	*bp = b
	return bp, nil
}

// minPacketGrow is the least a packet's read buffer grows by.
const minPacketGrow = 4 << 10

func (c *mqttConn) putBuf(bp *[]byte) {
	if bp != nil && cap(*bp) <= 64<<10 {
		c.s.readPool.Put(bp)
	}
}

// stopLocked marks the session as taking nothing more. c.mu is held.
func (c *mqttConn) stopLocked() {
	if !c.stopped {
		c.stopped = true
		close(c.stopc)
		c.cond.Broadcast()
	}
}

// end records why the session ends, first writer wins. c.mu is held.
func (c *mqttConn) endLocked(reason string, code byte) {
	if c.reason == "" {
		c.reason, c.endCode = reason, code
	}
}

// countEndLocked counts the session's end by its reason, once: before the
// socket closes, so that a peer that sees the end sees it counted. Whoever
// closes the socket first calls it (serve, keepaliveExpired, finish). The
// first reason set is final. c.mu is held.
func (c *mqttConn) countEndLocked() {
	if !c.counted {
		c.counted = true
		c.s.m.closes.WithLabelValues(c.reason).Inc()
	}
}

// end records why the session ends, first writer wins.
func (c *mqttConn) end(reason string, code byte) {
	c.mu.Lock()
	c.endLocked(reason, code)
	c.mu.Unlock()
}

// serve is the session's one reader, from CONNACK to the end.
func (c *mqttConn) serve() {
	defer close(c.done)
	s := c.s
	c.connack()
	if c.keepalive == 0 || c.overWS {
		// Over a WebSocket the keep alive is a timer (readLoop): the
		// CONNECT's deadline is lifted.
		c.nc.SetReadDeadline(time.Time{})
	}
	readErr := c.readLoop()

	c.mu.Lock()
	stopped := c.stopped
	c.stopLocked()
	var me *mqttEnd
	switch {
	case errors.As(readErr, &me):
		c.endLocked(me.reason, me.code)
	case errors.Is(readErr, errPeerDisconnect):
		c.endLocked(reasonClientDisconnect, 0)
	case c.keepalive > 0 && !c.deadline.IsZero() && !time.Now().Before(c.deadline):
		c.endLocked(reasonKeepalive, rcKeepAliveTimeout)
	default:
		c.endLocked(reasonPeer, 0)
	}
	code, reason := c.endCode, c.reason
	c.countEndLocked()
	c.mu.Unlock()
	if !stopped {
		c.disconnect(code)
	}
	c.dropPending()
	s.lg.Debug("mqtt session ended", "device", c.device, "reason", reason, "err", readErr)
	// Before done is closed: a newer session of the device waits for it.
	s.limits.put(c.device, c.bucket, time.Now().UnixNano())
}

func (c *mqttConn) readLoop() error {
	// Over a WebSocket a read deadline that expires closes the WebSocket
	// itself (websocket.NetConn), with no room left to tell an MQTT 5
	// client why: there a timer ends the session instead, with DISCONNECT
	// 0x8D as over TCP, if it fires while the reader waits for a packet
	// (keepaliveExpired). A session held back is not read, and waits.
	var ka *time.Timer
	if c.overWS && c.keepalive > 0 {
		c.kaStart = time.Now()
		c.kaDue.Store(int64(c.keepalive + time.Second))
		ka = time.AfterFunc(c.keepalive+time.Second, c.keepaliveExpired)
		defer ka.Stop()
	}
	for {
		if c.keepalive > 0 {
			// Move the deadline only when it is due within the keep
			// alive: one deadline update a second at most.
			now := time.Now()
			if c.deadline.Before(now.Add(c.keepalive)) {
				c.deadline = now.Add(c.keepalive + time.Second)
				if ka != nil {
					c.kaDue.Store(int64(c.deadline.Sub(c.kaStart)))
					ka.Reset(c.keepalive + time.Second)
				} else {
					c.nc.SetReadDeadline(c.deadline)
				}
			}
		}
		c.reading.Store(true)
		bp, err := c.readPacket()
		c.reading.Store(false)
		if err != nil {
			return err
		}
		err = c.handle(*bp, time.Now())
		c.putBuf(bp)
		if err != nil {
			return err
		}
	}
}

// keepaliveExpired ends a session over a WebSocket whose keep alive ran
// out while its reader waited for a packet (readLoop), as the read
// deadline ends one over TCP: DISCONNECT 0x8D, then the connection closes.
// A firing that the reader's Reset raced (the timer fired, and its
// function ran only after the reader had moved the deadline and waited for
// the next packet: Reset does not wait for it) finds the deadline ahead,
// and ends nothing.
func (c *mqttConn) keepaliveExpired() {
	if !c.reading.Load() || time.Since(c.kaStart) < time.Duration(c.kaDue.Load()) {
		return
	}
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.endLocked(reasonKeepalive, rcKeepAliveTimeout)
	c.stopLocked()
	c.countEndLocked()
	c.mu.Unlock()
	c.disconnect(rcKeepAliveTimeout)
}

// handle answers one packet read after CONNECT.
func (c *mqttConn) handle(buf []byte, now time.Time) error {
	pk := &c.pk
	typ := pk.FixedHeader.Type
	switch typ {
	case packets.Publish:
		return c.publish(buf, now)
	case packets.Pingreq:
		out := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}
		c.writePacket(&out, out.PingrespEncode)
		return nil
	case packets.Connect:
		return protocolError(rcProtocolError, "second CONNECT")
	case packets.Pubrel:
		return c.decoded(buf, pk.PubrelDecode, nil, func() error { return c.release(pk.PacketID) })
	case packets.Subscribe:
		return c.decoded(buf, pk.SubscribeDecode, pk.SubscribeValidate, func() error { return c.subscribe(pk) })
	case packets.Unsubscribe:
		return c.decoded(buf, pk.UnsubscribeDecode, pk.UnsubscribeValidate, func() error { return c.unsubscribe(pk) })
	case packets.Puback:
		return c.decoded(buf, pk.PubackDecode, nil, func() error { return c.puback(pk.PacketID, pk.ReasonCode) })
	case packets.Disconnect:
		return c.decoded(buf, pk.DisconnectDecode, nil, func() error { return errPeerDisconnect })
	}
	// PUBREC and PUBCOMP answer QoS 2 publishes the server never sends;
	// AUTH follows an authentication method CONNECT refuses.
	return protocolError(rcProtocolError, "unexpected "+packets.PacketNames[typ]+" packet")
}

// decoded decodes the packet in buf into c.pk with dec, checks it with
// valid (when not nil), and answers it with then. A packet that does not
// decode or check ends the session with a protocol error naming its type.
func (c *mqttConn) decoded(buf []byte, dec func([]byte) error, valid func() packets.Code, then func() error) error {
	if err := decode(dec, buf); err != nil {
		return protocolError(rcMalformed, c.packetName()+": "+err.Error())
	}
	if valid != nil {
		if code := valid(); code != packets.CodeSuccess {
			return protocolError(code.Code, c.packetName()+": "+code.Reason)
		}
	}
	return then()
}

// packetName is the name of c.pk's type as MQTT writes it: SUBSCRIBE.
func (c *mqttConn) packetName() string {
	return strings.ToUpper(packets.PacketNames[c.pk.FixedHeader.Type])
}

// release answers PUBREL: the QoS 2 exchange of the packet id is over.
func (c *mqttConn) release(id uint16) error {
	c.mu.Lock()
	rec, ok := c.qos2[id]
	if ok {
		delete(c.qos2, id)
		c.inflight--
		if rec {
			c.pubrecd--
		}
		c.cond.Broadcast()
	}
	c.mu.Unlock()
	out := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Pubcomp},
		ProtocolVersion: c.version,
		PacketID:        id,
	}
	if !ok {
		out.ReasonCode = rcPacketIDNotFound
	}
	c.writePacket(&out, out.PubcompEncode)
	return nil
}

// publish checks a PUBLISH and queues it for the flusher.
func (c *mqttConn) publish(buf []byte, now time.Time) error {
	s := c.s
	pk := &c.pk
	// PublishValidate refuses wildcards, a missing packet id, or a topic
	// alias (none is allowed: the Topic Alias Maximum is 0).
	valid := func() packets.Code { return pk.PublishValidate(0) }
	if err := c.decoded(buf, pk.PublishDecode, valid, func() error { return nil }); err != nil {
		return err
	}
	if pk.FixedHeader.Retain && c.version == mqtt5 {
		return protocolError(rcRetainNotSupported, "retained messages are not supported")
	}
	s.m.bytes.Add(float64(len(pk.Payload)))
	if s.expired(c.exp, now) {
		// As on WebSocket: what came before is acknowledged, this and
		// what follows is not, and the session ends.
		s.m.rejected.WithLabelValues(protocol.CodeUnauthorized).Inc()
		c.finish(protocol.ClosePolicyViolation, reasonExpired)
		return errStopped
	}
	it := mqttItem{id: pk.PacketID, qos: pk.FixedHeader.Qos, recv: now.UnixNano()}
	if it.qos == 2 {
		c.mu.Lock()
		_, it.dup = c.qos2[it.id]
		c.mu.Unlock()
		if it.dup {
			return c.enqueue(&it, nil, "", now)
		}
	}
	topic, code, why := c.checkTopic(pk.TopicName)
	if code == 0 && isCommandsTopic(topic) {
		return c.answer(&it, topic, pk.Payload, now)
	}
	if code != 0 {
		s.m.received.Inc()
		s.m.mqtt.received.Inc()
		s.m.rejected.WithLabelValues(protocol.CodeInvalidMessage).Inc()
		return c.refuse(&it, code, why, now)
	}
	msgs, ferr := s.opts.limits().ParseFrame(pk.Payload, c.msgs[:0])
	c.msgs = msgs
	defer clear(c.msgs)
	if ferr != nil {
		s.m.received.Inc()
		s.m.mqtt.received.Inc()
		s.m.rejected.WithLabelValues(ferr.Code).Inc()
		return c.refuse(&it, rcPayloadInvalid, ferr.Code+": "+ferr.Reason, now)
	}
	s.m.received.Add(float64(len(msgs)))
	s.m.mqtt.received.Add(float64(len(msgs)))
	if firstBad := s.check(c.device, msgs, now); firstBad >= 0 {
		// One PUBLISH has one acknowledgement: it is stored whole or not
		// at all. Its good messages are refused with it, counted under
		// the code of its first bad one (check counted the bad ones).
		m := &msgs[firstBad]
		good := 0
		for i := range msgs {
			if msgs[i].Code == "" {
				good++
			}
		}
		s.m.rejected.WithLabelValues(m.Code).Add(float64(good))
		why := m.Code + ": " + m.Reason
		if m.Index >= 0 {
			why += " (message " + strconv.Itoa(m.Index) + " of the batch)"
		}
		return c.refuse(&it, rcPayloadInvalid, why, now)
	}
	if err := c.throttle(len(msgs)); err != nil {
		return err
	}
	return c.enqueue(&it, msgs, topic, now)
}

// refuse queues the refusal of a publish, so that its PUBACK keeps its
// place among the session's acknowledgements. MQTT 3.1.1 has no negative
// acknowledgement: there the publish is acknowledged as usual, and dropped
// (counted in ingest_frontend_mqtt_publishes_refused_total).
func (c *mqttConn) refuse(it *mqttItem, code byte, why string, now time.Time) error {
	c.s.m.mqtt.refusedPublishes.WithLabelValues(publishRefusal(code)).Inc()
	c.s.lg.Debug("mqtt publish refused", "device", c.device, "code", code, "why", why)
	it.code, it.reason = code, why
	return c.enqueue(it, nil, "", now)
}

func publishRefusal(code byte) string {
	switch code {
	case rcTopicNameInvalid:
		return "topic_invalid"
	case rcNotAuthorized:
		return "not_authorized"
	case rcPayloadInvalid:
		return "payload_invalid"
	case rcQuotaExceeded:
		return "quota_exceeded"
	}
	return "other"
}

// MaxTopicLabelBytes bounds the part of a topic after devices/{id}/, which
// is stored with every message of the publish as the label "topic".
const MaxTopicLabelBytes = 128

// checkTopic checks that a publish's topic is devices/{id} or
// devices/{id}/rest, with the session's own device id, and returns rest.
func (c *mqttConn) checkTopic(t string) (rest string, code byte, why string) {
	const prefix = "devices/"
	if len(t) <= len(prefix) || t[:len(prefix)] != prefix {
		return "", rcTopicNameInvalid, "topics are devices/{device id}/..."
	}
	t = t[len(prefix):]
	id := c.device
	if len(t) < len(id) || t[:len(id)] != id || len(t) > len(id) && t[len(id)] != '/' {
		return "", rcNotAuthorized, "a device publishes under devices/" + id + "/ only"
	}
	if len(t) == len(id) {
		return "", 0, ""
	}
	rest = t[len(id)+1:]
	switch {
	case rest == "" || rest[0] == '/' || rest[len(rest)-1] == '/' || strings.Contains(rest, "//"):
		return "", rcTopicNameInvalid, "empty topic level after the device id"
	case len(rest) > MaxTopicLabelBytes:
		return "", rcTopicNameInvalid, "the topic after devices/{device id}/ is longer than " + strconv.Itoa(MaxTopicLabelBytes) + " bytes"
	}
	return rest, 0, ""
}

// throttle holds the reader until the device's bucket has n tokens: over
// MQTT the rate limit is backpressure (the session is not read), never a
// refusal, so that no publish is refused for a rate the device cannot see.
func (c *mqttConn) throttle(n int) error {
	s := c.s
	counted := false
	for {
		ok, wait := c.bucket.take(time.Now().UnixNano(), n, s.opts.Rate, float64(s.opts.Burst))
		if ok {
			return nil
		}
		if !counted {
			s.m.mqtt.throttled.Inc()
			counted = true
		}
		if !c.pause(wait) {
			return errStopped
		}
	}
}

// waitRoom waits until the WAL may have room (room is closed) and
// walFullRetry has passed since tried; it reports false if the session
// stopped first.
func (c *mqttConn) waitRoom(room <-chan struct{}, tried time.Time) bool {
	select {
	case <-room:
	case <-c.stopc:
		return false
	}
	if d := walFullRetry - time.Since(tried); d > 0 {
		return c.pause(d)
	}
	return true
}

// pause waits for d, or until the session stops; it reports whether it
// waited the whole of d.
func (c *mqttConn) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.stopc:
		return false
	}
}

// enqueue encodes the messages of a publish into pending and makes sure a
// flusher runs. It blocks while the session's pending bytes or publishes
// are over their bound, and an MQTT 3.1.1 session's while it has ReceiveMaximum publishes
// not yet acknowledged (PUBACK, PUBREC): the session is then not read (TCP
// backpressure).
func (c *mqttConn) enqueue(it *mqttItem, msgs []protocol.Message, topic string, now time.Time) error {
	s := c.s
	rmax := s.opts.MQTT.ReceiveMaximum
	counts := it.qos > 0 && !it.dup
	c.mu.Lock()
	defer c.mu.Unlock()
	if it.qos == 0 && len(msgs) == 0 {
		// A QoS 0 publish that stores nothing (refused, an empty batch,
		// a command's answer) has no acknowledgement to keep in its
		// place: nothing is queued for it.
		if c.stopped {
			return errStopped
		}
		return nil
	}
	if counts && c.version == mqtt5 && c.inflight >= rmax {
		return &mqttEnd{code: rcReceiveMaximum, reason: reasonReceiveMaximum,
			text: "more than " + strconv.Itoa(rmax) + " publishes in flight"}
	}
	// A 3.1.1 session's QoS 2 publishes acknowledged with PUBREC wait for
	// PUBRELs that only this reader reads: they hold it back no more.
	held := func() bool {
		return c.pend != nil && (len(c.pend.buf) >= s.opts.MaxPendingBytes || len(c.pend.items) >= maxPendingPublishes) ||
			counts && c.inflight-c.pubrecd >= rmax
	}
	var look *time.Timer // while held back: when to look at the peer (heldPeer)
	every := c.keepalive
	if every == 0 {
		every = heldLookEvery
	}
	for !c.stopped && held() {
		if look == nil {
			c.lookDue, c.heldClosed = false, false
			c.heldSince = time.Now()
			look = time.AfterFunc(every, func() {
				c.mu.Lock()
				c.lookDue = true
				c.cond.Broadcast()
				c.mu.Unlock()
			})
			defer look.Stop()
		}
		if !c.lookDue {
			c.cond.Wait()
			continue
		}
		c.lookDue = false
		c.mu.Unlock()
		err := c.heldPeer(every)
		c.mu.Lock()
		if err != nil {
			return err
		}
		look.Reset(every)
	}
	if c.stopped {
		return errStopped
	}
	if counts {
		c.inflight++
		if it.qos == 2 {
			if c.qos2 == nil {
				c.qos2 = make(map[uint16]bool)
			}
			c.qos2[it.id] = false
		}
	}
	p := c.pendingLocked()
	e := envelope.Envelope{Frontend: s.opts.ID, Device: c.device, Topic: topic}
	it.nenv = p.add(&e, msgs, now, &c.bucket, int64(s.opts.Burst))
	p.items = append(p.items, *it)
	c.flushLocked()
	return nil
}

// maxPendingPublishes bounds the publishes a session has queued for its
// flusher, whatever bytes they hold: a QoS 2 publish repeated before its
// PUBREL holds none and counts in no receive maximum, and was otherwise
// read and queued without bound while the flusher waited for the WAL.
const maxPendingPublishes = 16 << 10

// heldLookEvery is how often a session held back without a keep alive
// looks whether its peer has closed the connection (heldPeer).
const heldLookEvery = 10 * time.Second

// heldPeer looks at the connection of a session held back (not read, its
// pending bytes or its unacknowledged publishes at their bound; a 3.1.1
// session may wait so for as long as the WAL has no room) for every or
// longer, and reports whether the session must end, without reading.
// Nothing reads the connection while the session is held, so what the
// device sends meanwhile waits in it.
//   - A broken connection (reset, or timed out) ends the session: nothing
//     more can be acknowledged.
//   - A device that has closed its side (a FIN) can send nothing more.
//     What it sent before (publishes, a DISCONNECT) is still read if room
//     comes by the next look; the session ends at that look otherwise, or
//     at once with nothing waiting.
//   - Bytes waiting from a device that has not closed say it sent them and
//     waits for the session to read them: they keep the session.
//   - With nothing waiting and a keep alive, the device has sent nothing
//     since the hold began (1.5 × its keep alive or longer): the session
//     ends as one that misses its keep alive ends.
//
// Over TLS or a WebSocket the connection cannot be looked at so, and the
// session waits as before. It runs on the reader, which alone reads the
// connection.
func (c *mqttConn) heldPeer(every time.Duration) error {
	if time.Since(c.heldSince) < every {
		return nil // a look due to an earlier hold
	}
	unread, closed, broken, ok := c.unread()
	switch {
	case !ok:
		return nil
	case broken, closed && (unread == 0 || c.heldClosed):
		return &mqttEnd{reason: reasonPeer, text: "the device closed the connection while the session waited for room"}
	case closed:
		c.heldClosed = true
		return nil
	case unread > 0:
		return nil
	case c.keepalive > 0:
		return &mqttEnd{code: rcKeepAliveTimeout, reason: reasonKeepalive,
			text: "nothing received for 1.5 × the keep alive while the session waited for room"}
	}
	return nil
}

// unread reports how many bytes wait unread for the reader, and whether the
// peer has closed its side or the connection is broken (hijack.Waiting);
// ok is false where that is not known.
func (c *mqttConn) unread() (n int, closed, broken, ok bool) {
	n, closed, broken, ok = hijack.Waiting(c.nc)
	return n + c.br.Buffered(), closed, broken, ok
}

// flush appends the publishes of p to the WAL and acknowledges them. It
// reports whether p may be reused.
func (c *mqttConn) flush(p *mqttPending) bool {
	var err error
	if len(p.ends) > 0 {
		// A 3.1.1 session waits for room one publish at a time, so that
		// the WAL fills up to its bound whatever the reads grouped into
		// this batch.
		err = c.append(p.split(), len(p.items) == 1)
	}
	switch {
	case err == nil:
		c.ack(p, 0, len(p.items))
		return true
	case errors.Is(err, wal.ErrTooLarge) || noRoom(err) && c.version != mqtt5:
		return c.appendEach(p)
	}
	return c.appendFailed(p, 0, err)
}

// noRoom reports whether an append failed for lack of room, at the WAL's
// bound or on a full disk: nothing was written, and it may be tried again.
func noRoom(err error) bool { return errors.Is(err, wal.ErrFull) || errors.Is(err, wal.ErrNoSpace) }

// walFullRetry is the least time between an MQTT 3.1.1 session's tries to
// append while the WAL has no room: a next hop that releases a little at a
// time wakes every waiting session at each release.
const walFullRetry = 50 * time.Millisecond

// append appends entries with one AppendBatch. At the WAL's bound (or on a
// full disk), an MQTT 3.1.1 session, when wait is set, holds them and tries
// again when the WAL may have room (wal.Log.Room; no sooner than
// walFullRetry after its last try), until it has or the session ends: 3.1.1
// cannot refuse a publish, so it is not read meanwhile (its pending bound
// fills), and nothing is dropped. Without wait, or for MQTT 5 sessions
// (which are told, appendFailed), the error is returned at once.
func (c *mqttConn) append(entries [][]byte, wait bool) error {
	s := c.s
	waited := false
	for {
		room := s.log.Room()
		tried := time.Now()
		_, err := s.log.AppendBatch(s.hard, entries)
		if !noRoom(err) || c.version == mqtt5 || !wait {
			return err
		}
		if !waited {
			s.m.mqtt.walFullWaits.Inc()
			waited = true
		}
		if c.waitRoom(room, tried) {
			continue
		}
		c.mu.Lock()
		reason := c.reason
		c.mu.Unlock()
		if reason == reasonDrain || reason == reasonReplaced || reason == reasonRevoked {
			// Drain, takeover and revocation wait for the flusher: give up
			// within one more try, unacknowledged.
			_, err = s.log.AppendBatch(s.hard, entries)
		}
		return err
	}
}

// ack writes the acknowledgements of items from..to of p, in order, in one
// write, and counts them.
func (c *mqttConn) ack(p *mqttPending, from, to int) {
	s := c.s
	items := p.items[from:to]
	// The in-flight count drops before the acknowledgements are written:
	// a client may publish again as soon as it reads them.
	c.mu.Lock()
	for i := range items {
		it := &items[i]
		switch {
		case it.qos == 1:
			c.inflight--
		case it.qos == 2 && !it.dup && it.code >= rcUnspecified && c.version == mqtt5:
			// A refused QoS 2 publish ends with its PUBREC.
			delete(c.qos2, it.id)
			c.inflight--
		case it.qos == 2 && !it.dup:
			if rec, ok := c.qos2[it.id]; ok && !rec {
				c.qos2[it.id] = true
				c.pubrecd++
			}
		}
	}
	c.cond.Broadcast()
	c.mu.Unlock()

	p.out.Reset()
	stored, acked := 0, 0
	mods := c.mods()
	for i := range items {
		it := &items[i]
		if it.code == 0 {
			if it.qos == 0 {
				stored += it.nenv
			} else {
				acked += it.nenv
			}
		}
		if it.qos == 0 {
			continue
		}
		out := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Puback},
			ProtocolVersion: c.version,
			PacketID:        it.id,
			Mods:            mods,
		}
		if c.version == mqtt5 {
			out.ReasonCode = it.code
			out.Properties.ReasonString = it.reason
		}
		if it.qos == 2 {
			out.FixedHeader.Type = packets.Pubrec
			out.PubrecEncode(&p.out)
		} else {
			out.PubackEncode(&p.out)
		}
	}
	if p.out.Len() > 0 && c.write(p.out.Bytes()) != nil {
		return
	}
	now := time.Now().UnixNano()
	for i := range items {
		if it := &items[i]; it.qos > 0 && it.code == 0 && it.nenv > 0 {
			s.m.ackLatency.Observe(float64(now-it.recv) / 1e9)
		}
	}
	s.m.acked.Add(float64(acked))
	s.m.mqtt.acked.Add(float64(acked))
	s.m.mqtt.storedQoS0.Add(float64(stored))
}

// appendEach appends the publishes of p one at a time, after a batch of
// them was too large for the WAL, or found no room in it for an MQTT 3.1.1
// session (which then waits for room for each in turn). A publish that alone is too large is
// refused (MQTT 5: quota exceeded) and dropped; the first that meets any
// other failure ends the session as appendFailed does, after those before
// it have been acknowledged. It reports whether p may be reused.
func (c *mqttConn) appendEach(p *mqttPending) bool {
	s := c.s
	env, done := 0, 0 // done: items acknowledged so far
	for i := range p.items {
		it := &p.items[i]
		if it.nenv == 0 {
			continue
		}
		err := c.append(p.entries[env:env+it.nenv], true)
		env += it.nenv
		switch {
		case err == nil:
			// Acknowledged at once: the next one may wait for room.
			c.ack(p, done, i+1)
			done = i + 1
		case errors.Is(err, wal.ErrTooLarge):
			s.m.rejected.WithLabelValues(protocol.CodeTooLarge).Add(float64(it.nenv))
			s.m.mqtt.refusedPublishes.WithLabelValues(publishRefusal(rcQuotaExceeded)).Inc()
			it.code, it.reason, it.nenv = rcQuotaExceeded, "publish holds more than the server's queue can ever take; split it", 0
		default:
			if i > done {
				c.ack(p, done, i)
			}
			return c.appendFailed(p, i, err)
		}
	}
	if done < len(p.items) {
		c.ack(p, done, len(p.items))
	}
	return true
}

// appendFailed answers a failed append of the publishes from..end of p and
// ends the session. At the WAL's bound an MQTT 5 session gets quota
// exceeded for each of them and DISCONNECT server busy; any other failure
// ends the session without acknowledgement. It reports whether p may be
// reused: not after a cancelled append, which the WAL may still be reading.
func (c *mqttConn) appendFailed(p *mqttPending, from int, err error) bool {
	s := c.s
	c.mu.Lock()
	already := c.failedLocked()
	c.stopLocked()
	c.mu.Unlock()
	n := 0
	for _, it := range p.items[from:] {
		n += it.nenv
	}
	code := rcUnspecified
	switch {
	case noRoom(err):
		c.end(reasonOverloaded, rcServerBusy)
		s.m.rejected.WithLabelValues(protocol.CodeOverloaded).Add(float64(n))
		if c.version == mqtt5 {
			for i := range p.items[from:] {
				it := &p.items[from+i]
				if it.code == 0 {
					it.code, it.reason = rcQuotaExceeded, "server queue is full; publish again later"
					it.nenv = 0
					s.m.mqtt.refusedPublishes.WithLabelValues(publishRefusal(rcQuotaExceeded)).Inc()
				}
			}
			c.ack(p, from, len(p.items))
		}
		code = rcServerBusy
	case errors.Is(err, context.Canceled):
		c.end(reasonDrain, 0)
		c.closeFn()
		return false
	default:
		c.end(reasonInternal, rcUnspecified)
		s.lg.Error("wal append failed; closing mqtt session", "device", c.device, "err", err)
		if errors.Is(err, wal.ErrClosed) {
			code = rcShuttingDown
		}
	}
	if !already {
		c.disconnect(code)
	} else {
		c.closeFn()
	}
	return true
}

// finish stops taking publishes, waits until everything already taken has
// been appended and acknowledged, and ends the session; an MQTT 5 client
// is told why with DISCONNECT. The WebSocket close code is not used.
func (c *mqttConn) finish(_ websocket.StatusCode, reason string) {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopLocked()
	var code byte
	switch reason {
	case reasonDrain:
		code = rcShuttingDown
	case reasonReplaced:
		code = rcSessionTakenOver
	case reasonExpired:
		code = rcNotAuthorized
	case reasonRevoked:
		code = rcAdministrative
	}
	c.endLocked(reason, code)
	for c.flushing {
		c.cond.Wait()
	}
	c.countEndLocked()
	c.mu.Unlock()
	c.disconnect(code)
}

func (c *mqttConn) closeNow()              { c.closeFn() }
func (c *mqttConn) ended() <-chan struct{} { return c.done }

// disconnect sends an MQTT 5 client DISCONNECT with code (none when 0 or
// for 3.1.1, which has no server DISCONNECT) and closes the connection. A
// session that ends before its CONNACK (connack) is refused with one
// instead, whatever its version.
func (c *mqttConn) disconnect(code byte) {
	c.mu.Lock()
	acked := c.connacked
	c.mu.Unlock()
	if !acked {
		// A refused CONNECT, counted before the device can see it.
		rc, why := connackRefusal(code)
		c.s.m.mqtt.refused.WithLabelValues(connackLabel(rc)).Inc()
		c.writeConnack(rc, why)
	} else if code != 0 && c.version == mqtt5 {
		out := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Disconnect},
			ProtocolVersion: c.version,
			ReasonCode:      code,
		}
		c.writePacket(&out, out.DisconnectEncode)
	}
	c.closeFn()
}

func (c *mqttConn) mods() packets.Mods {
	return packets.Mods{MaxSize: c.clientMax, DisallowProblemInfo: !c.problems}
}

// writePacket encodes a packet with enc and writes it.
func (c *mqttConn) writePacket(pk *packets.Packet, enc func(*bytes.Buffer) error) {
	var b bytes.Buffer
	if pk.Mods == (packets.Mods{}) {
		pk.Mods = c.mods()
	}
	if err := enc(&b); err != nil {
		c.s.lg.Error("encode mqtt packet", "type", packets.PacketNames[pk.FixedHeader.Type], "err", err)
		return
	}
	c.write(b.Bytes())
}

// write writes b within Options.WriteTimeout; a failed write ends the
// session. Over plain TCP the deadline is set only if the socket makes
// the write wait (c.bw).
func (c *mqttConn) write(b []byte) error {
	c.wmu.Lock()
	err := c.writeHeld(b)
	c.wmu.Unlock()
	if err != nil {
		c.writeFailed()
	}
	return err
}

// writeHeld writes b, with wmu held.
func (c *mqttConn) writeHeld(b []byte) error {
	var err error
	if c.bw != nil {
		_, err = c.bw.Write(b)
	} else {
		c.nc.SetWriteDeadline(time.Now().Add(c.s.opts.WriteTimeout))
		_, err = c.nc.Write(b)
		c.nc.SetWriteDeadline(time.Time{})
	}
	return err
}

// writeFailed ends the session after a failed write.
func (c *mqttConn) writeFailed() {
	c.mu.Lock()
	c.endLocked(reasonWriteFailed, 0)
	c.stopLocked()
	c.mu.Unlock()
	c.closeFn()
}
