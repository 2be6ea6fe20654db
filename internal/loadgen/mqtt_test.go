package loadgen

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/frontendtest"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
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

// TestMQTTQuotaExceeded: an MQTT 5 frontend whose WAL is at its bound
// answers every publish it did not store with PUBACK 0x97 (quota
// exceeded) and ends the session with DISCONNECT 0x89 (server busy). A
// device counts each of those PUBACKs and the DISCONNECT, settles none of
// the refused publishes, and publishes them again on its next connection:
// nothing of it is a protocol error.
func TestMQTTQuotaExceeded(t *testing.T) {
	mln := testkit.Listen(t)
	// No uplink releases this WAL: it holds a few messages, then refuses.
	frontendtest.Start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{ID: "fe-loadgen-test", InsecureNoAuth: true,
		Rate: 1e9, Burst: 1e9, DrainWindow: 20 * time.Millisecond, MQTTListener: mln}, wal.Options{MaxBytes: 4 << 10})
	st, err := Run(context.Background(), Options{URLs: []string{"mqtt5://" + mln.Addr().String()}, Devices: 1, Insecure: true,
		Window: 16, Coalesce: true, Duration: 2 * time.Second, Message: message(200),
		Reconnect: true, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Errors["mqtt_0x97"] < 2 || st.Errors["disconnect_mqtt_0x89"] == 0 || st.Errors["protocol"] != 0 {
		t.Fatalf("stats %+v: want PUBACKs 0x97 counted (several), DISCONNECT 0x89 counted, no protocol error", st)
	}
}

// TestMQTTTooLargeForWAL: a publish larger than the frontend's WAL can
// ever hold is answered PUBACK 0x97 and dropped, and the session goes on
// (docs/mqtt.md): the device settles it as refused with 0x97, as it does
// any refused publish, and does not publish it again.
func TestMQTTTooLargeForWAL(t *testing.T) {
	mln := testkit.Listen(t)
	frontendtest.Start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{ID: "fe-loadgen-test", InsecureNoAuth: true,
		Rate: 1e9, Burst: 1e9, DrainWindow: 20 * time.Millisecond, MQTTListener: mln}, wal.Options{MaxBytes: 8 << 10})
	msg := func(dst []byte, dev int, seq uint64, ts int64) []byte {
		if seq%4 == 0 { // over the WAL's bound, within a message's: never stored
			dst = fmt.Appendf(dst, `{"seq":%d`, seq)
			for i := range 900 {
				dst = fmt.Appendf(dst, `,"f%d":%d`, i, i)
			}
			return append(dst, '}')
		}
		return fmt.Appendf(dst, `{"seq":%d}`, seq)
	}
	st, err := Run(context.Background(), Options{URLs: []string{"mqtt5://" + mln.Addr().String()}, Devices: 1, Insecure: true,
		Window: 4, Total: 20, Duration: time.Minute, Message: msg}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Acked != 15 || st.Rejected != 5 || st.Errors["mqtt_0x97"] != 5 || st.Errors["protocol"] != 0 || st.Reconnects != 0 {
		t.Fatalf("stats %+v: want 15 acknowledged, 5 refused with 0x97, no protocol error, no reconnect", st)
	}
}
