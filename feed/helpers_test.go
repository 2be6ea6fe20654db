package feed_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/wal"
)

var testSecret = []byte("feed-test-secret-0123456789abcdef")

// tier is a real middletier on loopback over a real WAL, with a feed socket.
type tier struct {
	*testkit.Middletier
	addrs middletier.Addrs
	reg   *prometheus.Registry
}

// startTier runs a tier until the test ends. Its id is "mt-0" unless opts
// names it.
func startTier(t testing.TB, opts middletier.Options) *tier {
	t.Helper()
	opts.FeedAddr = "tcp://127.0.0.1:0"
	m := testkit.StartMiddletier(t, t.TempDir(), opts, wal.Options{})
	return &tier{Middletier: m, addrs: m.Addrs, reg: m.Reg}
}

// sender sends real batches of envelopes to a middletier, as the uplink
// does.
type sender struct{ *testkit.Frontend }

func newSender(t testing.TB, endpoint, origin string) *sender {
	t.Helper()
	return &sender{testkit.NewFrontend(t, endpoint, origin)}
}

// msg is one device message to send.
type msg struct {
	device  string
	payload string
	ts      int64 // device time, ms; 0 for none
}

// sendAsync sends msgs as one batch without waiting for the ack.
func (f *sender) sendAsync(t testing.TB, msgs ...msg) { f.SendAsync(t, envelopes(msgs)...) }

// send sends msgs as one batch and waits until the middletier has made them
// durable.
func (f *sender) send(t testing.TB, msgs ...msg) { f.Send(t, envelopes(msgs)...) }

func envelopes(msgs []msg) [][]byte {
	entries := make([][]byte, len(msgs))
	now := time.Now().UnixNano()
	for i, m := range msgs {
		e := envelope.Envelope{Frontend: "fe-test", Device: m.device, Received: now, Payload: []byte(m.payload)}
		if m.ts != 0 {
			e.DeviceTime, e.HasDeviceTime = m.ts*1e6, true
		}
		entries[i] = envelope.AppendEncode(nil, &e)
	}
	return entries
}

// feedServer is a feed.Server serving on loopback.
type feedServer struct {
	s    *feed.Server
	url  string
	reg  *prometheus.Registry
	stop func()
}

func startFeed(t testing.TB, opts feed.Options) *feedServer {
	t.Helper()
	if !opts.InsecureNoAuth && !opts.Auth.Configured() {
		opts.Auth = auth.Options{HS256Secrets: [][]byte{testSecret}}
	}
	reg := prometheus.NewRegistry()
	ln := testkit.Listen(t)
	opts.Listener = ln
	s, err := feed.New(opts, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := testkit.Go(t, "feed", s.Run)
	fs := &feedServer{s: s, url: "ws://" + ln.Addr().String() + "/v1/feed", reg: reg, stop: func() { stop() }}
	testkit.WaitFor(t, "feed ready", 10*time.Second, s.Ready)
	return fs
}

func token(t testing.TB, scope any, mod func(*jwt.MapClaims)) string {
	t.Helper()
	c := jwt.MapClaims{"sub": "dashboard-1", "exp": time.Now().Add(time.Hour).Unix()}
	if scope != nil {
		c["scope"] = scope
	}
	if mod != nil {
		mod(&c)
	}
	return testkit.SignHS256(t, testSecret, c)
}

// frame is any server frame.
type frame struct {
	Type       string            `json:"type"`
	Device     string            `json:"device"`
	Time       int64             `json:"time"`
	Received   int64             `json:"received"`
	Payload    json.RawMessage   `json:"payload"`
	Command    json.RawMessage   `json:"command"`
	Labels     map[string]string `json:"labels"`
	Middletier string            `json:"middletier"`
	Seq        uint64            `json:"seq"`
	Origin     string            `json:"origin"`
	Index      uint64            `json:"index"`
	Count      uint64            `json:"count"`
	Reason     string            `json:"reason"`
	From       uint64            `json:"from"`
	To         uint64            `json:"to"`
	Code       string            `json:"code"`
	Message    string            `json:"message"`
	Live       map[string]uint64 `json:"live"`
}

// reader is a dashboard connection whose frames arrive on a channel.
type reader struct {
	c      *websocket.Conn
	frames chan frame
	err    error // set before frames is closed
}

func dialReader(t testing.TB, url, tok string, opts *websocket.DialOptions) *reader {
	t.Helper()
	if opts == nil {
		opts = &websocket.DialOptions{}
	}
	if tok != "" {
		opts.HTTPHeader = http.Header{"Authorization": {"Bearer " + tok}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(1 << 20)
	return &reader{c: c, frames: make(chan frame, 1<<16)}
}

// run starts reading frames into r.frames.
func (r *reader) run(t testing.TB) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(r.frames)
		for {
			_, b, err := r.c.Read(context.Background())
			if err != nil {
				r.err = err
				return
			}
			var f frame
			if err := json.Unmarshal(b, &f); err != nil {
				r.err = fmt.Errorf("frame %s: %w", b, err)
				return
			}
			r.frames <- f
		}
	}()
	t.Cleanup(func() { r.c.CloseNow(); <-done })
}

func (r *reader) subscribe(t testing.TB, sub string) frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.c.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
		t.Fatal(err)
	}
	f := r.next(t)
	if f.Type != "subscribed" {
		t.Fatalf("answer to subscribe: %+v", f)
	}
	return f
}

