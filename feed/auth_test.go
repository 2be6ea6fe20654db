package feed_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
)

func TestAuth(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed}}})

	good := token(t, "feed:read", nil)
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "d", "scope": "feed:read"}).
		SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "d", "scope": "feed:read"}).
		SignedString([]byte("another-secret-0123456789abcdef-x"))
	if err != nil {
		t.Fatal(err)
	}
	big := token(t, "feed:read", func(c *jwt.MapClaims) { (*c)["pad"] = strings.Repeat("p", 100<<10) })
	cases := []struct {
		name   string
		header string
		query  string
		status int    // 0: accepted
		code   string // the refusal's body code, when it is checked
	}{
		{name: "header", header: "Bearer " + good},
		{name: "lowercase bearer", header: "bearer " + good},
		{name: "token over the size cap", header: "Bearer " + big, status: http.StatusUnauthorized, code: "token_too_large"},
		{name: "token over the size cap, query parameter", query: big, status: http.StatusUnauthorized, code: "token_too_large"},
		// Headers past MaxHeaderBytes are not read, let alone held, before
		// any token is checked: net/http answers 431.
		{name: "headers over the bound", header: "Bearer " + strings.Repeat("A", 300<<10), status: http.StatusRequestHeaderFieldsTooLarge},
		{name: "query parameter", query: good},
		{name: "scope among others", header: "Bearer " + token(t, "status:read feed:read", nil)},
		{name: "scope as an array", header: "Bearer " + token(t, []string{"x", "feed:read"}, nil)},
		{name: "missing", status: http.StatusUnauthorized, code: "unauthorized"},
		{name: "not bearer", header: "Basic ZGV2OnB3", status: http.StatusUnauthorized},
		{name: "bad signature", header: "Bearer " + good[:len(good)-4] + "AAAA", status: http.StatusUnauthorized},
		{name: "other key", header: "Bearer " + otherKey, status: http.StatusUnauthorized},
		{name: "expired", header: "Bearer " + token(t, "feed:read", func(c *jwt.MapClaims) {
			(*c)["exp"] = time.Now().Add(-time.Minute).Unix()
		}), status: http.StatusUnauthorized},
		{name: "not yet valid", header: "Bearer " + token(t, "feed:read", func(c *jwt.MapClaims) {
			(*c)["nbf"] = time.Now().Add(time.Minute).Unix()
		}), status: http.StatusUnauthorized},
		{name: "alg none", header: "Bearer " + none, status: http.StatusUnauthorized},
		{name: "no scope", header: "Bearer " + token(t, nil, nil), status: http.StatusForbidden},
		{name: "other scope", header: "Bearer " + token(t, "feed:write feed:readx", nil), status: http.StatusForbidden},
		{name: "scope of the wrong type", header: "Bearer " + token(t, 7, nil), status: http.StatusUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, err := testkit.DialToken(fs.url, tc.header, tc.query)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				r := &reader{c: c, frames: make(chan frame, 16)}
				r.run(t)
				r.subscribe(t, `{"type":"subscribe"}`)
				return
			}
			if err == nil {
				c.CloseNow()
				t.Fatal("accepted")
			}
			if resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("refusal %v, want HTTP %d", err, tc.status)
			}
			if tc.code != "" {
				testkit.CheckRefusal(t, resp, tc.code)
			}
		})
	}

	t.Run("expires while connected", func(t *testing.T) {
		// exp has a resolution of one second.
		tok := token(t, "feed:read", func(c *jwt.MapClaims) { (*c)["exp"] = time.Now().Add(2 * time.Second).Unix() })
		r := dialReader(t, fs.url, tok, nil)
		r.run(t)
		r.subscribe(t, `{"type":"subscribe"}`)
		for range r.frames {
		}
		var ce websocket.CloseError
		if !errors.As(r.err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "unauthorized" {
			t.Fatalf("ended with %v, want close 1008 unauthorized", r.err)
		}
	})
}

// TestExpiryLeeway: the feed accepts a token up to Auth.Leeway past its
// expiry (the verifier's clock-skew tolerance), and so must serve the
// reader that long, as the frontend serves a device. It used to close
// every reader at the token's exp itself: a reader whose token had
// expired within the leeway was accepted, then closed at once with 1008
// unauthorized, and reconnected to the same answer until the leeway ran
// out.
func TestExpiryLeeway(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed}},
		Auth: auth.Options{HS256Secrets: [][]byte{testSecret}, Leeway: time.Minute}})
	fe := newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
	tok := token(t, "feed:read", func(c *jwt.MapClaims) { (*c)["exp"] = time.Now().Add(-10 * time.Second).Unix() })
	r := dialReader(t, fs.url, tok, nil)
	r.run(t)
	r.subscribe(t, `{"type":"subscribe"}`)
	warm(t, fe, r)
}

