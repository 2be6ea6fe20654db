package frontend

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

type wantErr struct {
	code  string
	seq   uint64
	index int    // -1: none
	id    string // raw JSON, "" = none
	retry bool
}

// TestErrorAndCloseCodes has one case per error code and close code and checks
// the connection's fate after each: still open (a following message is
// acknowledged) or closed with a given code.
func TestErrorAndCloseCodes(t *testing.T) {
	cases := []struct {
		name   string
		opts   Options
		wopts  wal.Options
		token  func(t *testing.T) (tok string, expires time.Time)
		frames []string // sent one at a time, each answered before the next
		binary bool     // send the first frame as a binary frame
		errs   []wantErr
		close  websocket.StatusCode // 0: stays open
		stored int                  // envelopes in the WAL at the end
	}{
		{name: "invalid_json", frames: []string{`{"id":1,`}, errs: []wantErr{{protocol.CodeInvalidJSON, 1, -1, "", false}}},
		{name: "invalid_json binary frame", frames: []string{`{"id":1}`}, binary: true, errs: []wantErr{{protocol.CodeInvalidJSON, 1, -1, "", false}}},
		{name: "invalid_message scalar frame", frames: []string{`"hello"`}, errs: []wantErr{{protocol.CodeInvalidMessage, 1, -1, "", false}}},
		{name: "invalid_message batch element", frames: []string{`[{"id":1},7]`},
			errs: []wantErr{{protocol.CodeInvalidMessage, 1, 1, "", false}}, stored: 1},
		{name: "too_large message", opts: Options{MaxMessageBytes: 64},
			frames: []string{`{"id":"big","pad":"` + strings.Repeat("x", 100) + `"}`},
			errs:   []wantErr{{protocol.CodeTooLarge, 1, -1, `"big"`, false}}},
		{name: "too_large batch", opts: Options{MaxBatchMessages: 2}, frames: []string{`[{},{},{}]`},
			errs: []wantErr{{protocol.CodeTooLarge, 1, -1, "", false}}},
		{name: "too_large for the WAL bound", wopts: wal.Options{MaxEntries: 2}, frames: []string{`[{"id":1},{"id":2},{"id":3}]`},
			errs: []wantErr{{protocol.CodeTooLarge, 1, -1, "", false}}},
		{name: "too_many_fields", opts: Options{MaxFields: 2}, frames: []string{`[{"id":1,"a":1,"b":2},{"id":2,"a":1,"b":{"c":2,"d":3}}]`},
			errs: []wantErr{{protocol.CodeTooManyFields, 1, 1, "2", false}}, stored: 1},
		{name: "invalid_field", frames: []string{`{"id":"n","__name__":"up"}`, `{"id":"s","v":"a\u0000b"}`},
			errs: []wantErr{{protocol.CodeInvalidField, 1, -1, `"n"`, false}, {protocol.CodeInvalidField, 2, -1, `"s"`, false}}},
		{name: "bad_timestamp", frames: []string{`[{"id":1,"ts":1748736000000},{"id":2,"ts":"yesterday"}]`},
			errs: []wantErr{{protocol.CodeBadTimestamp, 1, 1, "2", false}}, stored: 1},
		{name: "device_mismatch", frames: []string{`{"id":"m","device":"dev-2"}`, `{"id":"n","device":"dev-1"}`},
			errs: []wantErr{{protocol.CodeDeviceMismatch, 1, -1, `"m"`, false}}, stored: 1},
		{name: "rate_limited closes 1013", opts: Options{Rate: 1, Burst: 2, MaxBatchMessages: 2},
			frames: []string{`{"id":1}`, `{"id":2}`, `{"id":3}`},
			errs:   []wantErr{{protocol.CodeRateLimited, 3, -1, "", true}}, close: websocket.StatusTryAgainLater, stored: 2},
		{name: "overloaded closes 1013", wopts: wal.Options{MaxEntries: 2},
			frames: []string{`{"id":1}`, `{"id":2}`, `{"id":3}`},
			errs:   []wantErr{{protocol.CodeOverloaded, 3, -1, "", true}}, close: websocket.StatusTryAgainLater, stored: 2},
		{name: "unauthorized when the token expires closes 1008",
			token: func(t *testing.T) (string, time.Time) {
				exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
				return hsToken(t, "dev-1", func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(exp) }), exp
			},
			frames: []string{`{"id":1}`},
			errs:   []wantErr{{protocol.CodeUnauthorized, 1, -1, "", false}}, close: websocket.StatusPolicyViolation},
		{name: "frame over the read limit closes 1009", opts: Options{MaxFrameBytes: 1024, MaxMessageBytes: 512},
			frames: []string{`{"pad":"` + strings.Repeat("x", 2000) + `"}`}, close: websocket.StatusMessageTooBig},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, tc.opts, tc.wopts)
			tok, exp := hsToken(t, "dev-1", nil), time.Time{}
			if tc.token != nil {
				tok, exp = tc.token(t)
			}
			c := rawDial(t, ts, tok)
			if !exp.IsZero() {
				// The token must be past its expiry when the frame arrives.
				testkit.WaitFor(t, "token expiry", 5*time.Second, func() bool { return time.Now().After(exp) })
			}
			var (
				got      []wantErr
				closeErr error
			)
		frames:
			for i, f := range tc.frames {
				seq := uint64(i + 1)
				typ := websocket.MessageText
				if tc.binary && i == 0 {
					typ = websocket.MessageBinary
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := c.Write(ctx, typ, []byte(f))
				cancel()
				if err != nil {
					closeErr = err
					break
				}
				for {
					of, err := readFrame(t, c)
					if err != nil {
						closeErr = err
						break frames
					}
					if of.Type == "ack" {
						if of.Seq > seq {
							t.Fatalf("ack %d for frame %d", of.Seq, seq)
						}
						if of.Seq == seq {
							break
						}
						continue
					}
					we := wantErr{code: of.Code, seq: of.Seq, index: -1, id: string(of.ID), retry: of.RetryAfterMS > 0}
					if of.Index != nil {
						we.index = *of.Index
					}
					if of.Message == "" {
						t.Errorf("error frame %+v has no message", of)
					}
					got = append(got, we)
				}
			}
			if len(got) != len(tc.errs) {
				t.Fatalf("error frames %+v, want %+v", got, tc.errs)
			}
			for i := range got {
				if got[i] != tc.errs[i] {
					t.Errorf("error frame %d: %+v, want %+v", i, got[i], tc.errs[i])
				}
			}
			if tc.close == 0 {
				if closeErr != nil {
					t.Fatalf("connection ended: %v", closeErr)
				}
				// Fate: still open, and the next message is acknowledged.
				seq := uint64(len(tc.frames) + 1)
				send(t, c, `{"id":"probe"}`)
				for {
					of, err := readFrame(t, c)
					if err != nil {
						t.Fatalf("after the error the connection ended: %v", err)
					}
					if of.Type == "ack" && of.Seq == seq {
						if len(of.IDs) != 1 || string(of.IDs[0]) != `"probe"` {
							t.Fatalf("ack %+v does not name the probe", of)
						}
						break
					}
				}
				tc.stored++
			} else {
				if closeErr == nil {
					_, closeErr = readFrame(t, c)
				}
				if got := websocket.CloseStatus(closeErr); got != tc.close {
					t.Fatalf("close status %d (%v), want %d", got, closeErr, tc.close)
				}
			}
			for _, e := range tc.errs {
				if testutil.ToFloat64(ts.srv.m.rejected.WithLabelValues(e.code)) < 1 {
					t.Errorf("rejected{code=%q} not counted", e.code)
				}
			}
			c.CloseNow()
			ts.stop(t)
			if n := len(testkit.WALEnvelopes(t, ts.dir)); n != tc.stored {
				t.Fatalf("%d envelopes stored, want %d", n, tc.stored)
			}
		})
	}
}

