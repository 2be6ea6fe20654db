package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/frontendtest"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

var secret = []byte("0123456789abcdef0123456789abcdef-client-test")

type server = frontendtest.Server

// start serves a frontend on addr ("127.0.0.1:0" for any port) with its WAL
// in dir.
func start(t *testing.T, addr, dir string, opts frontend.Options, wopts wal.Options) *server {
	t.Helper()
	opts.ID = "fe-client-test"
	opts.Auth.HS256Secrets = [][]byte{secret}
	opts.DrainWindow = 50 * time.Millisecond
	return frontendtest.Start(t, addr, dir, opts, wopts)
}

func token(t *testing.T, device string) string {
	t.Helper()
	c := jwt.RegisteredClaims{Subject: device, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	return testkit.SignHS256(t, secret, c)
}

// stored returns the "id" of every message in the WAL in dir, in WAL order.
func stored(t *testing.T, dir string) []int {
	t.Helper()
	var ids []int
	for _, env := range testkit.WALEnvelopes(t, dir) {
		ids = append(ids, payloadID(t, env.Payload))
	}
	return ids
}

// messageID decodes the "id" of the message in a WAL entry.
func messageID(t *testing.T, e wal.Entry) int {
	env, err := envelope.Decode(e.Data)
	if err != nil {
		t.Fatalf("entry %d: %v", e.Index, err)
	}
	return payloadID(t, env.Payload)
}

// payloadID decodes the "id" of a message.
func payloadID(t *testing.T, payload []byte) int {
	var p struct{ ID int }
	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatalf("message %q: %v", payload, err)
	}
	return p.ID
}

// checkOrder checks that ids holds every id below n and never gets ahead of
// itself: a message is stored only after every earlier one was, repeats
// (resends of unacknowledged messages) allowed.
func checkOrder(t *testing.T, ids []int, n int) {
	t.Helper()
	next := 0 // lowest id not yet seen
	for k, id := range ids {
		if id > next {
			t.Fatalf("entry %d holds message %d before message %d was stored", k, id, next)
		}
		if id == next {
			next++
		}
	}
	if next != n {
		t.Fatalf("%d messages stored in order, want %d", next, n)
	}
}

// results collects OnResult calls.
type results struct {
	mu  sync.Mutex
	got []client.Result
}

func (r *results) add(res client.Result) {
	r.mu.Lock()
	r.got = append(r.got, res)
	r.mu.Unlock()
}

func (r *results) snapshot() []client.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]client.Result(nil), r.got...)
}

// dialer counts and times the client's TCP dials.
type dialer struct {
	mu    sync.Mutex
	times []time.Time
	tr    *http.Transport
}

func newDialer(t *testing.T) *dialer {
	d := &dialer{}
	var nd net.Dialer
	d.tr = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		d.mu.Lock()
		d.times = append(d.times, time.Now())
		d.mu.Unlock()
		return nd.DialContext(ctx, network, addr)
	}}
	t.Cleanup(d.tr.CloseIdleConnections)
	return d
}

func (d *dialer) dials() []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.times...)
}

func msg(i int) []byte { return fmt.Appendf(nil, `{"id":%d,"v":%d}`, i, i*i) }

