package frontend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// rawMQTT is a bare MQTT client over TCP, built on the packet library, for
// tests that need to break the rules or watch every packet.
type rawMQTT struct {
	t       testing.TB
	nc      net.Conn
	br      *bufio.Reader
	version byte
}

func dialRaw(t testing.TB, addr string, version byte) *rawMQTT {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawMQTT{t: t, nc: nc, br: bufio.NewReader(nc), version: version}
}

func (r *rawMQTT) send(pk *packets.Packet, enc func(*bytes.Buffer) error) {
	r.t.Helper()
	var b bytes.Buffer
	pk.ProtocolVersion = r.version
	if err := enc(&b); err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.nc.Write(b.Bytes()); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawMQTT) connect(clientID, token string, keepalive uint16) {
	r.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: r.version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: clientID, Keepalive: keepalive}}
	if token != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(clientID)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(token)
	}
	r.send(&pk, pk.ConnectEncode)
	ca := r.read(5 * time.Second)
	if ca == nil || ca.FixedHeader.Type != packets.Connack || ca.ReasonCode != 0 {
		r.t.Fatalf("CONNACK: %+v", ca)
	}
}

func (r *rawMQTT) publish(topic, payload string, qos byte, id uint16) {
	r.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic,
		Payload: []byte(payload), PacketID: id}
	r.send(&pk, pk.PublishEncode)
}

// read returns the next packet, or nil once the server has closed the
// connection.
func (r *rawMQTT) read(timeout time.Duration) *packets.Packet {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(timeout))
	hb, err := r.br.ReadByte()
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
			return nil
		}
		r.t.Fatalf("read: %v", err)
	}
	pk := &packets.Packet{ProtocolVersion: r.version}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		r.t.Fatal(err)
	}
	n, _, err := packets.DecodeLength(r.br)
	if err != nil {
		r.t.Fatal(err)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r.br, buf); err != nil {
		r.t.Fatal(err)
	}
	pk.FixedHeader.Remaining = n
	var derr error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		derr = pk.ConnackDecode(buf)
	case packets.Puback:
		derr = pk.PubackDecode(buf)
	case packets.Pubrec:
		derr = pk.PubrecDecode(buf)
	case packets.Pubcomp:
		derr = pk.PubcompDecode(buf)
	case packets.Disconnect:
		derr = pk.DisconnectDecode(buf)
	case packets.Suback:
		derr = pk.SubackDecode(buf)
	}
	if derr != nil {
		r.t.Fatalf("decode %s: %v", packets.PacketNames[pk.FixedHeader.Type], derr)
	}
	return pk
}

// expectEnd reads until the server closes, and returns the DISCONNECT
// reason code it sent first (-1: none).
func (r *rawMQTT) expectEnd(timeout time.Duration) int {
	r.t.Helper()
	code := -1
	for {
		pk := r.read(timeout)
		if pk == nil {
			return code
		}
		if pk.FixedHeader.Type == packets.Disconnect {
			code = int(pk.ReasonCode)
		}
	}
}

func TestMQTTMosquittoClients(t *testing.T) {
	for _, bin := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: install Debian's mosquitto-clients (make deps)", bin)
		}
	}
	ts := startMQTTServer(t, Options{}, wal.Options{})
	host, port, _ := net.SplitHostPort(ts.mqttAddr)
	run := func(bin string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
		return string(out), err
	}
	tok := hsToken(t, "mosq-1", nil)
	for _, v := range []string{"mqttv311", "mqttv5"} {
		for _, qos := range []string{"0", "1", "2"} {
			out, err := run("mosquitto_pub", "-V", v, "-q", qos, "-i", "mosq-1", "-u", "mosq-1", "-P", tok,
				"-t", "devices/mosq-1/env", "-m", `{"temp":21.5,"v":"`+v+qos+`"}`)
			if err != nil {
				t.Fatalf("mosquitto_pub %s QoS %s: %v\n%s", v, qos, err, out)
			}
		}
		// Several messages on one connection, one a line.
		out, err := run("mosquitto_pub", "-V", v, "-q", "1", "-i", "mosq-1", "-u", "mosq-1", "-P", tok,
			"-t", "devices/mosq-1", "-l")
		_ = out
		if err != nil {
			t.Fatalf("mosquitto_pub -l: %v", err)
		}
		out, err = run("mosquitto_pub", "-V", v, "-q", "1", "-i", "mosq-1", "-u", "mosq-1", "-P", "wrong", "-t", "devices/mosq-1", "-m", "{}")
		if err == nil || !strings.Contains(strings.ToLower(out), "not authori") && !strings.Contains(strings.ToLower(out), "bad user name or password") {
			t.Fatalf("mosquitto_pub %s with a bad token: %v\n%s", v, err, out)
		}
		// A frontend that serves no commands (no Downlink) refuses every subscription.
		out, err = run("mosquitto_sub", "-V", v, "-i", "mosq-1", "-u", "mosq-1", "-P", tok, "-t", "devices/mosq-1/commands", "-C", "1", "-W", "5")
		if !strings.Contains(out, "denied") {
			t.Fatalf("mosquitto_sub %s: %v\n%s", v, err, out)
		}
	}
	ts.stop(t)
	n := 0
	for _, e := range testkit.WALEnvelopes(t, ts.dir) {
		if e.Device != "mosq-1" || e.Topic != "env" {
			t.Fatalf("envelope %+v", e)
		}
		n++
	}
	if n != 6 {
		t.Fatalf("%d messages stored, want 6", n)
	}
}