// TestHandshakeRefusals covers what is refused before the upgrade.
func TestHandshakeRefusals(t *testing.T) {
	ts := startServer(t, Options{MaxConnections: 1, OriginPatterns: []string{"dash.example.com"}}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)
	dial := func(h http.Header) (*websocket.Conn, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.Set("Authorization", "Bearer "+tok)
		c, resp, err := websocket.Dial(ctx, ts.url(), &websocket.DialOptions{HTTPHeader: h})
		if err != nil {
			if resp == nil {
				t.Fatalf("dial: %v", err)
			}
			return nil, resp.StatusCode
		}
		return c, 101
	}
	if _, status := dial(http.Header{"Origin": {"https://evil.example.com"}}); status != http.StatusForbidden {
		t.Fatalf("foreign origin: HTTP %d, want 403", status)
	}
	c, status := dial(http.Header{"Origin": {"https://dash.example.com"}})
	if status != 101 {
		t.Fatalf("allowed origin: HTTP %d", status)
	}
	defer c.CloseNow()
	if _, status := dial(http.Header{}); status != http.StatusServiceUnavailable {
		t.Fatalf("over MaxConnections: HTTP %d, want 503", status)
	}
	if got := testutil.ToFloat64(ts.srv.m.handshakes.WithLabelValues("too_many_connections")); got != 1 {
		t.Fatalf("handshakes_rejected{too_many_connections} = %v", got)
	}
}

