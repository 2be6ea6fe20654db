package frontend

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ingest-io/ingest/wal"
)

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