func TestMQTTTakeover(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)
	// MQTT 5 replaced by MQTT 5: DISCONNECT 0x8E, after acknowledging what it had.
	a := dialRaw(t, ts.mqttAddr, mqtt5)
	a.connect("dev-1", tok, 30)
	a.publish("devices/dev-1", `{"v":1}`, 1, 1)
	if pk := a.read(5 * time.Second); pk == nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != 1 {
		t.Fatalf("PUBACK: %+v", pk)
	}
	b := dialRaw(t, ts.mqttAddr, mqtt5)
	b.connect("dev-1", tok, 30)
	if code := a.expectEnd(5 * time.Second); code != int(rcSessionTakenOver) {
		t.Fatalf("older session ended with %#x, want 0x8e", code)
	}
	// A WebSocket connection of the device replaces the MQTT session ...
	ws := rawDial(t, ts.testServer, tok)
	if code := b.expectEnd(5 * time.Second); code != int(rcSessionTakenOver) {
		t.Fatalf("MQTT session replaced by WebSocket ended with %#x, want 0x8e", code)
	}
	// ... and an MQTT 3.1.1 session replaces the WebSocket connection.
	wsErr := make(chan error, 1)
	go func() { _, _, err := ws.Read(context.Background()); wsErr <- err }() // a device always reads
	c := dialRaw(t, ts.mqttAddr, mqtt311)
	c.connect("dev-1", tok, 30)
	if err := <-wsErr; websocket.CloseStatus(err) != protocol.ClosePolicyViolation {
		t.Fatalf("WebSocket replaced by MQTT: %v, want close 1008", err)
	}
	c.publish("devices/dev-1", `{"v":2}`, 1, 7)
	if pk := c.read(5 * time.Second); pk == nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 {
		t.Fatalf("PUBACK: %+v", pk)
	}
	if got := testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(reasonReplaced)); got != 3 {
		t.Fatalf("%v connections closed as replaced, want 3", got)
	}
}

func TestMQTTKeepalive(t *testing.T) {
	ts := startMQTTServer(t, Options{MQTT: MQTTOptions{ConnectTimeout: 300 * time.Millisecond}}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)
	for _, v := range []byte{mqtt311, mqtt5} {
		r := dialRaw(t, ts.mqttAddr, v)
		r.connect("dev-1", tok, 1)
		// Pings keep it alive past 1.5 × the keep alive ...
		r.ping(3)
		// ... and silence ends it within 1.5 × (plus at most a second).
		start := time.Now()
		code := r.expectEnd(5 * time.Second)
		if d := time.Since(start); d < 1400*time.Millisecond || d > 3500*time.Millisecond {
			t.Fatalf("v%d: silent session ended after %v, want 1.5 s to 2.5 s", v, d)
		}
		if want := map[byte]int{mqtt311: -1, mqtt5: int(rcKeepAliveTimeout)}[v]; code != want {
			t.Fatalf("v%d: DISCONNECT %#x, want %#x", v, code, want)
		}
	}
	if got := testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(reasonKeepalive)); got != 2 {
		t.Fatalf("%v keepalive closes, want 2", got)
	}
	// No CONNECT within the connect timeout: closed.
	r := dialRaw(t, ts.mqttAddr, mqtt5)
	if pk := r.read(5 * time.Second); pk != nil {
		t.Fatalf("got %+v before CONNECT", pk)
	}
}

func TestMQTTLimits(t *testing.T) {
	ts := startMQTTServer(t, Options{MQTT: MQTTOptions{MaxPacketBytes: 1024, ReceiveMaximum: 2}}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)
	// A packet over the maximum: DISCONNECT 0x95.
	r := dialRaw(t, ts.mqttAddr, mqtt5)
	r.connect("dev-1", tok, 30)
	r.publish("devices/dev-1", `{"pad":"`+strings.Repeat("x", 2000)+`"}`, 1, 1)
	if code := r.expectEnd(5 * time.Second); code != int(rcPacketTooLarge) {
		t.Fatalf("oversized packet: DISCONNECT %#x, want 0x95", code)
	}
	// More publishes in flight than the receive maximum: DISCONNECT 0x93.
	r = dialRaw(t, ts.mqttAddr, mqtt5)
	r.connect("dev-1", tok, 30)
	var b bytes.Buffer
	for i := range 50 {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: mqtt5,
			TopicName: "devices/dev-1", Payload: []byte(`{}`), PacketID: uint16(i + 1)}
		pk.PublishEncode(&b)
	}
	r.nc.Write(b.Bytes())
	if code := r.expectEnd(5 * time.Second); code != int(rcReceiveMaximum) {
		t.Fatalf("over the receive maximum: DISCONNECT %#x, want 0x93", code)
	}
	// MQTT 3.1.1 has no receive maximum to break: the same burst is read
	// two at a time, and all of it acknowledged in order.
	r = dialRaw(t, ts.mqttAddr, mqtt311)
	r.connect("dev-1", tok, 30)
	b.Reset()
	for i := range 50 {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: mqtt311,
			TopicName: "devices/dev-1", Payload: []byte(`{}`), PacketID: uint16(i + 1)}
		pk.PublishEncode(&b)
	}
	r.nc.Write(b.Bytes())
	for i := range 50 {
		if pk := r.read(5 * time.Second); pk == nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != uint16(i+1) {
			t.Fatalf("PUBACK %d: %+v", i+1, pk)
		}
	}
	// A retained publish is refused in MQTT 5 (Retain Available is 0).
	r = dialRaw(t, ts.mqttAddr, mqtt5)
	r.connect("dev-1", tok, 30)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, TopicName: "devices/dev-1", Payload: []byte(`{}`), PacketID: 1}
	r.send(&pk, pk.PublishEncode)
	if code := r.expectEnd(5 * time.Second); code != int(rcRetainNotSupported) {
		t.Fatalf("retained publish: DISCONNECT %#x, want 0x9a", code)
	}
}