// TestReplacedConnection: a device's newer connection closes its older one
// with 1008, after the older one's messages were acknowledged.
func TestReplacedConnection(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)
	old := rawDial(t, ts, tok)
	send(t, old, `{"id":1}`)
	if f, err := readFrame(t, old); err != nil || f.Type != "ack" {
		t.Fatalf("first connection: %+v %v", f, err)
	}
	// The old connection must keep reading for its close handshake.
	closed := make(chan error, 1)
	go func() {
		_, err := readFrame(t, old)
		closed <- err
	}()
	nc := rawDial(t, ts, tok)
	send(t, nc, `{"id":2}`)
	if f, err := readFrame(t, nc); err != nil || f.Type != "ack" || f.Seq != 1 {
		t.Fatalf("second connection: %+v %v", f, err)
	}
	if err := <-closed; websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("older connection ended with %v, want 1008", err)
	}
}

// TestCommandResultNotNumberedWithoutCommands: a command_result frame is
// not a data frame, on a frontend that serves no commands (no Downlink)
// too: the device does not number it (protocol.md, client.ErrNotData), so
// the server must not either. A device answers on whichever connection it
// holds when its answer is ready, which after a reconnect may be to a
// frontend without command homes. Numbered there, every later ack named
// the device's frame after the one it covered: the device took a frame
// not yet appended for durable.
func TestCommandResultNotNumberedWithoutCommands(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	c := rawDial(t, ts, hsToken(t, "dev-1", nil))
	send(t, c, `{"__type":"command_result","id":"c1","status":"ok"}`)
	send(t, c, `{"id":1}`) // the device's frame 1
	for {
		f, err := readFrame(t, c)
		if err != nil {
			t.Fatalf("connection ended: %v", err)
		}
		if f.Type == "error" {
			if f.Seq != 0 {
				t.Fatalf("the command_result was answered as data frame %d: %+v", f.Seq, f)
			}
			continue
		}
		if f.Type != "ack" || f.Seq != 1 || len(f.IDs) != 1 || string(f.IDs[0]) != "1" {
			t.Fatalf("ack %+v, want seq 1 naming id 1: the command_result was numbered", f)
		}
		break
	}
}

