package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	mqttpk "github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// revokedSet is what Options.Revoked reads in the tests: the device
// registry's disabled devices.
type revokedSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (r *revokedSet) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

func (r *revokedSet) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]bool{}
	}
	r.ids[id] = true
}

func (r *revokedSet) set(ids ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = map[string]bool{}
	for _, id := range ids {
		r.ids[id] = true
	}
}

// TestRevoked: a disabled device's open connections are closed by
// CloseRevoked (WebSocket 1008 revoked after its messages are
// acknowledged, MQTT 5 DISCONNECT 0x98, MQTT 3.1.1 a closed connection),
// and its handshakes are refused with a valid token (HTTP 403 revoked,
// CONNACK 0x8A or 3.1.1's not authorized). Other devices are untouched.
func TestRevoked(t *testing.T) {
	var revoked revokedSet
	ts := startMQTTServer(t, Options{Revoked: revoked.has}, wal.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ws := rawDial(t, ts.testServer, hsToken(t, "ws-dev", nil))
	keep := rawDial(t, ts.testServer, hsToken(t, "other", nil))
	c5, ca, disc5, err := v5(t, ts, false, "v5-dev", hsToken(t, "v5-dev", nil), nil)
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect v5: %v %+v", err, ca)
	}
	lost := make(chan error, 1)
	o := pahov3.NewClientOptions().AddBroker("tcp://" + ts.mqttAddr).SetClientID("v311-dev").SetUsername("v311-dev").
		SetPassword(hsToken(t, "v311-dev", nil)).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectionLostHandler(func(_ pahov3.Client, err error) { lost <- err })
	c3 := pahov3.NewClient(o)
	if tok := c3.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect 3.1.1: %v", tok.Error())
	}
	defer c3.Disconnect(100)

	// Each sends while allowed, and is acknowledged.
	send(t, ws, `{"id":1,"v":1}`)
	if f, err := readFrame(t, ws); err != nil || f.Type != "ack" {
		t.Fatalf("ack before revocation: %+v %v", f, err)
	}
	if r, err := c5.Publish(ctx, &paho.Publish{QoS: 1, Topic: "devices/v5-dev", Payload: []byte(`{"v":1}`)}); err != nil || r.ReasonCode != 0 {
		t.Fatalf("v5 publish: %+v %v", r, err)
	}
	if tok := c3.Publish("devices/v311-dev", 1, false, `{"v":1}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("3.1.1 publish: %v", tok.Error())
	}

	if n := ts.srv.CloseRevoked(); n != 0 {
		t.Fatalf("CloseRevoked closed %d connections with no device disabled", n)
	}
	revoked.set("ws-dev", "v5-dev", "v311-dev", "never-connected")
	// A frame the WebSocket device sends as it is disabled is either
	// acknowledged before the close or not at all.
	send(t, ws, `{"id":2,"v":2}`)
	if n := ts.srv.CloseRevoked(); n != 3 {
		t.Fatalf("CloseRevoked closed %d connections, want 3", n)
	}
	for {
		f, err := readFrame(t, ws)
		if err != nil {
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != protocol.ClosePolicyViolation || ce.Reason != protocol.ReasonRevoked {
				t.Fatalf("the disabled device's WebSocket ended with %v, want 1008 %q", err, protocol.ReasonRevoked)
			}
			break
		}
		if f.Type != "ack" {
			t.Fatalf("frame before the close: %+v", f)
		}
	}
	select {
	case d := <-disc5:
		if d.ReasonCode != rcAdministrative {
			t.Fatalf("MQTT 5 DISCONNECT reason %#x, want %#x", d.ReasonCode, rcAdministrative)
		}
	case <-ctx.Done():
		t.Fatal("no DISCONNECT for the disabled MQTT 5 device")
	}
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("the disabled MQTT 3.1.1 device's connection stayed open")
	}
	testkit.WaitFor(t, "three closes counted as revoked", 10*time.Second, func() bool { return gatherCloses(t, ts.testServer)["revoked"] == 3 })

	// The device that was not disabled goes on.
	send(t, keep, `{"id":1,"v":1}`)
	if f, err := readFrame(t, keep); err != nil || f.Type != "ack" {
		t.Fatalf("another device after a revocation: %+v %v", f, err)
	}

	// Handshakes of disabled devices, with valid tokens, are refused.
	h := http.Header{"Authorization": {"Bearer " + hsToken(t, "ws-dev", nil)}}
	_, resp, err := websocket.Dial(ctx, ts.url(), &websocket.DialOptions{HTTPHeader: h})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("handshake of a disabled device: %v, %+v; want HTTP 403", err, resp)
	}
	body, _ := io.ReadAll(resp.Body)
	var refusal struct{ Type, Code, Message string }
	if json.Unmarshal(body, &refusal) != nil || refusal.Type != "error" || refusal.Code != protocol.CodeRevoked || !strings.Contains(refusal.Message, "ws-dev") {
		t.Fatalf("refusal body %q, want an error with code %q naming the device", body, protocol.CodeRevoked)
	}
	if v := testutil.ToFloat64(ts.srv.m.handshakes.WithLabelValues(protocol.CodeRevoked)); v != 1 {
		t.Fatalf("handshakes refused as revoked: %v, want 1", v)
	}
	for _, overWS := range []bool{false, true} {
		_, ca, _, err := v5(t, ts, overWS, "v5-dev", hsToken(t, "v5-dev", nil), nil)
		if err == nil || ca == nil || ca.ReasonCode != connackBanned {
			t.Fatalf("MQTT 5 CONNECT of a disabled device (websocket %v): %v %+v; want reason %#x", overWS, err, ca, connackBanned)
		}
	}
	if _, err := v311(t, "tcp://"+ts.mqttAddr, "v311-dev", hsToken(t, "v311-dev", nil)); err == nil || !strings.Contains(err.Error(), "not Authorized") {
		t.Fatalf("MQTT 3.1.1 CONNECT of a disabled device: %v, want not Authorized", err)
	}

	// Enabled again: it connects.
	revoked.set()
	c := rawDial(t, ts.testServer, hsToken(t, "ws-dev", nil))
	send(t, c, `{"id":3,"v":3}`)
	if f, err := readFrame(t, c); err != nil || f.Type != "ack" {
		t.Fatalf("re-enabled device: %+v %v", f, err)
	}
	ts.stop(t)
	got := map[string]int{}
	for _, e := range testkit.WALEnvelopes(t, ts.dir) {
		got[e.Device]++
	}
	if got["v5-dev"] != 1 || got["v311-dev"] != 1 || got["other"] != 1 || got["ws-dev"] < 2 || got["ws-dev"] > 3 {
		t.Fatalf("stored per device: %v", fmt.Sprint(got))
	}
}

// TestDisabledDuringHandshake: a device disabled between its handshake's
// check and its session's registration, the change's CloseRevoked run in
// between (before the session was there to close), is not served: its
// WebSocket is closed with 1008 revoked, its MQTT CONNECT refused with
// 0x8A, and nothing it sends is stored. The session used to be registered
// and served until the device reconnected.
func TestDisabledDuringHandshake(t *testing.T) {
	var (
		revoked revokedSet
		srv     atomic.Pointer[Server]
		mu      sync.Mutex
		looked  = map[string]bool{}
	)
	// The registry disables each device right after the handshake's first
	// look at it, and the process closes what it disables, as
	// cmd/ingest's closeRevoked does.
	check := func(device string) bool {
		was := revoked.has(device)
		mu.Lock()
		first := !looked[device]
		looked[device] = true
		mu.Unlock()
		if first {
			revoked.add(device)
			srv.Load().CloseRevoked()
		}
		return was
	}
	ts := startMQTTServer(t, Options{Revoked: check}, wal.Options{})
	srv.Store(ts.srv)

	ws := rawDial(t, ts.testServer, hsToken(t, "ws-dev", nil))
	send(t, ws, `{"id":1,"v":1}`)
	f1, err := readFrame(t, ws)
	var ce websocket.CloseError
	if err == nil || !errors.As(err, &ce) || ce.Code != protocol.ClosePolicyViolation || ce.Reason != protocol.ReasonRevoked {
		t.Fatalf("WebSocket of a device disabled during its handshake: frame %+v, %v; want 1008 %q", f1, err, protocol.ReasonRevoked)
	}

	_, ca, _, err := v5(t, ts, false, "v5-dev", hsToken(t, "v5-dev", nil), nil)
	if err == nil || ca == nil || ca.ReasonCode != connackBanned {
		t.Fatalf("MQTT 5 CONNECT of a device disabled during it: %v %+v; want reason %#x", err, ca, connackBanned)
	}
	testkit.WaitFor(t, "the WebSocket close counted as revoked", 10*time.Second, func() bool { return gatherCloses(t, ts.testServer)["revoked"] == 1 })
	ts.stop(t)
	if envs := testkit.WALEnvelopes(t, ts.dir); len(envs) != 0 {
		t.Fatalf("stored %d messages of disabled devices", len(envs))
	}
}

// TestDisabledBeforeConnack: an MQTT session ended while it waits for the
// device's older connection to finish, before its CONNACK (here by
// CloseRevoked; a drain or a token's expiry end it alike), is refused
// with a CONNACK. A DISCONNECT before the CONNACK breaks MQTT 5
// [MQTT-3.14.0-1]: a client reads "unexpected packet" where it should
// read why it was refused. It used to get DISCONNECT 0x98 first.
func TestDisabledBeforeConnack(t *testing.T) {
	var rs revokedSet
	ts := startMQTTServer(t, Options{Revoked: rs.has}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)
	// The older connection never reads: its close handshake waits, so the
	// newer session waits for it in takeOver, registered, before CONNACK.
	rawDial(t, ts.testServer, tok)
	r := dialRaw(t, ts.mqttAddr, mqtt5)
	pk := mqttpk.Packet{FixedHeader: mqttpk.FixedHeader{Type: mqttpk.Connect},
		Connect: mqttpk.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "dev-1", Keepalive: 30,
			UsernameFlag: true, Username: []byte("dev-1"), PasswordFlag: true, Password: []byte(tok)}}
	r.send(&pk, pk.ConnectEncode)
	testkit.WaitFor(t, "the session to wait for the older connection", 5*time.Second, func() bool {
		return testkit.Blocked("frontend.(*Server).takeOver(", "select")
	})
	rs.add("dev-1")
	if n := ts.srv.CloseRevoked(); n != 1 {
		t.Fatalf("CloseRevoked closed %d sessions, want 1", n)
	}
	first := r.read(10 * time.Second)
	if first == nil || first.FixedHeader.Type != mqttpk.Connack {
		if first != nil {
			t.Fatalf("first packet %s %#x, want a CONNACK", mqttpk.PacketNames[first.FixedHeader.Type], first.ReasonCode)
		}
		t.Fatal("connection closed without a CONNACK")
	}
	if first.ReasonCode != connackBanned {
		t.Fatalf("CONNACK %#x, want 0x8a banned", first.ReasonCode)
	}
	if code := r.expectEnd(10 * time.Second); code != -1 {
		t.Fatalf("DISCONNECT %#x after a refusing CONNACK", code)
	}
	// A refused CONNECT, counted as one (docs/mqtt.md's metrics).
	if n := testutil.ToFloat64(ts.srv.m.mqtt.refused.WithLabelValues("revoked")); n != 1 {
		t.Fatalf("connects_refused{reason=\"revoked\"} = %v, want 1", n)
	}
}