// TestMQTTWALFull: at the WAL's bound an MQTT 5 session gets quota
// exceeded and DISCONNECT server busy; an MQTT 3.1.1 session is no longer
// read until the WAL has room, and then every publish is stored and
// acknowledged, in order.
func TestMQTTWALFull(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{MaxEntries: 5})
	tok := hsToken(t, "dev-1", nil)
	r := dialRaw(t, ts.mqttAddr, mqtt311)
	r.connect("dev-1", tok, 0)
	for i := range 8 {
		r.publish("devices/dev-1", fmt.Sprintf(`{"v":%d}`, i), 1, uint16(i+1))
	}
	for i := range 5 {
		if pk := r.read(5 * time.Second); pk == nil || pk.PacketID != uint16(i+1) {
			t.Fatalf("PUBACK %d: %+v", i+1, pk)
		}
	}
	testkit.WaitFor(t, "the session to wait for room", 5*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.mqtt.walFullWaits) >= 1
	})
	refused := testkit.Metric(t, ts.reg, "ingest_wal_full_total")
	r.nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := r.br.ReadByte(); err == nil {
		t.Fatal("acknowledged a publish while the WAL was full")
	}
	// It waits for room, not trying again while nothing is released: ten
	// thousand sessions polling a WAL whose next hop is down took a core.
	if n := testkit.Metric(t, ts.reg, "ingest_wal_full_total") - refused; n != 0 {
		t.Fatalf("%v appends refused while the session waited and nothing was released", n)
	}
	// The next hop takes the first five: room for the other three.
	ts.log.Release(5)
	for i := 5; i < 8; i++ {
		if pk := r.read(5 * time.Second); pk == nil || pk.PacketID != uint16(i+1) {
			t.Fatalf("PUBACK %d: %+v", i+1, pk)
		}
	}
	// The WAL holds 3 of 5: an MQTT 5 session publishing 4 gets two
	// stored, then quota exceeded and DISCONNECT server busy.
	r.nc.Close()
	v := dialRaw(t, ts.mqttAddr, mqtt5)
	v.connect("dev-1", tok, 0)
	var b bytes.Buffer
	for i := range 4 {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: mqtt5,
			TopicName: "devices/dev-1", Payload: []byte(fmt.Sprintf(`{"w":%d}`, i)), PacketID: uint16(i + 1)}
		pk.PublishEncode(&b)
	}
	v.nc.Write(b.Bytes())
	ok, full, disc := 0, 0, -1
	for {
		pk := v.read(5 * time.Second)
		if pk == nil {
			break
		}
		switch {
		case pk.FixedHeader.Type == packets.Puback && pk.ReasonCode == 0:
			if full > 0 {
				t.Fatal("a publish was stored after one before it was refused")
			}
			ok++
		case pk.FixedHeader.Type == packets.Puback && pk.ReasonCode == rcQuotaExceeded:
			full++
		case pk.FixedHeader.Type == packets.Disconnect:
			disc = int(pk.ReasonCode)
		}
	}
	if full == 0 || ok+full > 4 || disc != int(rcServerBusy) {
		t.Fatalf("MQTT 5 at the bound: %d stored, %d quota exceeded, DISCONNECT %#x; want some refused and 0x89", ok, full, disc)
	}
	// The WAL holds, after the five released, the rest in order.
	var got []string
	cur, err := ts.log.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	for range ts.log.LastIndex() - ts.log.Released() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e, err := cur.Next(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		env, err := envelope.Decode(e.Data)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(env.Payload))
	}
	if ts.log.Released() != 5 {
		t.Fatalf("released %d", ts.log.Released())
	}
	want := []string{`{"v":5}`, `{"v":6}`, `{"v":7}`}
	for i := range ok {
		want = append(want, fmt.Sprintf(`{"w":%d}`, i))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("WAL holds %v, want %v", got, want)
	}
}

// TestMQTTDrain: at shutdown a session's publishes are acknowledged, then an
// MQTT 5 client is told DISCONNECT 0x8B.
func TestMQTTDrain(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	r := dialRaw(t, ts.mqttAddr, mqtt5)
	r.connect("dev-1", hsToken(t, "dev-1", nil), 30)
	r.publish("devices/dev-1", `{"v":1}`, 1, 1)
	if pk := r.read(5 * time.Second); pk == nil || pk.FixedHeader.Type != packets.Puback {
		t.Fatalf("PUBACK: %+v", pk)
	}
	go ts.stop(t)
	if code := r.expectEnd(5 * time.Second); code != int(rcShuttingDown) {
		t.Fatalf("drain: DISCONNECT %#x, want 0x8b", code)
	}
}

