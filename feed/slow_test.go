package feed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
)

// smallBufferDialer gives a reader connection a 4 KiB receive buffer, so
// that a reader that stops reading backs up into the server at once rather
// than into megabytes of kernel buffers.
func smallBufferDialer() *http.Client {
	d := &net.Dialer{Control: tcpproxy.SmallBuffer}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// TestSlowReader: a reader that stops reading loses messages, is told how
// many, and is closed with 4000; meanwhile another reader gets every single
// message, in order: the slow one slows neither the pipeline nor it.
func TestSlowReader(t *testing.T) {
	fs, fe, tok, fast := startFastReader(t, feed.Options{
		ClientQueue: 1024,
		SlowGrace:   300 * time.Millisecond,
	})
	slow := dialSlowReader(t, fs.url, tok)
	slow.c.SetReadLimit(1 << 20)
	warm(t, fe, fast)

	// Batches of 100 messages of 1 KiB, each sent once the fast reader has
	// the one before last, so that the fast reader's queue never holds more
	// than two batches, while the slow reader reads nothing at all. They go
	// on until the slow reader has been dropping messages for three times its
	// grace: it has stayed too slow.
	// A bound in time, not in batches: a fast host sends 400 batches in
	// under the 900 ms the loop waits for.
	const per = 100
	pad := strings.Repeat("x", 1000)
	st := &numbered{fe: fe, fast: fast}
	var firstDrop time.Time
	deadline := time.Now().Add(60 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("after %d messages the slow reader has not been too slow for long", st.sent)
		}
		if firstDrop.IsZero() && metric(t, fs, "ingest_feed_dropped_messages_total") > 0 {
			firstDrop = time.Now()
		}
		if !firstDrop.IsZero() && time.Since(firstDrop) > 3*300*time.Millisecond {
			break
		}
		st.batch(t, per, pad)
	}
	st.check(t)
	sent := st.sent

	// The slow reader now reads: some messages, then a missed notice, then
	// the close.
	var messages, missed int
	var last frame
	var total uint64     // messages reported missed
	data, lastN := 0, -1 // the test's messages read, and the last one's n
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
			var f frame
			if err := json.Unmarshal(b, &f); err != nil {
				t.Fatal(err)
			}
			if f.Device == "dev" {
				var p struct{ N int }
				json.Unmarshal(f.Payload, &p)
				if p.N <= lastN {
					t.Fatalf("slow reader got message %d after %d", p.N, lastN)
				}
				data, lastN = data+1, p.N
			}
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
	t.Logf("slow reader: %d messages (the last %d of %d sent), %d missed notices for %d, the last for %d",
		messages, lastN, sent, missed, total, last.Count)
	// Every message meant for it is accounted for: read, or reported
	// missed (warm-up messages may add to both). It is closed as soon as
	// it has been too slow for its grace, while messages are still being
	// sent: those up to the last it read were all meant for it.
	if missed == 0 || messages >= sent || uint64(data)+total < uint64(lastN+1) {
		t.Fatalf("slow reader: %d messages, %d missed notices", messages, missed)
	}
	testkit.WaitFor(t, "the slow disconnect counted", 10*time.Second, func() bool { return metric(t, fs, "ingest_feed_disconnects_total") == 1 })
	if n := metric(t, fs, "ingest_feed_dropped_messages_total"); n == 0 || int(n)+messages > sent+1 {
		t.Errorf("%v drops counted, %d messages read of %d sent", n, messages, sent)
	}
	// The fast reader is still served.
	fe.send(t, msg{device: "after", payload: `{}`})
	if f := fast.messages(t, 1, nil)[0]; f.Device != "after" {
		t.Fatalf("fast reader got %+v", f)
	}
}

// slowOutcome is what a slow reader read before its connection ended.
type slowOutcome struct {
	data   int    // the test's messages
	lastN  int    // the last one's n
	missed uint64 // messages reported missed
	notes  int    // missed notices
	last   string // the last frame's type
	err    error  // how the connection ended
}

