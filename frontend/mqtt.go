package frontend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/hijack"
)

// MQTT sessions live in this package, beside the WebSocket connections,
// rather than in a package of their own: they are another way into the same
// Server — its WAL and group commit, its device registry (one session per
// device across both transports), its rate-limit buckets, auth, metrics and
// drain — none of which a separate package could share without exporting
// the Server's insides.
//
// Encoding and decoding of MQTT packets is github.com/mochi-mqtt/server/v2's
// packets package (MQTT 3.1.1 and 5, with v5 properties and reason codes);
// only the session logic that ties acknowledgements to the WAL's fsync is
// written here.

// MQTTPath is the path of MQTT over WebSocket on the device port; the
// WebSocket subprotocol is MQTTSubprotocol.
const (
	MQTTPath        = "/mqtt"
	MQTTSubprotocol = "mqtt"
)

const (
	defaultReceiveMaximum = 128
	maxMQTTPacketBytes    = 268_435_455 // the largest remaining length MQTT can express
)

// MQTT protocol levels served: 3.1.1 and 5. 3.1 ("MQIsdp") is refused.
const (
	mqtt311 byte = 4
	mqtt5   byte = 5
)

// mqttServer is the Server's MQTT side: the TCP listeners (Options'
// MQTTListener) and the context that ends connections still waiting for
// their CONNECT.
type mqttServer struct {
	lns []net.Listener

	once     sync.Once
	hsCtx    context.Context // cancelled when the server stops accepting
	hsCancel context.CancelFunc
	accept   sync.WaitGroup // accept loops

	pool sync.Pool // *mqttPending
}

func (m *mqttServer) init() {
	m.once.Do(func() {
		m.hsCtx, m.hsCancel = context.WithCancel(context.Background())
		m.pool.New = func() any { return new(mqttPending) }
	})
}

// startMQTT starts an accept loop per MQTT listener. stop closes the
// listeners, ends connections still waiting for their CONNECT and waits for
// the accept loops; sessions already registered are left to the drain.
func (s *Server) startMQTT() (stop func()) {
	m := &s.mqtt
	m.init()
	for _, ln := range m.lns {
		m.accept.Go(func() { s.acceptMQTT(ln) })
	}
	return func() {
		m.hsCancel()
		for _, ln := range m.lns {
			ln.Close()
		}
		m.accept.Wait()
	}
}

func (s *Server) acceptMQTT(ln net.Listener) {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http
			// does, rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.lg.Warn("mqtt accept failed; retrying", "addr", ln.Addr().String(), "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !s.admit() {
			// The server drains with its listeners open: a lame duck
			// whose WAL failed, for the drain window. The device is
			// answered, server unavailable, rather than cut off; the
			// handshake is the accept loop's, which stop waits for.
			m := &s.mqtt
			m.accept.Go(func() { s.handshakeMQTT(nc, func() { nc.Close() }, false, false) })
			continue
		}
		go s.handshakeMQTT(nc, func() { nc.Close() }, false, true)
	}
}

// admit counts a new connection in the server's wait group, unless the
// server drains. A connection admitted must end with s.wg.Done.
func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.wg.Add(1)
	return true
}