// FuzzMQTTConn feeds bytes to an MQTT session, with or without a valid
// CONNECT before them: each ends handled or with a clean close, never a
// panic or a hang.
func FuzzMQTTConn(f *testing.F) {
	enc := func(pk packets.Packet, e func(*packets.Packet, *bytes.Buffer) error) []byte {
		var b bytes.Buffer
		e(&pk, &b)
		return b.Bytes()
	}
	for _, v := range []byte{mqtt311, mqtt5} {
		pub := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: v,
			TopicName: "devices/dev-1/x", Payload: []byte(`{"v":1}`), PacketID: 1}, (*packets.Packet).PublishEncode)
		sub := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: v, PacketID: 2,
			Filters: packets.Subscriptions{{Filter: "devices/dev-1/commands", Qos: 1}}}, (*packets.Packet).SubscribeEncode)
		rel := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, ProtocolVersion: v, PacketID: 1}, (*packets.Packet).PubrelEncode)
		answer := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: v,
			TopicName: "devices/dev-1/commands/c1/result", Payload: []byte(`{"status":"ok"}`), PacketID: 3}, (*packets.Packet).PublishEncode)
		ack := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, ProtocolVersion: v, PacketID: 1}, (*packets.Packet).PubackEncode)
		unsub := enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, ProtocolVersion: v, PacketID: 4,
			Filters: packets.Subscriptions{{Filter: "devices/dev-1/commands"}}}, (*packets.Packet).UnsubscribeEncode)
		f.Add(v, true, append(append(pub, sub...), rel...))
		f.Add(v, true, slices.Concat(sub, answer, unsub, ack))
		f.Add(v, false, pub)
	}
	f.Add(mqtt5, true, []byte{0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01}) // SUBSCRIBE whose filter runs to the end
	f.Add(mqtt5, false, []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	// A Link that never runs: subscriptions are granted and answers taken,
	// and nothing reaches a home.
	link, err := downlink.New(downlink.Options{Frontend: "fe-fuzz", Homes: []string{"tcp://127.0.0.1:1"}}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer link.Close()
	opts, err := Options{Listener: ln, ID: "fe-fuzz", InsecureNoAuth: true, Downlink: link,
		MQTT: MQTTOptions{MaxPacketBytes: 4096, ConnectTimeout: time.Second}}.withDefaults()
	if err != nil {
		f.Fatal(err)
	}
	l := testkit.OpenWAL(f, f.TempDir(), wal.Options{Hop: "frontend"})
	s, err := New(opts, l, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	s.mqtt.init()
	defer s.mqtt.hsCancel()
	f.Fuzz(func(t *testing.T, version byte, withConnect bool, in []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() { io.Copy(io.Discard, client); close(done) }()
		if !s.admit() {
			t.Fatal("not admitted")
		}
		ended := make(chan struct{})
		go func() { s.handshakeMQTT(server, func() { server.Close() }, false, true); close(ended) }()
		var b bytes.Buffer
		if withConnect {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version%2 + 4,
				Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "dev-1", Keepalive: 10}}
			pk.ConnectEncode(&b)
		}
		b.Write(in)
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(b.Bytes())
		// The client is done: its half closes; the session must end.
		pend := make(chan struct{})
		go func() {
			select {
			case <-ended:
			case <-time.After(10 * time.Second):
				t.Error("session did not end")
			}
			close(pend)
		}()
		client.Close()
		<-pend
		<-done
	})
	s.wg.Wait()
}

// TestMQTT311QoS2PastReceiveMaximum: an MQTT 3.1.1 client with more QoS 2
// publishes in flight than the receive maximum, each waiting for its
// PUBREL, still has its PUBRELs read. The session is not read while it has
// receive-maximum publishes unacknowledged, and a QoS 2 publish counted as
// unacknowledged until its PUBREL: the reader waited behind the third
// publish for the PUBRELs queued behind it, for good.
func TestMQTT311QoS2PastReceiveMaximum(t *testing.T) {
	ts := startMQTTServer(t, Options{MQTT: MQTTOptions{ReceiveMaximum: 2}}, wal.Options{})
	r := dialRaw(t, ts.mqttAddr, mqtt311)
	r.connect("dev-1", hsToken(t, "dev-1", nil), 30)
	for i := 1; i <= 3; i++ {
		r.publish("devices/dev-1", fmt.Sprintf(`{"v":%d}`, i), 2, uint16(i))
	}
	// PUBRECs come in the publishes' order [MQTT-4.6.0-3]; the PUBCOMP of
	// a PUBREL sent at once may come between two of them when their
	// publishes were made durable by different commits.
	got := map[string]bool{}
	var recs []uint16
	for len(got) < 5 {
		pk := r.read(5 * time.Second)
		if pk == nil {
			t.Fatalf("closed after %v", got)
		}
		got[fmt.Sprint(packets.PacketNames[pk.FixedHeader.Type], " ", pk.PacketID)] = true
		if pk.FixedHeader.Type != packets.Pubrec {
			continue
		}
		if recs = append(recs, pk.PacketID); pk.PacketID != uint16(len(recs)) {
			t.Fatalf("PUBRECs %v, want them in the publishes' order", recs)
		}
		if pk.PacketID <= 2 {
			rel := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pk.PacketID}
			r.send(&rel, rel.PubrelEncode)
		}
	}
	for _, want := range []string{"Pubrec 1", "Pubrec 2", "Pubcomp 1", "Pubcomp 2", "Pubrec 3"} {
		if !got[want] {
			t.Fatalf("got %v, want PUBREC 1, 2 and 3 and PUBCOMP 1 and 2", got)
		}
	}
	rel := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 3}
	r.send(&rel, rel.PubrelEncode)
	if pk := r.read(5 * time.Second); pk == nil || pk.FixedHeader.Type != packets.Pubcomp || pk.PacketID != 3 {
		t.Fatalf("want PUBCOMP 3, got %+v", pk)
	}
}