// readSlowly reads r after pause, one frame every interval, until the
// connection ends.
func readSlowly(r *reader, pause, interval time.Duration) slowOutcome {
	o := slowOutcome{lastN: -1}
	time.Sleep(pause)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, b, err := r.c.Read(ctx)
		cancel()
		if err != nil {
			o.err = err
			return o
		}
		var f frame
		if err := json.Unmarshal(b, &f); err != nil {
			o.err = err
			return o
		}
		o.last = f.Type
		switch {
		case f.Type == "message" && f.Device == "dev":
			var p struct{ N int }
			json.Unmarshal(f.Payload, &p)
			if p.N <= o.lastN {
				o.err = fmt.Errorf("message %d after %d", p.N, o.lastN)
				return o
			}
			o.data, o.lastN = o.data+1, p.N
		case f.Type == "missed":
			if f.Reason != "slow" || f.Count == 0 {
				o.err = fmt.Errorf("missed notice %+v", f)
				return o
			}
			o.notes++
			o.missed += f.Count
		}
		time.Sleep(interval)
	}
}

// TestSlowReaderToldBeforeWriteTimeout: what docs/protocol.md promises a
// slow reader (missed notices, a last one, then close 4000 once it has been
// dropping for its grace) holds whatever the write timeout: for a reader
// that reads, but slower than the stream, and for one that stops reading
// for three times the write timeout before it reads again. Neither is cut
// off by a write timeout; another reader gets every message in order, and
// the pipeline does not slow down.
func TestSlowReaderToldBeforeWriteTimeout(t *testing.T) {
	const writeTimeout = time.Second
	fs, fe, tok, fast := startFastReader(t, feed.Options{
		ClientQueue:  256,
		SlowGrace:    300 * time.Millisecond,
		WriteTimeout: writeTimeout,
		PingInterval: 10 * time.Second,
		PongTimeout:  10 * time.Second,
	})
	var slow []*reader
	for range 2 {
		r := dialSlowReader(t, fs.url, tok)
		t.Cleanup(func() { r.c.CloseNow() })
		slow = append(slow, r)
	}
	warm(t, fe, fast)

	// One reader reads 200 frames a second from a stream of about 1,000;
	// the other reads nothing for three write timeouts, then reads.
	outcomes := make([]slowOutcome, 2)
	var readers sync.WaitGroup
	readers.Go(func() { outcomes[0] = readSlowly(slow[0], 0, 5*time.Millisecond) })
	readers.Go(func() { outcomes[1] = readSlowly(slow[1], 3*writeTimeout, 0) })

	// Batches of 20 messages every 20 ms for four seconds, each once the
	// fast reader has the one before last.
	const per = 20
	st := &numbered{fe: fe, fast: fast}
	pad := strings.Repeat("x", 50)
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < 4*time.Second {
		<-tick.C
		st.batch(t, per, pad)
	}
	st.check(t)
	sent := st.sent
	readers.Wait()

	for i, o := range outcomes {
		name := []string{"slower reader", "stalled reader"}[i]
		t.Logf("%s: %d messages (the last %d of %d sent), %d missed notices for %d; ended with %v",
			name, o.data, o.lastN, sent, o.notes, o.missed, o.err)
		if code := closeStatus(o.err); code != feed.StatusTooSlow {
			t.Errorf("%s ended with %v (code %d), want close %d", name, o.err, code, feed.StatusTooSlow)
			continue
		}
		if o.notes == 0 || o.last != "missed" {
			t.Errorf("%s: %d missed notices, the last frame a %q; want a missed notice last", name, o.notes, o.last)
		}
		// Every message meant for it, up to the last it read, is
		// accounted for; it was closed while the stream went on.
		if uint64(o.data)+o.missed < uint64(o.lastN+1) || o.lastN+1 >= sent {
			t.Errorf("%s: %d messages and %d missed, the last read %d of %d sent", name, o.data, o.missed, o.lastN, sent)
		}
	}
	testkit.WaitFor(t, "both slow disconnects counted", 10*time.Second, func() bool { return metric(t, fs, "ingest_feed_disconnects_total") == 2 })
	if n := metricWith(t, fs, "ingest_feed_disconnects_total", "reason", "slow"); n != 2 {
		t.Errorf("%v disconnects for slowness, want 2", n)
	}
}

