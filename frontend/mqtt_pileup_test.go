package frontend

import (
	"bytes"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

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
