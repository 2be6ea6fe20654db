package frontend

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"

	"github.com/coder/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

func TestAckedMessagesAreInWAL(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: ts.url(), Token: hsToken(t, "dev-1", nil)})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		if _, err := c.Send(ctx, []byte(payload("dev-1", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SendWait(ctx, []byte(`{"id":"last","ts":1748736000000}`)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// The server counts an ack once its write returns, which may be after
	// the device has read it.
	testkit.WaitFor(t, "the acked metric to count every message", 5*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.acked) >= n+1
	})
	if got := testutil.ToFloat64(ts.srv.m.acked); got != n+1 {
		t.Fatalf("acked metric %v, want %d", got, n+1)
	}
	ts.stop(t)
	envs := testkit.WALEnvelopes(t, ts.dir)
	if len(envs) != n+1 {
		t.Fatalf("%d envelopes in the WAL, want %d", len(envs), n+1)
	}
	for i, e := range envs[:n] {
		var p struct{ ID int }
		if err := json.Unmarshal(e.Payload, &p); err != nil || p.ID != i {
			t.Fatalf("entry %d: payload %s out of order (%v)", i, e.Payload, err)
		}
		if e.Device != "dev-1" || e.Frontend != "fe-test" || e.HasDeviceTime || e.Received == 0 {
			t.Fatalf("entry %d: %+v", i, e)
		}
	}
	if last := envs[n]; !last.HasDeviceTime || last.DeviceTime != 1748736000000*1e6 {
		t.Fatalf("device time not kept: %+v", last)
	}
	_ = fmt.Sprint
	_ = time.Second
}

// TestFailedWALRefusesHandshakes: once the WAL has failed (fail stop), the
// frontend is a lame duck for its drain window: device handshakes get HTTP
// 503 with Retry-After, logged once rather than per device, /healthz and
// /readyz fail, connections are closed; then Serve returns the failure, so
// that the process exits and is started again on the log reopened.
func TestFailedWALRefusesHandshakes(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	l, err := wal.Open(dir, wal.Options{Hop: "frontend"}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var logs testkit.Logs
	lg := slog.New(slog.NewTextHandler(&logs, nil))
	const drain = 3 * time.Second
	ln, mln := testkit.Listen(t), testkit.Listen(t)
	srv, err := New(Options{Listener: ln, MQTTListener: mln, ID: "fe-test", Auth: auth.Options{HS256Secrets: [][]byte{testSecret}},
		DrainWindow: drain, Gatherer: reg}, l, reg, lg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(context.Background()) }()
	ts := &testServer{addr: ln.Addr().String()}

	c := rawDial(t, ts, hsToken(t, "dev-1", nil))
	send(t, c, `{"id":1}`)
	if f, err := readFrame(t, c); err != nil || f.Type != "ack" {
		t.Fatalf("before the failure: %+v %v", f, err)
	}

	// A real failure of the WAL: its release mark cannot be written
	// (a directory where the temporary file goes), which is fail stop.
	if err := os.Mkdir(filepath.Join(dir, "released.tmp"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(1); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the WAL to fail", 5*time.Second, func() bool { return l.Err() != nil })
	failedAt := time.Now()

	get := func(path string) int {
		resp, err := http.Get("http://" + ts.addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const dials = 20
	for range dials {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c2, resp, err := websocket.Dial(ctx, ts.url(), &websocket.DialOptions{
			HTTPHeader: http.Header{"Authorization": {"Bearer " + hsToken(t, "dev-2", nil)}}})
		cancel()
		if err == nil {
			c2.CloseNow()
			t.Fatal("handshake accepted with the WAL failed")
		}
		if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("handshake with the WAL failed: %v, want HTTP 503 with Retry-After", err)
		}
		var body struct{ Type, Code string }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Code != protocol.CodeOverloaded {
			t.Fatalf("refusal body %+v (%v), want code overloaded", body, err)
		}
	}
	// MQTT devices are answered too (docs/mqtt.md): CONNACK server
	// unavailable, not a connection closed without a word.
	for _, v := range []struct{ version, code byte }{{mqtt311, mqtt311ServerUnavailable}, {mqtt5, connackUnavailable}} {
		r := dialRaw(t, mln.Addr().String(), v.version)
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "dev-3",
				UsernameFlag: true, Username: []byte("dev-3"), PasswordFlag: true, Password: []byte(hsToken(t, "dev-3", nil))}}
		r.send(&pk, pk.ConnectEncode)
		if ca := r.read(5 * time.Second); ca == nil || ca.FixedHeader.Type != packets.Connack || ca.ReasonCode != v.code {
			t.Fatalf("MQTT %d CONNECT with the WAL failed: %+v, want CONNACK %#x", v.version, ca, v.code)
		}
	}
	if time.Since(failedAt) > drain {
		t.Fatalf("the handshakes took longer than the drain window (%v); the test proves nothing", time.Since(failedAt))
	}
	if s := get("/healthz"); s != http.StatusServiceUnavailable {
		t.Fatalf("/healthz %d with the WAL failed, want 503", s)
	}
	if s := get("/readyz"); s != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d with the WAL failed, want 503", s)
	}
	if got := testutil.ToFloat64(srv.m.handshakes.WithLabelValues(reasonNotReady)); got != dials {
		t.Fatalf("handshakes_rejected{not_ready} %v, want %d", got, dials)
	}
	if n := strings.Count(logs.String(), "device handshakes refused"); n != 1 {
		t.Fatalf("%d log lines for %d refused handshakes, want 1:\n%s", n, dials, logs.String())
	}
	// The open connection is closed.
	for {
		if _, err := readFrame(t, c); err != nil {
			if websocket.CloseStatus(err) == -1 {
				t.Fatalf("connection ended without a close frame: %v", err)
			}
			break
		}
	}
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "release mark") {
			t.Fatalf("Serve returned %v, want the WAL's failure", err)
		}
		if since := time.Since(failedAt); since < drain-100*time.Millisecond {
			t.Fatalf("Serve returned %v after the failure, before the drain window", since)
		}
	case <-time.After(drain + 10*time.Second):
		t.Fatal("Serve did not return after the WAL failed")
	}
	if _, err := net.Dial("tcp", ts.addr); err == nil {
		t.Fatal("listener still open after Serve returned")
	}
}