// metricWith returns the value of name's series whose label is value.
func metricWith(t testing.TB, fs *feedServer, name, label, value string) float64 {
	t.Helper()
	mfs, err := fs.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// startFastReader starts a middletier, a feed of it with opts (its
// source set), a frontend sending to the middletier, and a reader that
// reads everything as it comes; tok is a reader's token.
func startFastReader(t *testing.T, opts feed.Options) (fs *feedServer, fe *sender, tok string, fast *reader) {
	t.Helper()
	tr := startTier(t, middletier.Options{})
	opts.Sources = []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}}
	fs = startFeed(t, opts)
	fe = newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
	tok = token(t, "feed:read", nil)
	fast = dialReader(t, fs.url, tok, nil)
	fast.run(t)
	fast.subscribe(t, `{"type":"subscribe"}`)
	return fs, fe, tok, fast
}

// backedUp dials a reader of everything that reads nothing, and sends
// numbered batches of 1-KiB messages, which the fast reader checks, until
// the feed drops messages for it. It returns the reader and the batches'
// sender, for more.
func backedUp(t *testing.T, fs *feedServer, fe *sender, tok string, fast *reader) (*reader, *numbered) {
	t.Helper()
	r := dialSlowReader(t, fs.url, tok)
	t.Cleanup(func() { r.c.CloseNow() })
	warm(t, fe, fast)
	pad := strings.Repeat("x", 1000)
	st := &numbered{fe: fe, fast: fast}
	for metric(t, fs, "ingest_feed_dropped_messages_total") == 0 {
		st.batch(t, 20, pad)
	}
	st.check(t)
	return r, st
}