// TestCommandResultAfterExpiry: a command_result frame that comes after
// the device's token has expired is answered like any frame then
// (protocol.md): an unauthorized error frame, and the connection closed
// with 1008. It used to be taken as an answer (handed to the command's
// home; here, without homes, refused as invalid_message) for as long as
// the connection lasted past the expiry. The frame is sent within
// expiryGrace of the expiry, before the idle close.
func TestCommandResultAfterExpiry(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	exp := time.Now().Add(1500 * time.Millisecond).Truncate(time.Second).Add(time.Second)
	c := rawDial(t, ts, hsToken(t, "dev-1", func(rc *jwt.RegisteredClaims) { rc.ExpiresAt = jwt.NewNumericDate(exp) }))
	time.Sleep(time.Until(exp.Add(50 * time.Millisecond)))
	send(t, c, `{"__type":"command_result","id":"c1","status":"ok"}`)
	for {
		f, err := readFrame(t, c)
		if err != nil {
			if st := websocket.CloseStatus(err); st != websocket.StatusPolicyViolation {
				t.Fatalf("read: %v, want the close 1008", err)
			}
			return
		}
		if f.Type == "error" && f.Code != protocol.CodeUnauthorized {
			t.Fatalf("an answer after the token's expiry got %+v, want the error unauthorized", f)
		}
	}
}

// TestPingTimeout: a peer that never answers pings is closed.
func TestPingTimeout(t *testing.T) {
	ts := startServer(t, Options{PingInterval: 100 * time.Millisecond, PongTimeout: 100 * time.Millisecond}, wal.Options{})
	c := rawDial(t, ts, hsToken(t, "dev-1", nil))
	_ = c // never read: pongs are only sent by a reading peer
	testkit.WaitFor(t, "ping timeout close", 5*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(reasonPingTimeout)) == 1
	})
	// A peer that reads (and so answers pings) stays connected.
	live := rawDial(t, ts, hsToken(t, "dev-2", nil))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, _, err := live.Read(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reading peer: %v, want it to stay open", err)
	}
}

// TestDrain: shutdown closes connections with the configured code after
// acknowledging what they sent, and readiness turns false.
func TestDrain(t *testing.T) {
	for _, code := range []websocket.StatusCode{websocket.StatusGoingAway, websocket.StatusServiceRestart} {
		t.Run(code.String(), func(t *testing.T) {
			ts := startServer(t, Options{ShutdownCode: code}, wal.Options{})
			conns := make([]*websocket.Conn, 5)
			for i := range conns {
				conns[i] = rawDial(t, ts, hsToken(t, "dev-"+string(rune('a'+i)), nil))
				send(t, conns[i], `{"id":1}`)
				if f, err := readFrame(t, conns[i]); err != nil || f.Type != "ack" {
					t.Fatalf("ack: %+v %v", f, err)
				}
			}
			resp, err := http.Get("http://" + ts.addr + "/readyz")
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("readyz before drain: %v %v", resp, err)
			}
			resp.Body.Close()
			errs := make(chan error, len(conns))
			for _, c := range conns {
				go func() { _, err := readFrame(t, c); errs <- err }()
			}
			ts.cancel()
			for range conns {
				if err := <-errs; websocket.CloseStatus(err) != code {
					t.Fatalf("closed with %v, want %d", err, code)
				}
			}
			if ts.srv.Ready() {
				t.Fatal("still ready while draining")
			}
			ts.stop(t)
			if got := testutil.ToFloat64(ts.srv.m.closes.WithLabelValues(reasonDrain)); got != 5 {
				t.Fatalf("closes{drain} = %v", got)
			}
		})
	}
}

// TestDrainBesideHTTPRequests: a plain HTTP request still in flight at
// shutdown (here a handler of Options.Handlers that has not answered, as a
// /debug/pprof/profile?seconds=30 of --debug.pprof does not for 30 s) does
// not hold up the devices' drain: they are closed at once, while the
// request is still given the drain window to finish. The drain used to
// begin only once such requests had ended or the drain window had passed,
// so that devices were closed over twice the drain window.
func TestDrainBesideHTTPRequests(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
	})
	ts := startServer(t, Options{DrainWindow: time.Minute, Handlers: map[string]http.Handler{"/slow": slow}}, wal.Options{})
	c := rawDial(t, ts, hsToken(t, "dev-a", nil))
	send(t, c, `{"id":1}`)
	if f, err := readFrame(t, c); err != nil || f.Type != "ack" {
		t.Fatalf("ack: %+v %v", f, err)
	}
	answered := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + ts.addr + "/slow")
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	<-entered
	ts.cancel()
	_, err := readFrame(t, c) // within readFrame's 10 s, not the drain window's minute
	close(release)
	if websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("device closed with %v while an HTTP request was in flight, want 1001 at once", err)
	}
	if err := <-answered; err != nil {
		t.Errorf("the request in flight at shutdown: %v, want it answered", err)
	}
	ts.stop(t)
}