// TestReconnectResendsInOrder: the frontend goes away while messages are in
// flight and more are queued; the client redials with backoff until it is
// back on the same address, resends everything unacknowledged oldest first,
// and every message ends up acknowledged and stored in order.
func TestReconnectResendsInOrder(t *testing.T) {
	dir := t.TempDir()
	s1 := start(t, "127.0.0.1:0", dir, frontend.Options{}, wal.Options{})
	addr := s1.Addr
	var res results
	d := newDialer(t)
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{
		URL: s1.URL(), Token: token(t, "dev-1"), Window: 16,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
		HTTPClient: &http.Client{Transport: d.tr}, OnResult: res.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const half = 1000
	for i := range half {
		if _, err := c.Send(ctx, msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "some acknowledgements", 10*time.Second, func() bool { return len(res.snapshot()) >= 50 })
	s1.Stop(t)
	down := len(d.dials())
	for i := half; i < 2*half; i++ {
		if _, err := c.Send(ctx, msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Refused dials while the frontend is down, each after a backoff.
	testkit.WaitFor(t, "redial attempts", 10*time.Second, func() bool { return len(d.dials()) >= down+3 })
	if c.Pending() == 0 {
		t.Fatal("nothing pending while the frontend was down")
	}

	s2 := start(t, addr, dir, frontend.Options{}, wal.Options{})
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	got := res.snapshot()
	if len(got) != 2*half {
		t.Fatalf("%d results, want %d", len(got), 2*half)
	}
	for i, r := range got {
		if r.N != uint64(i+1) || r.Err != nil {
			t.Fatalf("result %d: %+v, want message %d acknowledged", i, r, i+1)
		}
	}
	c.Close()
	s2.Stop(t)
	checkOrder(t, stored(t, dir), 2*half)
}

// TestOverloadedRetryHint: a frontend whose WAL is at its bound answers
// overloaded with a retry hint and closes; the client waits at least the
// hint before each redial, and once the WAL has room again every message is
// acknowledged and stored in order.
func TestOverloadedRetryHint(t *testing.T) {
	const hint = 300 * time.Millisecond
	// About six 150-byte envelopes fit.
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{OverloadRetryAfter: hint}, wal.Options{MaxBytes: 1000})
	var res results
	d := newDialer(t)
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{
		URL: s.URL(), Token: token(t, "dev-1"),
		// Without the hint the client would redial within milliseconds.
		MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond,
		HTTPClient: &http.Client{Transport: d.tr}, OnResult: res.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 12
	for i := range n {
		if _, err := c.Send(ctx, fmt.Appendf(nil, `{"id":%d,"pad":%q}`, i, strings.Repeat("x", 80))); err != nil {
			t.Fatal(err)
		}
	}
	// Two refusals at least, then a consumer reads the WAL and releases
	// what it has read, freeing room as it goes.
	testkit.WaitFor(t, "redials after overloaded", 10*time.Second, func() bool { return len(d.dials()) >= 3 })
	relCtx, stopRel := context.WithCancel(ctx)
	var (
		rel      sync.WaitGroup
		consumed []int
	)
	cur, err := s.Log.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	rel.Go(func() {
		for {
			e, err := cur.Next(relCtx)
			if err != nil {
				if relCtx.Err() == nil {
					t.Errorf("consume: %v", err)
				}
				return
			}
			consumed = append(consumed, messageID(t, e))
			if err := s.Log.Release(e.Index); err != nil {
				t.Errorf("release: %v", err)
				return
			}
		}
	})
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = c.Flush(fctx)
	stopRel()
	rel.Wait()
	if err != nil {
		t.Fatalf("flush: %v", err)
	}
	for i, r := range res.snapshot() {
		if r.N != uint64(i+1) || r.Err != nil {
			t.Fatalf("result %d: %+v, want message %d acknowledged", i, r, i+1)
		}
	}
	if got := len(res.snapshot()); got != n {
		t.Fatalf("%d results, want %d", got, n)
	}
	// Every session but the last ended with overloaded, so every redial
	// came at least the hint after the previous dial.
	dials := d.dials()
	for i := 1; i < len(dials); i++ {
		if gap := dials[i].Sub(dials[i-1]); gap < hint {
			t.Fatalf("dial %d came %v after the previous one, before the %v retry hint", i, gap, hint)
		}
	}
	c.Close()
	s.Stop(t)
	checkOrder(t, consumed, n)
}

// TestHandshakeRetryAfter: a frontend that cannot take the device (at its
// connection limit, starting or draining) refuses the handshake with 503
// "overloaded" and a Retry-After header (docs/protocol.md). That is a
// retry hint like the one of an overloaded error frame: the client waits
// at least that long before its next dial instead of redialling at its
// own backoff, which a fleet would turn into a storm of handshakes.
func TestHandshakeRetryAfter(t *testing.T) {
	const hint = time.Second
	var (
		mu    sync.Mutex
		times []time.Time
	)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		switch n {
		case 1: // served, then closed as by a draining frontend
			ws, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			ws.Close(protocol.CloseGoingAway, "server shutting down")
		case 2: // refused with the hint
			w.Header().Set("Retry-After", strconv.Itoa(int(hint/time.Second)))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write(protocol.AppendRefusal(nil, protocol.CodeOverloaded, "server not ready; reconnect later"))
		default: // served until the client goes
			ws, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			ws.Read(r.Context())
			ws.CloseNow()
		}
	}))
	defer hs.Close()
	c, err := client.Dial(context.Background(), client.Options{URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ingest", Token: "t",
		// Without the hint the client would redial within milliseconds.
		MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testkit.WaitFor(t, "the dial after the refusal", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(times) >= 3
	})
	mu.Lock()
	gap := times[2].Sub(times[1])
	mu.Unlock()
	if gap < hint {
		t.Fatalf("redial came %v after the handshake refused 503 with Retry-After %v", gap, hint)
	}
}

// TestRetryHintJittered: devices sent away together with the same retry
// hint (a frontend whose queue or disk is full answers every device
// overloaded at once) must not all come back at the same instant, which
// would overload it again: docs/protocol.md says to wait retry_after_ms
// and add random jitter. The client waited exactly the hint whenever it
// was longer than its own (jittered) backoff.
func TestRetryHintJittered(t *testing.T) {
	const (
		devices = 10
		hint    = 400 * time.Millisecond
	)
	var (
		mu      sync.Mutex
		dials   = map[string]int{}
		closed  = map[string]time.Time{}
		redials = map[string]time.Time{}
	)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dev := r.Header.Get("Authorization")
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		mu.Lock()
		dials[dev]++
		first := dials[dev] == 1
		if dials[dev] == 2 {
			redials[dev] = time.Now()
		}
		mu.Unlock()
		if first {
			// Its first frame is refused overloaded, with the hint (the
			// device "huge", with one of 285 years).
			if _, _, err := ws.Read(r.Context()); err != nil {
				return
			}
			h := hint.Milliseconds()
			if dev == "Bearer huge" {
				h = 9e12
			}
			ws.Write(r.Context(), websocket.MessageText, protocol.AppendError(nil, protocol.CodeOverloaded, 1, -1, nil, h, "queue full"))
			mu.Lock()
			closed[dev] = time.Now()
			mu.Unlock()
			ws.Close(websocket.StatusTryAgainLater, protocol.CodeOverloaded)
			return
		}
		for {
			if _, _, err := ws.Read(r.Context()); err != nil {
				return
			}
		}
	}))
	defer hs.Close()
	ctx := context.Background()
	for i := range devices + 1 {
		token := fmt.Sprint("d", i)
		if i == devices {
			token = "huge"
		}
		c, err := client.Dial(ctx, client.Options{URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ingest", Token: token,
			MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Send(ctx, msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "every device to redial", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(redials) >= devices
	})
	mu.Lock()
	defer mu.Unlock()
	// The hint of centuries is held to an hour: the device waits. Its
	// hint and jitter used to overflow to a negative wait, and it
	// redialled at once.
	if at, ok := redials["Bearer huge"]; ok {
		t.Fatalf("the device told to wait 285 years redialled %v after", at.Sub(closed["Bearer huge"]))
	}
	if _, ok := closed["Bearer huge"]; !ok {
		t.Fatal("the device told to wait 285 years was never refused")
	}
	var lo, hi time.Duration
	for dev, at := range redials {
		wait := at.Sub(closed[dev])
		if wait < hint {
			t.Fatalf("%s redialled %v after the %v hint", dev, wait, hint)
		}
		if lo == 0 || wait < lo {
			lo = wait
		}
		hi = max(hi, wait)
	}
	// Jitter of up to half the hint spreads 10 devices over far more than
	// a tenth of it, but for a chance of about 1e-5.
	if hi-lo < hint/10 {
		t.Fatalf("%d devices sent away together with a %v hint redialled %v to %v after it: no jitter", devices, hint, lo, hi)
	}
}

// TestSendWaitAndFlush covers what the calls promise: SendWait returns once
// the message is durable, or with the server's rejection; Flush returns once
// every message has its result, each delivered once and in order; a
// context ends waiting without ending the message; Close fails what is
// left with ErrClosed.
// TestRefusals: a "ts" past int64 nanoseconds (the year 2603) is refused
// by the server, not stored as a time in 2019; a payload the server would
// take for a command's answer is refused by Send, and so is an array (a
// batch, one result for many messages).
func TestRefusals(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: s.URL(), Token: token(t, "dev-1")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var se *client.ServerError
	if err := c.SendWait(ctx, []byte(`{"id":1,"ts":20000000000000}`)); !errors.As(err, &se) || se.Code != "bad_timestamp" {
		t.Fatalf("send wait of a ts in 2603: %v, want a bad_timestamp *ServerError", err)
	}
	if _, err := c.Send(ctx, []byte(` {"__type" : "command_result","id":"c1","status":"ok"}`)); !errors.Is(err, client.ErrNotData) {
		t.Fatalf("send of a command_result: %v, want ErrNotData", err)
	}
	if _, err := c.Send(ctx, []byte("\n [{\"id\":\"a\"},{\"id\":\"b\",\"ts\":20000000000000}]")); !errors.Is(err, client.ErrBatch) {
		t.Fatalf("send of an array: %v, want ErrBatch", err)
	}
	if err := c.SendWait(ctx, msg(2)); err != nil {
		t.Fatalf("the next message: %v", err)
	}
}

func TestSendWaitAndFlush(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	var res results
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: s.URL(), Token: token(t, "dev-1"), OnResult: res.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// SendWait: durable when it returns nil.
	if err := c.SendWait(ctx, msg(0)); err != nil {
		t.Fatalf("send wait: %v", err)
	}
	if s.Log.LastIndex() != 1 {
		t.Fatalf("WAL last index %d after SendWait, want 1", s.Log.LastIndex())
	}
	// SendWait: the server's rejection, as a *ServerError.
	err = c.SendWait(ctx, []byte(`{"id":1,"ts":1}`))
	var se *client.ServerError
	if !errors.As(err, &se) || se.Code != "bad_timestamp" || se.Index != -1 {
		t.Fatalf("send wait of a bad timestamp: %v, want a bad_timestamp *ServerError", err)
	}

	// Flush: every result in, in order, once each.
	const n = 200
	for i := 2; i < n; i++ {
		p := msg(i)
		if i == 100 {
			p = []byte(`{"id":100,"device":"dev-2"}`)
		}
		if _, err := c.Send(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if c.Pending() != 0 {
		t.Fatalf("%d pending after Flush", c.Pending())
	}
	got := res.snapshot()
	if len(got) != n {
		t.Fatalf("%d results after Flush, want %d", len(got), n)
	}
	for i, r := range got {
		if r.N != uint64(i+1) {
			t.Fatalf("result %d is for message %d", i, r.N)
		}
		switch {
		case i == 1 || i == 100:
			if !errors.As(r.Err, &se) {
				t.Fatalf("message %d: %v, want a *ServerError", r.N, r.Err)
			}
		case r.Err != nil:
			t.Fatalf("message %d: %v", r.N, r.Err)
		}
	}
	if last := s.Log.LastIndex(); last != n-2 {
		t.Fatalf("WAL holds %d messages, want %d", last, n-2)
	}

	// With the frontend gone nothing is acknowledged: the context ends the
	// wait, not the message.
	s.Stop(t)
	if _, err := c.Send(ctx, msg(n)); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	if err := c.Flush(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("flush without a frontend: %v, want DeadlineExceeded", err)
	}
	cancel()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.SendWait(cancelled, msg(n+1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("send wait with a cancelled context: %v, want Canceled", err)
	}
	if c.Pending() == 0 {
		t.Fatal("messages dropped when a wait ended")
	}

	// Close: what is left fails with ErrClosed, and so does any later call.
	before := len(res.snapshot())
	pending := c.Pending()
	c.Close()
	got = res.snapshot()[before:]
	if len(got) != pending {
		t.Fatalf("%d results at Close, want %d", len(got), pending)
	}
	for _, r := range got {
		if !errors.Is(r.Err, client.ErrClosed) {
			t.Fatalf("message %d at Close: %v, want ErrClosed", r.N, r.Err)
		}
	}
	if _, err := c.Send(ctx, msg(0)); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
	if err := c.Flush(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("flush after close: %v", err)
	}
}

// TestDialRefused: a token the frontend refuses fails Dial with ErrRefused.
func TestDialRefused(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	bad, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "dev-1"}).SignedString([]byte("another secret, 32 bytes or more!!"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(context.Background(), client.Options{URL: s.URL(), Token: bad})
	if !errors.Is(err, client.ErrRefused) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial with a bad token: %v, want ErrRefused", err)
	}
}

// TestDialRefusedNamesCode: a refused handshake's body names why
// (docs/protocol.md: unauthorized, token_too_large, revoked), and what to
// do differs: renew the token, shorten it, or stop until the operator
// enables the device. The error of Dial keeps ErrRefused and carries the
// server's code and message as a *ServerError; it used to say only
// "HTTP 401" or "HTTP 403".
func TestDialRefusedNamesCode(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{Revoked: func(d string) bool { return d == "dev-off" }}, wal.Options{})
	expired := testkit.SignHS256(t, secret, jwt.RegisteredClaims{Subject: "dev-1", ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Hour))})
	for _, tc := range []struct {
		name, token, code, says string
	}{
		{"expired", expired, protocol.CodeUnauthorized, "expired"},
		{"too large", strings.Repeat("x", 9000), protocol.CodeTokenTooLarge, ""},
		{"revoked", token(t, "dev-off"), protocol.CodeRevoked, "dev-off"},
	} {
		c, err := client.Dial(context.Background(), client.Options{URL: s.URL(), Token: tc.token})
		if c != nil {
			c.Close()
		}
		var se *client.ServerError
		if !errors.Is(err, client.ErrRefused) || !errors.As(err, &se) || se.Code != tc.code || !strings.Contains(se.Message, tc.says) {
			t.Errorf("%s: dial: %v (as a *ServerError: %+v), want ErrRefused with the code %s", tc.name, err, se, tc.code)
		}
	}
}

