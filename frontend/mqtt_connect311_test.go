package frontend

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ingest-io/ingest/wal"
)

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