func TestNoAuthNeedsLoopback(t *testing.T) {
	ln := testkit.Listen(t)
	if _, err := feed.New(feed.Options{Listener: ln, Sources: []feed.Source{{Feed: "tcp://127.0.0.1:1"}}}, nil, nil); err == nil || !strings.Contains(err.Error(), "check auth") {
		t.Fatalf("New with neither keys nor InsecureNoAuth: %v, want refused", err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("a failed New left its listener open")
	}
	if _, err := feed.New(feed.Options{Listener: fakeAddrListener(t), InsecureNoAuth: true, Sources: []feed.Source{{Feed: "tcp://127.0.0.1:1"}}}, nil, nil); !errors.Is(err, feed.ErrNotLoopback) {
		t.Fatalf("New without auth on a non-loopback address: %v, want ErrNotLoopback", err)
	}
}

// TestNoAuthRefusesForeignHost: without auth the feed trusts every local
// process, not a web page: a page whose host name its DNS makes resolve to
// 127.0.0.1 (DNS rebinding) is same-origin with the feed for the browser,
// so the Origin check let it read every device. A request that names a
// host of the DNS (a name with a dot, but localhost's) is now refused
// with 403, the status page's too; localhost is served.
func TestNoAuthRefusesForeignHost(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed}}, InsecureNoAuth: true})
	addr := strings.TrimSuffix(strings.TrimPrefix(fs.url, "ws://"), "/v1/feed")
	_, port, _ := net.SplitHostPort(addr)
	c, resp, err := testkit.DialVia("ws://"+net.JoinHostPort("evil.example", port)+"/v1/feed", addr)
	if err == nil {
		c.CloseNow()
		t.Fatal("a foreign Host was accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign Host: %v, want HTTP 403", err)
	}
	c, _, err = testkit.DialVia("ws://"+net.JoinHostPort("localhost", port)+"/v1/feed", addr)
	if err != nil {
		t.Fatalf("Host localhost: %v", err)
	}
	c.CloseNow()
}

// Close releases what New took from a Server that never ran: the listener
// and the metrics' registrations. It may be called again, and a closed
// Server does not run.
func TestCloseWithoutRun(t *testing.T) {
	ln := testkit.Listen(t)
	reg := prometheus.NewRegistry()
	s, err := feed.New(feed.Options{Listener: ln, InsecureNoAuth: true, Sources: []feed.Source{{Feed: "tcp://127.0.0.1:1"}}}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.CheckCloseWithoutRun(t, s.Close, s.Run, reg, map[string]net.Listener{"listener": ln})
}

func TestSubscribeErrors(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed}}, SubscribeTimeout: 500 * time.Millisecond})
	tok := token(t, "feed:read", nil)

	r := dialReader(t, fs.url, tok, nil)
	r.run(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, bad := range []string{`{"type":"subscribe","devices":[""]}`, `{"type":"sub"}`, `{"type":"subscribe","colour":1}`, `[]`} {
		if err := r.c.Write(ctx, websocket.MessageText, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		if f := r.next(t); f.Type != "error" || f.Code != "invalid_subscribe" {
			t.Fatalf("%s answered %+v", bad, f)
		}
	}
	// No valid subscribe within the timeout: closed.
	for range r.frames {
	}
	if code := closeStatus(r.err); code != websocket.StatusPolicyViolation {
		t.Fatalf("ended with %v, want close 1008", r.err)
	}
}

func TestMaxReaders(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed}}, MaxReaders: 2})
	tok := token(t, "feed:read", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// A browser from an origin not allowed is refused.
	c, resp, err := websocket.Dial(ctx, fs.url, &websocket.DialOptions{HTTPHeader: http.Header{
		"Authorization": {"Bearer " + tok}, "Origin": {"https://elsewhere.example"}}})
	if err == nil {
		c.CloseNow()
		t.Fatal("a foreign origin was accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin: %v, want HTTP 403", err)
	}

	for range 2 {
		dialReader(t, fs.url, tok, nil).run(t)
	}
	c, resp, err = websocket.Dial(ctx, fs.url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	if err == nil {
		c.CloseNow()
		t.Fatal("a third reader was accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("refusal %v, want HTTP 503 with Retry-After", err)
	}
}

// TestStalledBody: a request to the feed's port whose body stops part way
// is answered, and its connection closed, within HandshakeTimeout, as its
// headers would be; it used to be held for as long as the client kept the
// connection open (net/http reads what is left of a body before it
// answers, with no deadline of its own).
func TestStalledBody(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{{Feed: tr.addrs.Feed}}, HandshakeTimeout: 300 * time.Millisecond})
	addr := strings.TrimSuffix(strings.TrimPrefix(fs.url, "ws://"), "/v1/feed")
	head := "POST /v1/feed HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
	if _, _, err := testkit.StalledBody(t, addr, head, 5*time.Second); err != nil {
		t.Fatalf("no answer 5 s after the body stalled: %v", err)
	}
}