func (r *reader) next(t testing.TB) frame {
	t.Helper()
	select {
	case f, ok := <-r.frames:
		if !ok {
			t.Fatalf("connection ended: %v", r.err)
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame within 10s")
	}
	return frame{}
}

// messages reads until it has n device messages, failing on anything else
// except frames skip accepts.
func (r *reader) messages(t testing.TB, n int, skip func(frame) bool) []frame {
	t.Helper()
	var out []frame
	for len(out) < n {
		f := r.next(t)
		switch {
		case f.Type == "message" && (skip == nil || !skip(f)):
			out = append(out, f)
		case skip != nil && skip(f):
		default:
			t.Fatalf("unexpected frame %+v after %d messages", f, len(out))
		}
	}
	return out
}

// warm sends messages from device "warm-up" until r sees one: the SUB
// socket's subscription reaches the middletier's PUB asynchronously.
func warm(t testing.TB, fe *sender, r *reader) {
	t.Helper()
	testkit.WaitFor(t, "the feed to deliver a message", 10*time.Second, func() bool {
		fe.send(t, msg{device: "warm-up", payload: `{"warm":true}`})
		select {
		case f := <-r.frames:
			if f.Type == "message" && f.Device == "warm-up" && f.Origin == fe.Origin {
				return true
			}
			if !isWarm(f) {
				t.Fatalf("unexpected frame while warming up: %+v", f)
			}
		case <-time.After(50 * time.Millisecond):
		}
		return false
	})
}

func isWarm(f frame) bool { return f.Type == "message" && f.Device == "warm-up" }

func writeRegistry(t testing.TB, content string) *registry.Registry {
	t.Helper()
	p := filepath.Join(t.TempDir(), "devices.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := registry.New(p, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func closeStatus(err error) websocket.StatusCode {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// metric sums every series of a metric family of the feed; a histogram
// counts its observations.
func metric(t testing.TB, fs *feedServer, name string) float64 {
	t.Helper()
	return testkit.Metric(t, fs.reg, name)
}

// fakeAddrListener is a loopback listener that reports a non-loopback
// address.
func fakeAddrListener(t testing.TB) net.Listener {
	ln := testkit.Listen(t)
	t.Cleanup(func() { ln.Close() })
	return fakeAddr{ln}
}

type fakeAddr struct{ net.Listener }

func (fakeAddr) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 8080} }
