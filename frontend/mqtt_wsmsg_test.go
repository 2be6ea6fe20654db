package frontend

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ingest-io/ingest/wal"
)

// MQTT over WebSocket: "a single WebSocket data frame can contain multiple
// or partial MQTT Control Packets" [MQTT-6.0.0-2], and so can a message.
// A client that writes several publishes in one message, each well under
// the maximum packet size, has all of them served. Before, the session's
// WebSocket read limit was one packet (and a fixed header): a message of
// several packets over it closed the connection (1009), unacknowledged.
func TestMQTTWebSocketMessageOfSeveralPackets(t *testing.T) {
	ts := startMQTTServer(t, Options{MQTT: MQTTOptions{MaxPacketBytes: 1024}}, wal.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, ts.wsURL(), &websocket.DialOptions{Subprotocols: []string{MQTTSubprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	r := &rawMQTT{t: t, nc: nc, br: bufio.NewReader(nc), version: mqtt5}
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