// TestHTTPRequestsEndWithRun: a plain HTTP request still running once the
// drain window has passed (a /debug/pprof/profile?seconds=30 of
// --debug.pprof past a shorter window, a client that does not read its
// answer) has its connection closed, which ends its context, and Run
// returns only once its handler has. Run used to return with the handler
// still running and its connection open, for as long as the client kept
// it.
func TestHTTPRequestsEndWithRun(t *testing.T) {
	entered := make(chan struct{})
	var finished atomic.Bool
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
		finished.Store(true)
	})
	ts := startServer(t, Options{DrainWindow: 100 * time.Millisecond, Handlers: map[string]http.Handler{"/slow": slow}}, wal.Options{})
	asked := make(chan struct{})
	go func() {
		defer close(asked)
		if resp, err := http.Get("http://" + ts.addr + "/slow"); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	ts.stop(t)
	if !finished.Load() {
		t.Fatal("Run returned with the handler of a plain HTTP request still running")
	}
	<-asked
}

// TestDrainWaitsForHandshakes: a device's handshake still in flight when
// the drain begins is refused, and Run waits for the handler that refuses
// it. The handler used to upgrade the connection and then close it with
// 1001 after Run had returned: a close handshake of up to 5 s with a
// device that does not answer, on a goroutine Run did not wait for.
func TestDrainWaitsForHandshakes(t *testing.T) {
	var once sync.Once
	checking, release := make(chan struct{}), make(chan struct{})
	revoked := func(device string) bool {
		if device == "dev-late" {
			// The handshake's first look: held until the drain has begun.
			once.Do(func() { close(checking); <-release })
		}
		return false
	}
	ts := startServer(t, Options{Revoked: revoked}, wal.Options{})
	dialed := make(chan *websocket.Conn, 1)
	go func() {
		h := http.Header{"Authorization": {"Bearer " + hsToken(t, "dev-late", nil)}}
		c, _, err := websocket.Dial(context.Background(), ts.url(), &websocket.DialOptions{HTTPHeader: h})
		if err != nil {
			c = nil // refused before the upgrade
		}
		dialed <- c // and not read: the device does not answer a close
	}()
	<-checking
	ts.cancel()
	testkit.WaitFor(t, "the drain to begin", 10*time.Second, func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		return ts.srv.draining
	})
	close(release)
	if c := <-dialed; c != nil {
		defer c.CloseNow()
	}
	ts.stop(t)
	if testkit.Blocked("frontend.(*Server).handleIngest", "") {
		t.Fatal("a handshake's handler still runs after Run has returned")
	}
}