// handleMQTTWebSocket serves MQTT over WebSocket: an upgrade that offers
// the "mqtt" subprotocol, then MQTT packets in binary messages. The device
// authenticates in CONNECT, as over TCP.
func (s *Server) handleMQTTWebSocket(w http.ResponseWriter, r *http.Request) {
	s.mqtt.init()
	if !s.admit() {
		w.Header().Set("Retry-After", "5")
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	hj := &hijacker{ResponseWriter: w}
	ws, err := websocket.Accept(hj, r, &websocket.AcceptOptions{
		Subprotocols:    []string{MQTTSubprotocol},
		OriginPatterns:  s.opts.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.wg.Done()
		s.m.handshakes.WithLabelValues("bad_handshake").Inc()
		return
	}
	if ws.Subprotocol() != MQTTSubprotocol {
		s.wg.Done()
		s.m.handshakes.WithLabelValues("no_mqtt_subprotocol").Inc()
		ws.Close(websocket.StatusProtocolError, "the mqtt subprotocol is required")
		return
	}
	// NetConn lifts the read limit, and it stays lifted: a message may
	// hold several packets, or part of one [MQTT-6.0.0-2]. It is read as a
	// stream, never held whole, and readPacket bounds each packet.
	nc := websocket.NetConn(s.hard, ws, websocket.MessageBinary)
	go s.handshakeMQTT(nc, func() { ws.CloseNow() }, true, true)
}

// handshakeMQTT reads and answers a connection's CONNECT, registers the
// session (taking over the device's older one) and serves it. With
// admitted, the caller has admitted the connection (admit); without, the
// server drains, and a CONNECT is refused server unavailable.
func (s *Server) handshakeMQTT(nc net.Conn, closeNow func(), overWS, admitted bool) {
	if admitted {
		defer s.wg.Done()
	}
	// Over plain TCP the reads hold no buffer while the device is idle, as
	// a WebSocket device's do (hijacker), and the writes bound themselves,
	// with no timer for a write the socket takes at once (hijack.Bounded;
	// nil elsewhere: over TLS or a WebSocket).
	bw, _ := hijack.Bounded(nc, s.opts.WriteTimeout)
	ic, br, idle := hijack.Idle(nc, nil)
	if idle {
		nc = ic
	} else {
		br = bufio.NewReaderSize(nc, readBufBytes)
	}
	c := &mqttConn{
		s:        s,
		nc:       nc,
		bw:       bw,
		closeFn:  closeNow,
		br:       br,
		done:     make(chan struct{}),
		stopc:    make(chan struct{}),
		overWS:   overWS,
		maxPkt:   s.opts.MQTT.MaxPacketBytes,
		sendMax:  maxCommandsUnacked,
		problems: true,
	}
	c.init(&s.mqtt.pool, &s.wg, c.flush)
	stop := context.AfterFunc(s.mqtt.hsCtx, closeNow)
	nc.SetReadDeadline(time.Now().Add(s.opts.MQTT.ConnectTimeout))
	code, reason := c.readConnect()
	if !stop() || code == 0 && (!admitted || !s.Ready()) {
		// The server stopped accepting while CONNECT was read, or its WAL
		// has failed (the process is about to restart).
		code, reason = connackUnavailable, "server not accepting devices; reconnect later"
	}
	if code != 0 {
		s.m.mqtt.refused.WithLabelValues(connackLabel(code)).Inc()
		if answersRefusal(c.version, code) {
			c.writeConnack(code, reason)
		}
		closeNow()
		return
	}
	if s.nconns.Add(1) > int64(s.opts.MaxConnections) {
		s.nconns.Add(-1)
		s.m.mqtt.refused.WithLabelValues(connackLabel(connackBusy)).Inc()
		c.writeConnack(connackBusy, "too many connections")
		closeNow()
		return
	}
	defer s.nconns.Add(-1)
	// The handshake's goroutine is already counted in s.wg.
	old, reg := s.register(c, c.device)
	switch reg {
	case refusedDraining:
		code, reason = connackUnavailable, "server shutting down"
	case refusedRevoked:
		code, reason = connackBanned, "device "+c.device+" is disabled in the device registry"
	}
	if code != 0 {
		s.m.mqtt.refused.WithLabelValues(connackLabel(code)).Inc()
		c.writeConnack(code, reason)
		closeNow()
		return
	}
	s.takeOver(old, c.device)
	c.bucket = s.limits.take(c.device, time.Now().UnixNano())
	if t := s.endAtExpiry(c, c.device, c.exp); t != nil {
		defer t.Stop()
	}

	vl := versionLabel(c.version)
	s.m.connections.Inc()
	s.m.mqtt.connections.WithLabelValues(vl).Inc()
	c.serve()
	c.detach()
	s.m.mqtt.connections.WithLabelValues(vl).Dec()
	s.m.connections.Dec()
	s.unregister(c, c.device)
}

// CONNACK codes the handshake answers with, as MQTT 5 reason codes;
// connackCode gives the MQTT 3.1.1 return code of each.
const (
	connackMalformed          byte = 0x81
	connackProtocolError      byte = 0x82
	connackImplementation     byte = 0x83 // a will message
	connackBadVersion         byte = 0x84
	connackBadClientID        byte = 0x85
	connackBadAuth            byte = 0x86
	connackUnavailable        byte = 0x88
	connackBusy               byte = 0x89
	connackBanned             byte = 0x8A // the device is disabled (Options.Revoked)
	connackBadAuthMethod      byte = 0x8C
	mqtt311UnacceptableLevel  byte = 0x01
	mqtt311IdentifierRejected byte = 0x02
	mqtt311ServerUnavailable  byte = 0x03
	mqtt311NotAuthorized      byte = 0x05
)

// connackCode maps a CONNACK reason code to what version gets.
func connackCode(version, code byte) byte {
	if version == mqtt5 || code == 0 {
		return code
	}
	switch code {
	case connackBadVersion:
		return mqtt311UnacceptableLevel
	case connackBadClientID:
		return mqtt311IdentifierRejected
	case connackUnavailable, connackBusy:
		return mqtt311ServerUnavailable
	}
	// Bad credentials, a will, an authentication method, a disabled
	// device: not authorized.
	return mqtt311NotAuthorized
}

// answersRefusal reports whether a CONNECT refused with code is answered
// with a CONNACK before the connection closes. MQTT 3.1.1 has no return
// code for a malformed CONNECT or a protocol violation: the server closes
// the connection without one [MQTT-3.1.4-1]. Nothing is answered when the
// protocol level is not known.
func answersRefusal(version, code byte) bool {
	switch version {
	case mqtt5:
		return true
	case mqtt311:
		return code != connackMalformed && code != connackProtocolError
	}
	return false
}

// connackLabel names a refused CONNECT in the metric.
func connackLabel(code byte) string {
	switch code {
	case connackMalformed:
		return "malformed"
	case connackProtocolError:
		return "protocol_error"
	case connackImplementation:
		return "will_not_supported"
	case connackBadVersion:
		return "unsupported_version"
	case connackBadClientID:
		return "bad_client_id"
	case connackBadAuth:
		return "bad_auth"
	case connackUnavailable:
		return "shutting_down"
	case connackBusy:
		return "too_many_connections"
	case connackBadAuthMethod:
		return "bad_auth_method"
	case connackBanned:
		return "revoked"
	}
	return "no_connect"
}

func versionLabel(v byte) string {
	if v == mqtt5 {
		return "5"
	}
	return "3.1.1"
}

// readConnect reads the first packet, which must be CONNECT, and checks it.
// It returns a CONNACK reason code (0: accepted) and a reason string. When
// no CONNECT could be read, c.version stays 0 and nothing is answered.
func (c *mqttConn) readConnect() (code byte, reason string) {
	s := c.s
	bp, err := c.readPacket()
	if err != nil || c.pk.FixedHeader.Type != packets.Connect {
		c.putBuf(bp)
		return connackMalformed, "no CONNECT"
	}
	defer c.putBuf(bp)
	buf := *bp
	pk := &c.pk
	if len(buf) >= 7 {
		// The protocol level, to know how to answer even a CONNECT that
		// does not decode.
		if l := int(buf[0])<<8 | int(buf[1]); l == 4 && len(buf) > 6 {
			switch buf[6] {
			case mqtt311, mqtt5:
				c.version = buf[6]
			}
		}
	}
	if err := decode(pk.ConnectDecode, buf); err != nil {
		if c.version == 0 {
			return connackMalformed, "malformed CONNECT"
		}
		return connackMalformed, "malformed CONNECT: " + err.Error()
	}
	if pk.ProtocolVersion != mqtt311 && pk.ProtocolVersion != mqtt5 {
		// 3.1 ("MQIsdp") and unknown levels get the 3.1.1 return code.
		c.version = mqtt311
		return connackBadVersion, "MQTT 3.1.1 and 5 are served"
	}
	c.version = pk.ProtocolVersion
	if pk.Connect.WillFlag {
		// Before the library's checks, which take an empty will message
		// (legal, [MQTT-3.1.3-10]) for a protocol violation.
		return connackImplementation, "will messages are not supported"
	}
	if v := pk.ConnectValidate(); v != packets.CodeSuccess {
		return connackProtocolError, v.Reason
	}
	p := &pk.Properties
	if c.version == mqtt5 {
		if p.AuthenticationMethod != "" {
			return connackBadAuthMethod, "extended authentication is not supported; send the device token as the password"
		}
		if p.RequestProblemInfoFlag && p.RequestProblemInfo == 0 {
			c.problems = false
		}
		c.clientMax = p.MaximumPacketSize
		if p.ReceiveMaximum > 0 {
			c.sendMax = int(p.ReceiveMaximum)
		}
		c.sessionExpiry = p.SessionExpiryIntervalFlag && p.SessionExpiryInterval > 0
	}
	// The library's strings alias the packet buffer, which is reused.
	clientID := strings.Clone(pk.Connect.ClientIdentifier)
	if clientID == "" && !pk.Connect.Clean && c.version != mqtt5 {
		// [MQTT-3.1.3-8]: a session kept under a name the client cannot
		// give again. (MQTT 5 assigns one; sessions are clean here.)
		return connackBadClientID, "an empty client id needs clean session 1"
	}
	if s.auth != nil {
		if !pk.Connect.PasswordFlag {
			return connackBadAuth, "the password must be the device token"
		}
		device, exp, err := verifyDevice(s.auth, string(pk.Connect.Password))
		if err != nil {
			s.lg.Debug("mqtt token refused", "remote", c.nc.RemoteAddr().String(), "err", err)
			return connackBadAuth, "token refused: " + err.Error()
		}
		if clientID != "" && clientID != device {
			return connackBadClientID, "the client id must be empty or the device id, the token's subject"
		}
		c.device, c.exp = device, exp
	} else {
		if err := envelope.CheckID(clientID); err != nil {
			return connackBadClientID, "without auth the client id is the device id and must be 1 to 255 bytes"
		}
		c.device = clientID
	}
	if s.revoked(c.device) {
		return connackBanned, "device " + c.device + " is disabled in the device registry"
	}
	c.assigned = clientID == ""
	if ka := pk.Connect.Keepalive; ka > 0 {
		// Spec: 1.5 times the keep alive. The deadline is moved at most
		// once a second, so it may fall up to a second later.
		c.keepalive = time.Duration(ka) * 1500 * time.Millisecond
	}
	return 0, ""
}

// writeConnack answers CONNECT with code (0: accepted).
func (c *mqttConn) writeConnack(code byte, reason string) {
	if b := c.connackBytes(code, reason); b != nil {
		c.write(b)
	}
}

// connack accepts the CONNECT, unless the session has stopped already: a
// newer connection, a drain, the registry or the token's expiry ended it
// while it waited for the device's older connection (takeOver). Then
// finish refuses the CONNECT instead (disconnect), as no DISCONNECT may
// come before a CONNACK [MQTT-3.14.0-1]. wmu is held around the check and
// the write, so that a DISCONNECT from finish, which looks at connacked,
// is written after the CONNACK.
func (c *mqttConn) connack() {
	c.wmu.Lock()
	c.mu.Lock()
	ok := !c.stopped
	c.connacked = ok
	c.mu.Unlock()
	var err error
	if ok {
		if b := c.connackBytes(0, ""); b != nil {
			err = c.writeHeld(b)
		}
	}
	c.wmu.Unlock()
	if err != nil {
		c.writeFailed()
	}
}

// connackRefusal is the CONNACK code that refuses the CONNECT of a
// session that ends, with DISCONNECT code, before its CONNACK.
func connackRefusal(code byte) (byte, string) {
	switch code {
	case rcAdministrative:
		return connackBanned, "the device is disabled in the device registry"
	case rcNotAuthorized:
		return connackBadAuth, "the token has expired"
	case rcSessionTakenOver:
		return connackUnavailable, "a newer connection of the device took over"
	}
	return connackUnavailable, "server not accepting devices; reconnect later"
}

// connackBytes encodes the CONNACK of code, nil if it does not encode.
func (c *mqttConn) connackBytes(code byte, reason string) []byte {
	o := c.s.opts.MQTT
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connack},
		ProtocolVersion: c.version,
		ReasonCode:      connackCode(c.version, code),
		Mods:            packets.Mods{MaxSize: c.clientMax, DisallowProblemInfo: !c.problems},
	}
	if c.version == mqtt5 {
		p := &pk.Properties
		if code != 0 {
			p.ReasonString = reason
		} else {
			p.ReceiveMaximum = uint16(o.ReceiveMaximum)
			p.MaximumPacketSize = uint32(o.MaxPacketBytes)
			p.RetainAvailable, p.RetainAvailableFlag = 0, true
			p.WildcardSubAvailable, p.WildcardSubAvailableFlag = 0, true
			p.SubIDAvailable, p.SubIDAvailableFlag = 0, true
			p.SharedSubAvailable, p.SharedSubAvailableFlag = 0, true
			if c.sessionExpiry {
				// Clean sessions only: nothing is kept after the connection.
				p.SessionExpiryInterval, p.SessionExpiryIntervalFlag = 0, true
			}
			if c.assigned {
				p.AssignedClientID = c.device
			}
		}
	}
	var b bytes.Buffer
	if err := pk.ConnackEncode(&b); err != nil {
		c.s.lg.Error("encode mqtt packet", "type", packets.PacketNames[pk.FixedHeader.Type], "err", err)
		return nil
	}
	return b.Bytes()
}