// A session whose token expires is ended even if it never publishes again
// (it only pings; it might only take commands): MQTT 5 with DISCONNECT
// 0x87, 3.1.1 by closing, within expiryGrace of the expiry. Before, only
// a publish ended it, and a session that only pinged lived on.
func TestMQTTTokenExpiresWhileIdle(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	for _, v := range []byte{mqtt311, mqtt5} {
		exp := time.Now().Add(1500 * time.Millisecond).Truncate(time.Second).Add(time.Second)
		tok := hsToken(t, "dev-1", func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(exp) })
		r := dialRaw(t, ts.mqttAddr, v)
		r.connect("dev-1", tok, 2)
		var ended bool
		for !ended && time.Now().Before(exp.Add(5*time.Second)) {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
			r.send(&pk, pk.PingreqEncode)
			for {
				got := r.read(5 * time.Second)
				if got == nil {
					ended = true
					break
				}
				if got.FixedHeader.Type == packets.Disconnect {
					if v != mqtt5 || got.ReasonCode != rcNotAuthorized {
						t.Fatalf("v%d: DISCONNECT %#x, want %#x", v, got.ReasonCode, rcNotAuthorized)
					}
					continue // the close follows
				}
				if got.FixedHeader.Type != packets.Pingresp {
					t.Fatalf("v%d: %s", v, packets.PacketNames[got.FixedHeader.Type])
				}
				break
			}
			if !ended {
				time.Sleep(300 * time.Millisecond) // the client's own pace
			}
		}
		if !ended {
			t.Fatalf("v%d: the session was still served 5 s after its token expired", v)
		}
		if time.Now().Before(exp) {
			t.Fatalf("v%d: the session ended before its token expired", v)
		}
	}
	if got := testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(reasonExpired)); got != 2 {
		t.Fatalf("%v closes for an expired token, want 2", got)
	}
}

// An MQTT 3.1.1 session held back at the WAL's bound (not read: 3.1.1
// cannot refuse a publish) still ends when its device is gone: a closed
// connection with nothing left to read ends it at the next look (every
// 1.5 × the keep alive), a reset one too whatever is left, one closed after
// sending something (a PINGREQ its client gave up on) at the look after,
// and so does a silence of 1.5 × the keep alive. A device that keeps
// sending (pings here, unread; or publishes until its connection's window
// is full) is kept, and so, until the look after its close, are the
// publishes and DISCONNECT of a device that closed its side after sending
// them: they are read, in order, if the WAL has room by then. Before, a
// held session noticed none of this, and kept its place and its flusher,
// which tries the WAL every 50 ms, for as long as the WAL had no room.
func TestMQTT311HeldSessionNoticesItsPeer(t *testing.T) {
	publish := func(r *rawMQTT, i int, qos byte) {
		r.publish("devices/dev-1", fmt.Sprintf(`{"v":%d}`, i), qos, uint16(i+1))
	}
	ping := func(r *rawMQTT) {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
		var b bytes.Buffer
		pk.PingreqEncode(&b)
		r.nc.Write(b.Bytes())
	}
	for _, tc := range []struct {
		name      string
		keepalive uint16
		device    func(r *rawMQTT, stop <-chan struct{})
		reason    string // "": the session must stay while the WAL has no room
	}{
		{"closed", 1, func(r *rawMQTT, _ <-chan struct{}) { r.nc.Close() }, reasonPeer},
		{"silent", 1, func(*rawMQTT, <-chan struct{}) {}, reasonKeepalive},
		{"closed after a ping", 1, func(r *rawMQTT, _ <-chan struct{}) {
			ping(r)
			r.nc.(*net.TCPConn).CloseWrite()
		}, reasonPeer},
		{"reset after a ping", 1, func(r *rawMQTT, _ <-chan struct{}) {
			ping(r)
			r.nc.(*net.TCPConn).SetLinger(0)
			r.nc.Close()
		}, reasonPeer},
		{"pinging", 1, func(r *rawMQTT, stop <-chan struct{}) {
			for {
				select {
				case <-stop:
					return
				case <-time.After(300 * time.Millisecond):
				}
				ping(r)
			}
		}, ""},
		{"window full", 1, func(r *rawMQTT, stop <-chan struct{}) {
			// Publishes until its writes block: the connection's window
			// is closed, and nothing more reaches the server's socket.
			for {
				select {
				case <-stop:
					return
				default:
				}
				r.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "devices/dev-1", Payload: []byte(`{"v":1}`)}
				var b bytes.Buffer
				pk.PublishEncode(&b)
				r.nc.Write(b.Bytes())
			}
		}, ""},
		// A keep alive of 4 s: looks every 6 s, the first one finding
		// the close, the room given after it and well before the next.
		{"closed after sending", 4, func(r *rawMQTT, _ <-chan struct{}) {
			// QoS 0 publishes, DISCONNECT, and the end of its side.
			for i := 4; i < 10; i++ {
				publish(r, i, 0)
			}
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}}
			var b bytes.Buffer
			pk.DisconnectEncode(&b)
			r.nc.Write(b.Bytes())
			r.nc.(*net.TCPConn).CloseWrite()
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startMQTTServer(t, Options{MQTT: MQTTOptions{ReceiveMaximum: 2}}, wal.Options{MaxEntries: 1})
			r := dialRaw(t, ts.mqttAddr, mqtt311)
			r.connect("dev-1", hsToken(t, "dev-1", nil), tc.keepalive)
			// With ReceiveMaximum 2 and room for one entry, the reader is
			// held on the fourth publish, with nothing after it unread.
			for i := range 4 {
				publish(r, i, 1)
			}
			if pk := r.read(5 * time.Second); pk == nil || pk.PacketID != 1 {
				t.Fatalf("PUBACK 1: %+v", pk)
			}
			testkit.WaitFor(t, "the session held back at the WAL's bound", 5*time.Second, func() bool {
				return testutil.ToFloat64(ts.srv.m.mqtt.walFullWaits) >= 1
			})
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() { defer close(done); tc.device(r, stop) }()
			defer func() { close(stop); <-done }()
			sessions := func() int {
				ts.srv.mu.Lock()
				defer ts.srv.mu.Unlock()
				return len(ts.srv.conns)
			}
			if tc.reason != "" {
				testkit.WaitFor(t, "the held session ended", 10*time.Second, func() bool { return sessions() == 0 })
				if got := testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(tc.reason)); got != 1 {
					t.Fatalf("%v sessions ended for %s", got, tc.reason)
				}
				return
			}
			wait := 4 * time.Second // past 1.5 × the keep alive, several times
			if tc.name == "closed after sending" {
				wait = 7 * time.Second // past the first look, 5 s before the second
			}
			time.Sleep(wait)
			if sessions() != 1 {
				t.Fatal("a held session whose device is there, or sent what is still to be read, was ended")
			}
			if tc.name != "closed after sending" {
				return
			}
			// Room: what the device sent before it closed is read, in
			// order, up to its DISCONNECT, which ends the session as the
			// device ended it (not as a peer gone or silent).
			testkit.WaitFor(t, "the session ended", 10*time.Second, func() bool {
				ts.log.Release(ts.log.LastIndex())
				return sessions() == 0
			})
			if got := testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(reasonClientDisconnect)); got != 1 {
				t.Fatalf("%v sessions ended by the device's DISCONNECT", got)
			}
		})
	}
}

