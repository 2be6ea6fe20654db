package frontend

import (
	"context"
	"testing"
	"time"
	"unsafe"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

// TestEmptyFramesAreBoundedWhileTheWALWaits: frames that carry no message
// (an empty batch, []) take no rate-limit token and no envelope bytes, but
// each is queued for its ack. While the flusher waits (a slow fsync here;
// an ack write to a device that reads slowly does the same, for up to
// WriteTimeout each), the frames queued must stay within MaxPendingBytes
// like envelopes do: the reader stops reading instead.
func TestEmptyFramesAreBoundedWhileTheWALWaits(t *testing.T) {
	const maxPending = 4096
	ts := startServer(t, Options{MaxPendingBytes: maxPending}, wal.Options{CommitInterval: 3 * time.Second})
	nc := rawDial(t, ts, hsToken(t, "empty", nil))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A first message commits at once, the second waits for the commit
	// interval: the flusher is busy with it for seconds.
	for i := range 2 {
		if err := nc.Write(ctx, websocket.MessageText, []byte(`{"v":1}`)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if f, err := readFrame(t, nc); err != nil || f.Type != "ack" {
				t.Fatalf("first ack: %+v %v", f, err)
			}
		}
	}
	var c *conn
	ts.srv.mu.Lock()
	for se := range ts.srv.conns {
		c = se.(*conn)
	}
	ts.srv.mu.Unlock()
	// Empty batches for a second, as fast as they go (the server's
	// reading stops them once it stops reading).
	wctx, wcancel := context.WithTimeout(ctx, time.Second)
	defer wcancel()
	sent := 0
	for nc.Write(wctx, websocket.MessageText, []byte(`[]`)) == nil {
		sent++
	}
	c.mu.Lock()
	frames := 0
	if c.pend != nil {
		frames = len(c.pend.frames)
	}
	c.mu.Unlock()
	t.Logf("%d empty frames sent; %d queued at the server", sent, frames)
	if size := frames * int(unsafe.Sizeof(pframe{})); size > 2*maxPending {
		t.Fatalf("%d frames (%d bytes of frame records) wait for the flusher, over MaxPendingBytes %d", frames, size, maxPending)
	}
}

// TestStalledBodyOnTheDevicePort: a request to the device port whose body
// stops part way (here to /healthz, which reads none) is answered, and its
// connection closed, within HandshakeTimeout, as its headers would be.
// net/http reads what is left of a body before it answers, with no
// deadline of its own: the request used to be held, with its goroutine and
// connection, for as long as the client kept the connection open.
func TestStalledBodyOnTheDevicePort(t *testing.T) {
	ts := startServer(t, Options{HandshakeTimeout: 300 * time.Millisecond}, wal.Options{})
	head := "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
	if _, _, err := testkit.StalledBody(t, ts.addr, head, 5*time.Second); err != nil {
		t.Fatalf("no answer 5 s after the body stalled: %v", err)
	}
}
