package frontend

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

// TestDeviceThatStopsReading: a device that keeps sending but reads
// nothing fills its socket with acks the server cannot write. The server
// stops reading it (MaxPendingBytes), so its own writes stall; another
// device is served as usual meanwhile; and once a write of an ack has
// waited WriteTimeout the server closes the silent device's connection
// (write_failed), which frees its place.
func TestDeviceThatStopsReading(t *testing.T) {
	// The other device's exchange must end before the silent one's close:
	// a write timeout that leaves it seconds, even on a slow machine.
	const writeTimeout = 10 * time.Second
	ts := startServer(t, Options{WriteTimeout: writeTimeout, Rate: 1e6, Burst: 1e6, MaxPendingBytes: 64 << 10}, wal.Options{})
	// The other device connects first, so that only its messages are
	// left for the time the silent one is stuck.
	c := rawDial(t, ts, hsToken(t, "talkative", nil))

	// The silent device reads the handshake's answer, then nothing: a
	// small receive buffer, set before the connection is made, so that
	// acks fill it soon.
	d := net.Dialer{Control: tcpproxy.SmallBuffer}
	nc, err := d.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	req := "GET /v1/ingest HTTP/1.1\r\nHost: " + ts.addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Authorization: Bearer " + hsToken(t, "silent", nil) + "\r\n\r\n"
	if _, err := nc.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: HTTP %d", resp.StatusCode)
	}

	// Batches of 100 messages: each ack names 100 ids.
	stalled := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for n := 0; ; n++ {
			var b strings.Builder
			b.WriteByte('[')
			for k := range 100 {
				if k > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `{"id":"m-%d-%d","v":%d}`, n, k, k)
			}
			b.WriteByte(']')
			// Stalled: a write the server has not made room for in a
			// second, its reading stopped.
			nc.SetWriteDeadline(time.Now().Add(time.Second))
			_, err := nc.Write(maskedText([]byte(b.String())))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Left as it is, its socket full, until the server
				// ends it.
				close(stalled)
				return
			}
			if err != nil {
				done <- fmt.Errorf("write before the stall: %w", err)
				return
			}
		}
	}()
	select {
	case <-stalled:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("the silent device's writes never stalled")
	}
	if got := gatherCloses(t, ts)[reasonWriteFailed]; got != 0 {
		t.Fatalf("%v write_failed closes as the silent device stalled, want 0", got)
	}

	// The other device meanwhile: ten messages, ten acks.
	for i := range 10 {
		send(t, c, payload("talkative", i))
		f, err := readFrame(t, c)
		if err != nil || f.Type != "ack" || len(f.IDs) != 1 {
			t.Fatalf("talkative message %d: frame %+v, err %v", i, f, err)
		}
	}
	if got := gatherCloses(t, ts)[reasonWriteFailed]; got != 0 {
		t.Fatalf("the silent device was closed (%v write_failed) before the other device's acks: the test did not run them while it was stuck", got)
	}

	// Then the server gives up on the silent device.
	testkit.WaitFor(t, "the silent device closed for write_failed", 3*writeTimeout, func() bool {
		return gatherCloses(t, ts)[reasonWriteFailed] == 1
	})
	testkit.WaitFor(t, "one connection left", 10*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.connections) == 1
	})
	// Its socket is closed: a read gets what was buffered, then the end.
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	for {
		if _, err := nc.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the silent device's socket is still open after its close was counted")
			}
			break
		}
	}
}

// maskedText is p as one masked text frame from a client.
func maskedText(p []byte) []byte {
	mask := [4]byte{1, 2, 3, 4}
	var f []byte
	switch n := len(p); {
	case n < 126:
		f = []byte{0x81, 0x80 | byte(n)}
	case n < 1<<16:
		f = []byte{0x81, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		f = []byte{0x81, 0x80 | 127, 0, 0, 0, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
	}
	f = append(f, mask[:]...)
	for i, b := range p {
		f = append(f, b^mask[i%4])
	}
	return f
}