// A topic's levels after devices/{id}/ are each non-empty: an empty level
// (devices/{id}/a//b, devices/{id}/a/) is refused, topic name invalid, as
// docs/mqtt.md says. Before, only devices/{id}/ itself was: the others
// were stored with the label topic="a//b" or "a/".
func TestMQTTEmptyTopicLevelRefused(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	r := dialRaw(t, ts.mqttAddr, mqtt5)
	r.connect("dev-1", hsToken(t, "dev-1", nil), 30)
	for i, topic := range []string{"devices/dev-1/a//b", "devices/dev-1/a/", "devices/dev-1//a", "devices/dev-1/a/b"} {
		r.publish(topic, `{"v":1}`, 1, uint16(i+1))
		pk := r.read(5 * time.Second)
		if pk == nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != uint16(i+1) {
			t.Fatalf("%s: PUBACK %+v", topic, pk)
		}
		want := rcTopicNameInvalid
		if topic == "devices/dev-1/a/b" {
			want = 0
		}
		if pk.ReasonCode != want {
			t.Fatalf("%s: PUBACK %#x, want %#x", topic, pk.ReasonCode, want)
		}
	}
}

// pendingItems returns how many publishes the device's session holds
// queued for its flusher.
func pendingItems(ts *mqttTestServer, device string) int {
	ts.srv.mu.Lock()
	se := ts.srv.devices[device]
	ts.srv.mu.Unlock()
	c, ok := se.(*mqttConn)
	if !ok {
		return -1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pend == nil {
		return 0
	}
	return len(c.pend.items)
}

// Publishes that store nothing hold no pending bytes: QoS 0 ones refused
// or empty (not throttled, outside the receive maximum), QoS 2 ones
// repeated before their PUBREL. While the session's flusher waits for the
// WAL (an MQTT 3.1.1 session at its bound) they must not pile up in the
// session's queue, whatever their number. Before, each was queued for the
// flusher, without bound: a device sending them held the server's memory
// growing for as long as the WAL had no room.
func TestMQTTPublishesWithNothingToStoreDoNotPileUp(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{MaxEntries: 1})
	r := dialRaw(t, ts.mqttAddr, mqtt311)
	r.connect("dev-1", hsToken(t, "dev-1", nil), 0)
	// The WAL's one entry, then a QoS 2 publish that waits for room.
	r.publish("devices/dev-1", `{"v":0}`, 1, 1)
	if pk := r.read(5 * time.Second); pk == nil || pk.PacketID != 1 {
		t.Fatalf("PUBACK 1: %+v", pk)
	}
	r.publish("devices/dev-1", `{"v":1}`, 2, 2)
	testkit.WaitFor(t, "the flusher to wait for room", 5*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.mqtt.walFullWaits) >= 1
	})
	const n = 100_000
	var b bytes.Buffer
	for i := range n {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: mqtt311,
			TopicName: "x", Payload: []byte(`{}`)}
		switch i % 3 {
		case 1: // an empty batch
			pk.TopicName, pk.Payload = "devices/dev-1", []byte(`[]`)
		case 2: // the QoS 2 publish again, not yet released
			pk.FixedHeader.Qos, pk.FixedHeader.Dup, pk.PacketID = 2, true, 2
			pk.TopicName, pk.Payload = "devices/dev-1", []byte(`{"v":1}`)
		}
		pk.PublishEncode(&b)
	}
	go r.nc.Write(b.Bytes())
	most := 0
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
		most = max(most, pendingItems(ts, "dev-1"))
		time.Sleep(5 * time.Millisecond)
	}
	refused := testutil.ToFloat64(ts.srv.m.mqtt.refusedPublishes.WithLabelValues("topic_invalid"))
	t.Logf("%v refused publishes read; at most %d publishes queued", refused, most)
	if most > maxPendingItemsAllowed {
		t.Fatalf("%d publishes queued behind a flusher waiting for the WAL, want at most %d", most, maxPendingItemsAllowed)
	}
}

