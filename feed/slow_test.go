package feed_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/middletier"
)

// smallBufferDialer gives a reader connection a 4 KiB receive buffer, so
// that a reader that stops reading backs up into the server at once rather
// than into megabytes of kernel buffers.
func smallBufferDialer() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// TestSlowReader: a reader that stops reading loses messages, is told how
// many, and is closed with 4000; meanwhile another reader gets every single
// message, in order: the slow one slows neither the pipeline nor it.
func TestSlowReader(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{
		Sources:     []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}},
		ClientQueue: 1024,
		SlowGrace:   300 * time.Millisecond,
	})
	fe := newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
	tok := token(t, "feed:read", nil)

	fast := dialReader(t, fs.url, tok, nil)
	fast.run(t)
	fast.subscribe(t, `{"type":"subscribe"}`)
	slow := dialReader(t, fs.url, tok, &websocket.DialOptions{HTTPClient: smallBufferDialer()})
	slow.c.SetReadLimit(1 << 20)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := slow.c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe"}`)); err != nil {
		t.Fatal(err)
	}
	cancel()
	warm(t, fe, fast)

	// Batches of 100 messages of 1 KiB, each sent once the fast reader has
	// the one before last, so that the fast reader's queue never holds more
	// than two batches, while the slow reader reads nothing at all. They go
	// on until the slow reader has been dropping messages for three times its
	// grace: it has stayed too slow.
	const per, maxBatches = 100, 400
	pad := strings.Repeat("x", 1000)
	var got []frame
	var firstDrop time.Time
	sent := 0
	for b := 0; ; b++ {
		if b == maxBatches {
			t.Fatalf("after %d messages the slow reader has not been too slow for long", sent)
		}
		if firstDrop.IsZero() && metric(t, fs, "ingest_feed_dropped_messages_total") > 0 {
			firstDrop = time.Now()
		}
		if !firstDrop.IsZero() && time.Since(firstDrop) > 3*300*time.Millisecond {
			break
		}
		msgs := make([]msg, per)
		for i := range msgs {
			msgs[i] = msg{device: "dev", payload: fmt.Sprintf(`{"n":%d,"pad":"%s"}`, sent+i, pad)}
		}
		fe.send(t, msgs...)
		sent += per
		if b > 0 {
			got = append(got, fast.messages(t, sent-per-len(got), isWarm)...)
		}
	}
	got = append(got, fast.messages(t, sent-len(got), isWarm)...)
	for i, f := range got {
		if want := fmt.Sprintf(`{"n":%d,`, i); !strings.HasPrefix(string(f.Payload), want) {
			t.Fatalf("fast reader's message %d is %.20s", i, f.Payload)
		}
	}

	// The slow reader now reads: some messages, then a missed notice, then
	// the close.
	var messages, missed int
	var last frame
	var total uint64 // messages reported missed
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, b, err := slow.c.Read(ctx)
		cancel()
		if err != nil {
			if code := closeStatus(err); code != feed.StatusTooSlow {
				t.Fatalf("slow reader ended with %v (code %d), want close %d", err, code, feed.StatusTooSlow)
			}
			break
		}
		switch {
		case strings.HasPrefix(string(b), `{"type":"message"`):
			messages++
		case strings.HasPrefix(string(b), `{"type":"missed"`):
			missed++
			last = frame{}
			fmt.Sscanf(string(b), `{"type":"missed","count":%d`, &last.Count)
			total += last.Count
			if !strings.Contains(string(b), `"reason":"slow"`) || last.Count == 0 {
				t.Fatalf("missed notice %s", b)
			}
		case strings.HasPrefix(string(b), `{"type":"subscribed"`):
		default:
			t.Fatalf("slow reader got %s", b)
		}
	}
	t.Logf("slow reader: %d messages, %d missed notices, the last for %d", messages, missed, last.Count)
	// Every message is accounted for: read, or reported missed (warm-up
	// messages may add to both).
	if missed == 0 || messages >= sent || uint64(messages)+total < uint64(sent) {
		t.Fatalf("slow reader: %d messages, %d missed notices", messages, missed)
	}
	waitFor(t, "the slow disconnect counted", func() bool { return metric(t, fs, "ingest_feed_disconnects_total") == 1 })
	if n := metric(t, fs, "ingest_feed_dropped_messages_total"); n == 0 || int(n)+messages > sent+1 {
		t.Errorf("%v drops counted, %d messages read of %d sent", n, messages, sent)
	}
	// The fast reader is still served.
	fe.send(t, msg{device: "after", payload: `{}`})
	if f := fast.messages(t, 1, nil)[0]; f.Device != "after" {
		t.Fatalf("fast reader got %+v", f)
	}
}
