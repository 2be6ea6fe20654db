package frontend

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

// TestStalledDeviceWriteFails: a device that sends and never reads fills
// its socket with the server's error frames; the write that has to wait
// misses Options.WriteTimeout, and the server ends the connection as
// write_failed. Over plain TCP that bound comes from the socket's own
// writer (hijack.Bounded), not from a deadline the frontend sets.
func TestStalledDeviceWriteFails(t *testing.T) {
	ts := startServer(t, Options{WriteTimeout: 300 * time.Millisecond}, wal.Options{})
	d := net.Dialer{Control: tcpproxy.SmallBuffer}
	h := http.Header{}
	h.Set("Authorization", "Bearer "+hsToken(t, "stalled-1", nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, ts.url(), &websocket.DialOptions{
		HTTPHeader: h,
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}},
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.CloseNow()

	// Frames that are not JSON, each answered with an error frame, and
	// never a read: the server's writes back fill the socket.
	sendCtx, stopSending := context.WithCancel(context.Background())
	defer stopSending()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		bad := []byte("not json")
		for i := 0; i < 1_000_000; i++ {
			if c.Write(sendCtx, websocket.MessageText, bad) != nil {
				return // the server closed, or the test is done
			}
		}
	}()
	testkit.WaitFor(t, "the stalled device's connection ended as write_failed", 60*time.Second, func() bool {
		return testkit.Metric(t, ts.reg, "ingest_frontend_closes_total", "reason", "write_failed") == 1
	})
	stopSending()
	<-sent
}