// maxPendingItemsAllowed is what the test above lets a session queue.
const maxPendingItemsAllowed = 20_000

// ping sends n PINGREQs 700 ms apart (the client's own pace, not a wait
// for the server), each answered PINGRESP.
func (r *rawMQTT) ping(n int) {
	r.t.Helper()
	for range n {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
		r.send(&pk, pk.PingreqEncode)
		if pk := r.read(5 * time.Second); pk == nil || pk.FixedHeader.Type != packets.Pingresp {
			r.t.Fatalf("PINGRESP: %+v", pk)
		}
		time.Sleep(700 * time.Millisecond)
	}
}

// dialMQTTWebSocket opens an MQTT 5 session's connection to ts over a
// WebSocket (/mqtt), closed when the test ends, and returns its raw client
// and the connection it writes to.
func dialMQTTWebSocket(t *testing.T, ts *mqttTestServer) (*rawMQTT, net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, ts.wsURL(), &websocket.DialOptions{Subprotocols: []string{MQTTSubprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	return &rawMQTT{t: t, nc: nc, br: bufio.NewReader(nc), version: mqtt5}, nc
}

// MQTT over WebSocket: "a single WebSocket data frame can contain multiple
// or partial MQTT Control Packets" [MQTT-6.0.0-2], and so can a message.
// A client that writes several publishes in one message, each well under
// the maximum packet size, has all of them served. Before, the session's
// WebSocket read limit was one packet (and a fixed header): a message of
// several packets over it closed the connection (1009), unacknowledged.
func TestMQTTWebSocketMessageOfSeveralPackets(t *testing.T) {
	ts := startMQTTServer(t, Options{MQTT: MQTTOptions{MaxPacketBytes: 1024}}, wal.Options{})
	r, nc := dialMQTTWebSocket(t, ts)
	r.connect("dev-1", hsToken(t, "dev-1", nil), 30)
	// Three publishes of 700 bytes each, in one message.
	var b bytes.Buffer
	for i := range 3 {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: mqtt5,
			TopicName: "devices/dev-1", Payload: []byte(fmt.Sprintf(`{"v":%d,"pad":"%s"}`, i, strings.Repeat("x", 650))), PacketID: uint16(i + 1)}
		pk.PublishEncode(&b)
	}
	if _, err := nc.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		pk := r.read(5 * time.Second)
		if pk == nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != uint16(i+1) || pk.ReasonCode != 0 {
			t.Fatalf("PUBACK %d: %+v (closes: %v)", i+1, pk, gatherCloses(t, ts.testServer))
		}
	}
	// A packet over the maximum still ends the session, as over TCP.
	r.publish("devices/dev-1", `{"pad":"`+strings.Repeat("x", 2000)+`"}`, 1, 4)
	if code := r.expectEnd(5 * time.Second); code != int(rcPacketTooLarge) {
		t.Fatalf("oversized packet: DISCONNECT %#x, want 0x95", code)
	}
}

// Keep alive over WebSocket ends an MQTT 5 session as over TCP, with
// DISCONNECT 0x8D (docs/mqtt.md). The session used to set a read deadline
// on the WebSocket's net.Conn, whose expiry closes the whole WebSocket at
// once: the device saw the connection drop with no DISCONNECT (nor a
// WebSocket close).
func TestMQTTWebSocketKeepalive(t *testing.T) {
	ts := startMQTTServer(t, Options{MQTT: MQTTOptions{ConnectTimeout: 500 * time.Millisecond}}, wal.Options{})
	r, _ := dialMQTTWebSocket(t, ts)
	// A keep alive of 2 s: the session ends after 3 s of silence, which
	// pings 700 ms apart stay well inside on a loaded machine.
	r.connect("dev-1", hsToken(t, "dev-1", nil), 2)
	// Pings keep it alive past 1.5 × the keep alive and past the CONNECT
	// timeout ...
	r.ping(5)
	// ... and silence ends it with DISCONNECT 0x8D.
	code := r.expectEnd(5 * time.Second)
	if code != int(rcKeepAliveTimeout) {
		t.Fatalf("silent session over WebSocket: DISCONNECT %#x, want 0x8d", code)
	}
	// Counted as the session ends, after its DISCONNECT.
	testkit.WaitFor(t, "the keepalive close counted", 5*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(reasonKeepalive)) == 1
	})
}

