package loadgen

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/testkit"
)

// startMQTT serves a frontend without auth with an MQTT listener as well,
// and returns the MQTT address.
func startMQTT(t *testing.T, dir string, opts frontend.Options) (*server, string) {
	t.Helper()
	mln := testkit.Listen(t)
	opts.MQTTListener = mln
	return start(t, "127.0.0.1:0", dir, opts), mln.Addr().String()
}

// TestMQTTClosedLoop: MQTT 3.1.1 and 5 devices publish at QoS 1 with a
// window in flight; every message is acknowledged once and stored in
// order, byte for byte.
func TestMQTTClosedLoop(t *testing.T) {
	for _, scheme := range []string{"mqtt", "mqtt5"} {
		t.Run(scheme, func(t *testing.T) {
			s, maddr := startMQTT(t, t.TempDir(), frontend.Options{})
			var got settled
			const devices, total = 5, 2000
			st, err := Run(context.Background(), Options{URLs: []string{scheme + "://" + maddr}, Devices: devices, Insecure: true,
				Window: 16, Total: total, Duration: time.Minute, Coalesce: true, Message: message(200), OnSettle: got.add}, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if st.Sent != total || st.Acked != total || st.Rejected != 0 || len(st.Errors) != 0 || st.Connected != devices {
				t.Fatalf("stats %+v", st)
			}
			checkStoredAsSettled(t, s, &got, devices, func(dev int) string { return fmt.Sprintf("dev-%d", dev) }, false)
		})
	}
}

// TestMQTTRefused: an MQTT 5 device's message the frontend refuses is
// settled with the PUBACK's reason code; the rest are acknowledged.
func TestMQTTRefused(t *testing.T) {
	startMQTTAddr := func() string { _, a := startMQTT(t, t.TempDir(), frontend.Options{}); return a }
	addr := startMQTTAddr()
	msg := func(dst []byte, dev int, seq uint64, ts int64) []byte {
		if seq%10 == 0 {
			return append(dst, `{"broken":`...)
		}
		return fmt.Appendf(dst, `{"seq":%d}`, seq)
	}
	var broken atomic.Int64
	st, err := Run(context.Background(), Options{URLs: []string{"mqtt5://" + addr}, Devices: 2, Insecure: true,
		Total: 100, Duration: time.Minute, Message: msg, OnSend: func(_ int, seq uint64, _ int64) {
			if seq%10 == 0 {
				broken.Add(1)
			}
		}}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b := broken.Load()
	if b < 8 || st.Acked != 100-b || st.Rejected != b || st.Errors["mqtt_0x99"] != b {
		t.Fatalf("stats %+v, want %d acknowledged and %d refused with 0x99", st, 100-b, b)
	}
}

func FuzzHandleMQTT(f *testing.F) {
	f.Add([]byte{0x40, 0x02, 0x00, 0x01, 0x40, 0x03, 0x00, 0x02, 0x99})
	f.Add([]byte{0xe0, 0x01, 0x8e})
	f.Add([]byte{0xd0, 0x00, 0x40, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		fl := &Fleet{errs: map[string]int64{}}
		d := &device{f: fl, ring: make([]Msg, 4), frames: 4}
		n, _, _ := d.handleMQTT(b)
		if n < 0 || n > len(b) {
			t.Fatalf("took %d of %d bytes", n, len(b))
		}
	})
}