// TestReceiveStamps: messages without ts take the receive time as their
// time, and the stores keep one sample per series and millisecond, so a
// device's stamps are distinct milliseconds, in order, across frames and
// across a reconnect; a message with ts keeps its ts and its true receive
// time.
func TestReceiveStamps(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	tok := hsToken(t, "dev-1", nil)
	before := time.Now().UnixNano()
	var batch []string
	for i := range 50 {
		batch = append(batch, fmt.Sprintf(`{"id":%d}`, i))
	}
	batch[10] = `{"id":10,"ts":1700000000000}`
	frames := []string{"[" + strings.Join(batch, ",") + "]", `{"id":50}`, `[{"id":51},{"id":52}]`}
	for round := range 2 { // the second on a new connection
		c := rawDial(t, ts, tok)
		for i, f := range frames {
			send(t, c, f)
			for {
				of, err := readFrame(t, c)
				if err != nil {
					t.Fatal(err)
				}
				if of.Type == "ack" && of.Seq == uint64(i+1) {
					break
				}
				if of.Type != "ack" {
					t.Fatalf("round %d: %+v", round, of)
				}
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	after := time.Now().UnixNano()
	ts.stop(t)
	envs := testkit.WALEnvelopes(t, ts.dir)
	if len(envs) != 106 {
		t.Fatalf("%d envelopes, want 106", len(envs))
	}
	last := int64(0)
	for i, e := range envs {
		if e.HasDeviceTime {
			if i%53 != 10 || e.DeviceTime != 1_700_000_000_000*1e6 || e.Received < before || e.Received > after {
				t.Fatalf("envelope %d: device time %d, received %d", i, e.DeviceTime, e.Received)
			}
			continue
		}
		ms := e.Received / 1e6
		if ms <= last {
			t.Fatalf("envelope %d: stamp %d ms, not after %d ms", i, ms, last)
		}
		// Never behind the receive time, never further ahead than the
		// messages before it in the same millisecond could push it.
		if e.Received < before || ms > after/1e6+int64(i) {
			t.Fatalf("envelope %d: stamp %d outside [%d, %d ms + %d]", i, e.Received, before, after/1e6, i)
		}
		last = ms
	}
}

// TestReceiveStampsFullBurst: with the default limits (rate 1,000/s, burst
// 2,000, 500 messages a frame) a device may send a full burst of 2,000
// messages without ts at once, and every one is acknowledged, so every one
// must get a millisecond of its own: a repeat is a message the store keeps
// only one value of.
func TestReceiveStampsFullBurst(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	c := rawDial(t, ts, hsToken(t, "dev-burst", nil))
	var frames []string
	for f := range 4 {
		var b []string
		for i := range 500 {
			b = append(b, fmt.Sprintf(`{"id":%d,"v":%d}`, f*500+i, f*500+i))
		}
		frames = append(frames, "["+strings.Join(b, ",")+"]")
	}
	for _, f := range frames {
		send(t, c, f)
	}
	for acked := uint64(0); acked < 4; {
		of, err := readFrame(t, c)
		if err != nil {
			t.Fatal(err)
		}
		if of.Type != "ack" {
			t.Fatalf("got %+v, want acks only (the burst is within the limit)", of)
		}
		acked = of.Seq
	}
	c.Close(websocket.StatusNormalClosure, "")
	ts.stop(t)
	envs := testkit.WALEnvelopes(t, ts.dir)
	if len(envs) != 2000 {
		t.Fatalf("%d envelopes, want 2000", len(envs))
	}
	seen := map[int64]int{}
	dups := 0
	for i, e := range envs {
		ms := e.Received / 1e6
		if j, ok := seen[ms]; ok {
			if dups == 0 {
				t.Errorf("message %d has the stamp %d ms of message %d", i, ms, j)
			}
			dups++
		}
		seen[ms] = i
	}
	if dups > 0 {
		t.Errorf("%d of 2000 acknowledged messages share a millisecond stamp with an earlier one", dups)
	}
}

// A connection whose token expires is closed with 1008 and the reason
// unauthorized even if the device sends nothing more (it may only take
// commands), within expiryGrace of the expiry. Before, only its next frame
// ended it.
func TestTokenExpiresWhileIdle(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	exp := time.Now().Add(1500 * time.Millisecond).Truncate(time.Second).Add(time.Second)
	c := rawDial(t, ts, hsToken(t, "dev-1", func(rc *jwt.RegisteredClaims) { rc.ExpiresAt = jwt.NewNumericDate(exp) }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := c.Read(ctx)
	if time.Now().Before(exp) {
		t.Fatalf("closed before the token expired: %v", err)
	}
	if st := websocket.CloseStatus(err); st != websocket.StatusPolicyViolation {
		t.Fatalf("read: %v (status %v), want a close with 1008 within 10 s", err, st)
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Reason != protocol.ReasonUnauthorized {
		t.Fatalf("close reason %q, want %q", ce.Reason, protocol.ReasonUnauthorized)
	}
}