// Over a WebSocket the keep alive is a timer that the reader resets when
// it moves the deadline. A firing whose function runs only after the
// reader has moved the deadline again (the timer fired, then the reader,
// done with a packet that came just in time, reset it and waited for the
// next before the function ran: Reset does not wait for it) is stale, and
// ends nothing. It ended the session with DISCONNECT 0x8D: it looked only
// at whether the reader waited for a packet.
func TestMQTTWebSocketKeepaliveStaleFiring(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, ts.wsURL(), &websocket.DialOptions{Subprotocols: []string{MQTTSubprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	r := &rawMQTT{t: t, nc: nc, br: bufio.NewReader(nc), version: mqtt5}
	r.connect("dev-1", hsToken(t, "dev-1", nil), 5)
	var c *mqttConn
	testkit.WaitFor(t, "the session's reader to wait for a packet", 5*time.Second, func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		for se := range ts.srv.conns {
			c, _ = se.(*mqttConn)
		}
		return c != nil && c.reading.Load()
	})
	c.keepaliveExpired() // the stale firing: the deadline is 8.5 s away
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	r.send(&pk, pk.PingreqEncode)
	switch pk := r.read(5 * time.Second); {
	case pk == nil:
		t.Fatal("after a stale keep alive firing: the connection ended, want PINGRESP")
	case pk.FixedHeader.Type != packets.Pingresp:
		t.Fatalf("after a stale keep alive firing: %s (reason %#x), want PINGRESP", packets.PacketNames[pk.FixedHeader.Type], pk.ReasonCode)
	}
}

// An MQTT 5 SUBSCRIBE with a Subscription Identifier ends the session
// with 0xA1 (MQTT 5, 3.8.2.1.2): the CONNACK said the server has none
// (Subscription Identifiers Available 0). Before, it was answered as if
// the identifier were not there.
func TestMQTTSubscriptionIdentifierRefused(t *testing.T) {
	ts := startMQTTServer(t, Options{InsecureNoAuth: true}, wal.Options{})
	r := dialRaw(t, ts.mqttAddr, mqtt5)
	r.connect("dev-1", "", 30)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters:    packets.Subscriptions{{Filter: "devices/dev-1/commands", Qos: 1}},
		Properties: packets.Properties{SubscriptionIdentifier: []int{7}}}
	r.send(&pk, pk.SubscribeEncode)
	if code := r.expectEnd(5 * time.Second); code != int(rcSubIDsNotSupported) {
		t.Fatalf("SUBSCRIBE with a subscription identifier: DISCONNECT %#x, want 0xa1", code)
	}
}

// An MQTT 3.1.1 CONNECT with an empty client id and clean session 0 is
// refused 0x02 [MQTT-3.1.3-8]: the client asks for a session kept under a
// name it cannot give again. Before, a device with a token was accepted.
// With clean session 1 it is accepted, its device the token's subject.
func TestMQTT311EmptyClientIDNeedsCleanSession(t *testing.T) {
	ts := startMQTTServer(t, Options{}, wal.Options{})
	for _, clean := range []bool{false, true} {
		r := dialRaw(t, ts.mqttAddr, mqtt311)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, UsernameFlag: true, Username: []byte("d"),
			PasswordFlag: true, Password: []byte(hsToken(t, "d", nil))}}
		r.send(&pk, pk.ConnectEncode)
		want := mqtt311IdentifierRejected
		if clean {
			want = 0
		}
		if ca := r.read(5 * time.Second); ca == nil || ca.FixedHeader.Type != packets.Connack || ca.ReasonCode != want {
			t.Fatalf("empty client id, clean session %v: %+v, want CONNACK %#x", clean, ca, want)
		}
		r.nc.Close()
	}
}

// A CONNECT with a will is refused as docs/mqtt.md says (0x83; 3.1.1 0x05),
// its will message empty or not: an empty one is legal [MQTT-3.1.3-10], and
// before it was refused as a protocol violation (0x82; 3.1.1 closed without
// a CONNACK).
func TestMQTTWillRefused(t *testing.T) {
	ts := startMQTTServer(t, Options{InsecureNoAuth: true}, wal.Options{})
	for _, version := range []byte{mqtt311, mqtt5} {
		want := connackImplementation
		if version == mqtt311 {
			want = mqtt311NotAuthorized
		}
		for _, payload := range []string{"", "gone"} {
			r := dialRaw(t, ts.mqttAddr, version)
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "dev-1",
				WillFlag: true, WillTopic: "devices/dev-1/status", WillPayload: []byte(payload)}}
			r.send(&pk, pk.ConnectEncode)
			if ca := r.read(5 * time.Second); ca == nil || ca.FixedHeader.Type != packets.Connack || ca.ReasonCode != want {
				t.Fatalf("version %d, will %q: %+v, want CONNACK %#x", version, payload, ca, want)
			}
			r.nc.Close()
		}
	}
}

// An MQTT 3.1.1 CONNECT that breaks the protocol is answered by closing the
// connection without a CONNACK [MQTT-3.1.4-1], as docs/mqtt.md says ("malformed
// CONNECT, protocol violation: connection closed"). Before, it was answered
// CONNACK 0x05 not authorized, which tells the device its credentials are
// wrong. Unsupported levels and client ids keep their return codes.
func TestMQTT311MalformedConnectClosesWithoutConnack(t *testing.T) {
	ts := startMQTTServer(t, Options{InsecureNoAuth: true}, wal.Options{})
	for _, tc := range []struct {
		name string
		pk   []byte
		want int // CONNACK return code; -1: none, only the close
	}{
		// Flags 0x03: clean session and the reserved bit.
		{"reserved flag", []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x03, 0, 60, 0, 5, 'd', 'e', 'v', '-', '1'}, -1},
		// The client id's length runs past the packet.
		{"truncated", []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 9}, -1},
		{"level 3", []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 3, 0x02, 0, 60, 0, 5, 'd', 'e', 'v', '-', '1'}, int(mqtt311UnacceptableLevel)},
		{"good", []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 5, 'd', 'e', 'v', '-', '1'}, 0},
	} {
		r := dialRaw(t, ts.mqttAddr, mqtt311)
		if _, err := r.nc.Write(tc.pk); err != nil {
			t.Fatal(err)
		}
		got := -1
		if pk := r.read(5 * time.Second); pk != nil {
			if pk.FixedHeader.Type != packets.Connack {
				t.Fatalf("%s: %s", tc.name, packets.PacketNames[pk.FixedHeader.Type])
			}
			got = int(pk.ReasonCode)
		}
		if got != tc.want {
			t.Fatalf("%s: CONNACK %#x, want %#x (-0x1: none)", tc.name, got, tc.want)
		}
		r.nc.Close()
	}
}