// dialSlowReader dials a reader over a connection with small socket
// buffers and subscribes it to everything, reading nothing yet.
func dialSlowReader(t *testing.T, url, tok string) *reader {
	t.Helper()
	r := dialReader(t, url, tok, &websocket.DialOptions{HTTPClient: smallBufferDialer()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.c.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe"}`)); err != nil {
		t.Fatal(err)
	}
	return r
}

// numbered sends batches of numbered messages ({"n":0,…}, {"n":1,…}…)
// and gathers what the fast reader gets of them, one batch behind: each
// batch is sent once the fast reader has the one before last.
type numbered struct {
	fe   *sender
	fast *reader
	sent int
	got  []frame
}

// batch sends per messages padded with pad, then waits for the fast
// reader to have every batch but this one.
func (n *numbered) batch(t *testing.T, per int, pad string) {
	t.Helper()
	msgs := make([]msg, per)
	for i := range msgs {
		msgs[i] = msg{device: "dev", payload: fmt.Sprintf(`{"n":%d,"pad":"%s"}`, n.sent+i, pad)}
	}
	n.fe.send(t, msgs...)
	if n.sent > 0 {
		n.got = append(n.got, n.fast.messages(t, n.sent-len(n.got), isWarm)...)
	}
	n.sent += per
}

// check waits for the fast reader to have every message sent and checks
// that it got each once, in order.
func (n *numbered) check(t *testing.T) {
	t.Helper()
	n.got = append(n.got, n.fast.messages(t, n.sent-len(n.got), isWarm)...)
	for i, f := range n.got {
		if want := fmt.Sprintf(`{"n":%d,`, i); !strings.HasPrefix(string(f.Payload), want) {
			t.Fatalf("fast reader's message %d is %.20s", i, f.Payload)
		}
	}
}

// TestSlowVerdictInSilence: a reader that stops reading is closed for
// slowness once its grace has passed since it began dropping, even when
// the stream then goes quiet: nothing more dropped, nothing written. It
// used to be judged only when a message was dropped or a frame written,
// and stayed connected, holding its queue, until the keepalive.
func TestSlowVerdictInSilence(t *testing.T) {
	fs, fe, tok, fast := startFastReader(t, feed.Options{
		ClientQueue:  64,
		SlowGrace:    300 * time.Millisecond,
		PingInterval: time.Minute,
		PongTimeout:  time.Minute,
	})
	backedUp(t, fs, fe, tok, fast)
	// Silence. The verdict comes at the grace; the slow disconnect is
	// counted once the close handshake, which the reader does not read,
	// gives up (5 s).
	took := testkit.WaitFor(t, "the slow reader closed for slowness in silence", 15*time.Second, func() bool {
		return metricWith(t, fs, "ingest_feed_disconnects_total", "reason", "slow") == 1
	})
	t.Logf("closed %v after the stream went quiet", took)
}

// TestPingFloodBounded: a reader that sends pings and reads nothing does
// not make the feed hold an ever longer backlog of pongs for it. Frames go
// out through a send buffer whose writes never block; the feed bounds what
// it queues there for its own frames (a reader that does not read is found
// out by its queue), but the pongs the websocket library writes for a
// reader's pings went into it unbounded: one connection could take as much
// of the feed's memory as it sent pings. Now, while a reader is not taking
// what it is sent, the feed answers its next ping only once it takes it
// again, and reads nothing more from it meanwhile.
func TestPingFloodBounded(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}}})
	tok := token(t, "feed:read", nil)

	// A WebSocket client by hand, over a socket with a small receive
	// buffer, that never reads after the handshake.
	d := net.Dialer{Control: tcpproxy.SmallBuffer}
	addr := strings.TrimSuffix(strings.TrimPrefix(fs.url, "ws://"), "/v1/feed")
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "GET /v1/feed HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer %s\r\n\r\n", addr, tok)
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	// Client frames are masked; a zero mask leaves the payload as it is.
	frame := func(op byte, payload string) []byte {
		return append([]byte{0x80 | op, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
	}
	if _, err := nc.Write(frame(0x1, `{"type":"subscribe"}`)); err != nil {
		t.Fatal(err)
	}
	ping := frame(0x9, strings.Repeat("p", 125))
	var burst []byte
	for range 512 {
		burst = append(burst, ping...)
	}
	// Up to 32 MiB of pings, each write within a few seconds: a feed that
	// answers every ping whether or not the reader takes the answers reads
	// them all (and holds as many bytes of pongs); one that bounds its
	// backlog stops reading, and a write waits.
	const most = 32 << 20
	sent := 0
	for sent < most {
		nc.SetWriteDeadline(time.Now().Add(3 * time.Second))
		n, err := nc.Write(burst)
		sent += n
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Logf("the feed stopped reading after %d bytes of pings", sent)
			return
		}
		if err != nil {
			t.Fatalf("after %d bytes of pings: %v", sent, err)
		}
	}
	t.Fatalf("the feed read %d bytes of pings from a reader that reads nothing, and holds their pongs", sent)
}

// TestPingAnsweredAfterLongStall: a reader that stops reading for a while,
// its socket's backlog over its bound, and pings meanwhile gets its pong
// once it reads again, however long it stopped (RFC 6455 5.5.2), within
// the 4 KiB of pongs the feed writes while it is congested. The websocket
// library gives the feed's handling of one control frame 5 s; a ping held
// back until the reader takes what it is sent was dropped after them,
// unanswered, and the reader, back to reading, waited for its pong in vain.
func TestPingAnsweredAfterLongStall(t *testing.T) {
	fs, fe, tok, fast := startFastReader(t, feed.Options{
		ClientQueue: 64,
		SlowGrace:   time.Minute,
		MaxMissed:   1 << 30,
	})
	// Until the reader's queue drops: its backlog is over its bound, and
	// stays so while it reads nothing.
	r, _ := backedUp(t, fs, fe, tok, fast)
	pong := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pong <- r.c.Ping(ctx)
	}()
	// Longer than the library's 5 s for a control frame: the least the
	// reader reads nothing for (a stalled test only makes it longer).
	time.Sleep(7 * time.Second)
	r.run(t)
	if err := <-pong; err != nil {
		t.Fatalf("the ping sent while the reader read nothing was not answered once it read again: %v", err)
	}
}