// Flush returns only after OnResult has run for every message: a slow
// callback for the last results must not be overtaken.
func TestFlushWaitsForOnResult(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	defer s.Stop(t)
	var res results
	slow := func(r client.Result) {
		time.Sleep(20 * time.Millisecond) // a callback that does work of its own
		res.add(r)
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: s.URL(), Token: token(t, "dev-1"), OnResult: slow})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 5
	for i := range n {
		if _, err := c.Send(ctx, msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(res.snapshot()); got != n {
		t.Fatalf("%d results delivered when Flush returned, want %d", got, n)
	}
}

// TestFlushSentSoFar: Flush waits for the messages sent before it, not
// for those another goroutine sends while it waits. Before, it waited
// until nothing at all was pending, so that a device sending all the time
// from one goroutine held a Flush of another until its context ended,
// every message before it long since acknowledged.
func TestFlushSentSoFar(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	defer s.Stop(t)
	var res results
	first := make(chan struct{})   // closed once the first message's result is being delivered
	after := make(chan struct{})   // closed once the second message is sent
	release := make(chan struct{}) // holds the second message's result
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: s.URL(), Token: token(t, "dev-1"), OnResult: func(r client.Result) {
		switch r.N {
		case 1:
			close(first)
			<-after // the first is settled only once the second is sent
		case 2:
			<-release
		}
		res.add(r)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer close(release)
	if _, err := c.Send(ctx, msg(1)); err != nil {
		t.Fatal(err)
	}
	go func() {
		// The second is sent once Flush waits, and once the first's result
		// is on its way, so that the two results are not delivered as one.
		<-first
		testkit.WaitFor(t, "Flush to wait", 10*time.Second, func() bool { return testkit.Blocked("client.(*Client).Flush(", "sync.Cond.Wait") })
		if _, err := c.Send(ctx, msg(2)); err != nil {
			t.Error(err)
		}
		close(after)
	}()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		t.Fatalf("flush of the first message, the second sent while it waited: %v", err)
	}
	if got := res.snapshot(); len(got) != 1 || got[0].N != 1 || got[0].Err != nil {
		t.Fatalf("results when Flush returned: %+v, want the first message's", got)
	}
}
