package frontend

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

func TestAuth(t *testing.T) {
	rsaKey := testkit.RSAKey(t, 2048)
	ecKey := testkit.ECKey(t, elliptic.P256())
	otherRSA := testkit.RSAKey(t, 2048)
	der, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})

	ts := startServer(t, Options{Auth: auth.Options{
		HS256Secrets: [][]byte{testSecret},
		RS256Keys:    []*rsa.PublicKey{&rsaKey.PublicKey},
		ES256Keys:    []*ecdsa.PublicKey{&ecKey.PublicKey},
	}}, wal.Options{})

	claims := func(sub string, mod func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := jwt.RegisteredClaims{Subject: sub, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	sign := func(m jwt.SigningMethod, key any, c jwt.RegisteredClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	hs := sign(jwt.SigningMethodHS256, testSecret, claims("dev-1", nil))
	// Validly signed tokens of a given length, padded in a claim.
	sized := func(n int) string {
		pad := 0
		for {
			tok := sign(jwt.SigningMethodHS256, testSecret, claims("dev-1", func(c *jwt.RegisteredClaims) {
				c.ID = strings.Repeat("p", pad)
			}))
			if len(tok) >= n {
				return tok
			}
			pad += (n - len(tok)) * 3 / 4
			if pad == 0 {
				pad = 1
			}
		}
	}
	atCap, overCap := sized(auth.DefaultMaxTokenBytes), sized(100<<10)
	for len(atCap) > auth.DefaultMaxTokenBytes {
		atCap = sized(auth.DefaultMaxTokenBytes - (len(atCap) - auth.DefaultMaxTokenBytes) - 1)
	}
	if len(atCap) < auth.DefaultMaxTokenBytes-8 {
		t.Fatalf("token of %d bytes, want one at the cap of %d", len(atCap), auth.DefaultMaxTokenBytes)
	}

	cases := []struct {
		name   string
		header string // Authorization header value
		query  string // token query parameter
		ok     bool
		code   string // the refusal's body code; default unauthorized
		status int    // the refusal's status; default 401
	}{
		{name: "HS256 header", header: "Bearer " + hs, ok: true},
		{name: "lowercase bearer", header: "bearer " + hs, ok: true},
		{name: "token at the size cap", header: "Bearer " + atCap, ok: true},
		{name: "token over the size cap", header: "Bearer " + overCap, code: protocol.CodeTokenTooLarge},
		{name: "token over the size cap, query parameter", query: overCap, code: protocol.CodeTokenTooLarge},
		// Headers past MaxHeaderBytes are not read, let alone held, before
		// any token is checked: net/http answers 431.
		{name: "headers over the bound", header: "Bearer " + strings.Repeat("A", 300<<10), status: http.StatusRequestHeaderFieldsTooLarge},
		{name: "HS256 query parameter", query: hs, ok: true},
		{name: "RS256", header: "Bearer " + sign(jwt.SigningMethodRS256, rsaKey, claims("dev-1", nil)), ok: true},
		{name: "ES256", header: "Bearer " + sign(jwt.SigningMethodES256, ecKey, claims("dev-1", nil)), ok: true},
		{name: "missing"},
		{name: "not bearer", header: "Basic ZGV2OnB3"},
		{name: "malformed", header: "Bearer not.a.jwt"},
		{name: "garbage", header: "Bearer " + strings.Repeat("A", 50)},
		{name: "bad signature", header: "Bearer " + hs[:len(hs)-4] + "AAAA"},
		{name: "wrong HS256 secret", header: "Bearer " + sign(jwt.SigningMethodHS256, []byte(strings.Repeat("k", 32)), claims("dev-1", nil))},
		{name: "unknown RSA key", header: "Bearer " + sign(jwt.SigningMethodRS256, otherRSA, claims("dev-1", nil))},
		{name: "expired", header: "Bearer " + sign(jwt.SigningMethodHS256, testSecret, claims("dev-1", func(c *jwt.RegisteredClaims) {
			c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
		}))},
		{name: "not yet valid", header: "Bearer " + sign(jwt.SigningMethodHS256, testSecret, claims("dev-1", func(c *jwt.RegisteredClaims) {
			c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Minute))
		}))},
		{name: "alg none", header: "Bearer " + sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims("dev-1", nil))},
		{name: "alg HS384", header: "Bearer " + sign(jwt.SigningMethodHS384, testSecret, claims("dev-1", nil))},
		{name: "alg PS256", header: "Bearer " + sign(jwt.SigningMethodPS256, rsaKey, claims("dev-1", nil))},
		// Algorithm confusion: the RSA public key used as an HMAC secret.
		{name: "HS256 signed with the RSA public key PEM", header: "Bearer " + sign(jwt.SigningMethodHS256, rsaPubPEM, claims("dev-1", nil))},
		{name: "HS256 signed with the RSA public key DER", header: "Bearer " + sign(jwt.SigningMethodHS256, der, claims("dev-1", nil))},
		{name: "no subject", header: "Bearer " + sign(jwt.SigningMethodHS256, testSecret, claims("", nil))},
		{name: "subject too long", header: "Bearer " + sign(jwt.SigningMethodHS256, testSecret, claims(strings.Repeat("d", 300), nil))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, err := testkit.DialToken(ts.url(), tc.header, tc.query)
			if tc.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				defer c.CloseNow()
				send(t, c, `{"id":1,"device":"dev-1"}`)
				if f, err := readFrame(t, c); err != nil || f.Type != "ack" {
					t.Fatalf("no ack: %+v %v", f, err)
				}
				return
			}
			if err == nil {
				c.CloseNow()
				t.Fatal("accepted")
			}
			if tc.status != 0 {
				if resp == nil || resp.StatusCode != tc.status {
					t.Fatalf("refusal %v, want HTTP %d", err, tc.status)
				}
				return
			}
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("refusal %v, want HTTP 401", err)
			}
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
			want := tc.code
			if want == "" {
				want = protocol.CodeUnauthorized
			}
			testkit.CheckRefusal(t, resp, want)
		})
	}

	t.Run("another device's id", func(t *testing.T) {
		// A valid token for dev-2 cannot write as dev-1, neither through the
		// message nor through the no-auth query parameter.
		tok := sign(jwt.SigningMethodHS256, testSecret, claims("dev-2", nil))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, ts.url()+"?device=dev-1", &websocket.DialOptions{
			HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		send(t, c, `{"id":"x","device":"dev-1"}`)
		f, err := readFrame(t, c)
		if err != nil || f.Type != "error" || f.Code != protocol.CodeDeviceMismatch || string(f.ID) != `"x"` {
			t.Fatalf("got %+v %v, want device_mismatch", f, err)
		}
		send(t, c, `{"id":"y"}`)
		for {
			f, err := readFrame(t, c)
			if err != nil {
				t.Fatal(err)
			}
			if f.Type == "ack" && f.Seq == 2 {
				break
			}
		}
		c.CloseNow()
		ts.stop(t)
		envs := testkit.WALEnvelopes(t, ts.dir)
		if len(envs) == 0 {
			t.Fatal("nothing stored")
		}
		for _, e := range envs {
			if strings.Contains(string(e.Payload), `"x"`) {
				t.Fatalf("mismatched message stored: %s", e.Payload)
			}
		}
		if last := envs[len(envs)-1]; last.Device != "dev-2" {
			t.Fatalf("stored as %q, want the token subject dev-2", last.Device)
		}
	})
}

// fakeAddrListener reports a non-loopback address.
type fakeAddrListener struct{ net.Listener }

func (fakeAddrListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 8080} }

func TestNoAuthNeedsLoopback(t *testing.T) {
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{Hop: "frontend"})
	listen := func() net.Listener {
		ln := testkit.Listen(t)
		return ln
	}
	ln := listen()
	if _, err := New(Options{Listener: ln, ID: "fe"}, l, nil, nil); err == nil || !strings.Contains(err.Error(), "check auth") {
		t.Fatalf("New with neither keys nor InsecureNoAuth: %v, want refused", err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("a failed New left its listener open")
	}
	ln = listen()
	if _, err := New(Options{Listener: fakeAddrListener{ln}, ID: "fe", InsecureNoAuth: true}, l, nil, nil); !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("New on a non-loopback address: %v, want ErrNotLoopback", err)
	}
	ln, mln := listen(), listen()
	if _, err := New(Options{Listener: ln, MQTTListener: fakeAddrListener{mln}, ID: "fe", InsecureNoAuth: true}, l, nil, nil); !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("New with MQTT on a non-loopback address: %v, want ErrNotLoopback", err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("a failed New left its listener open")
	}
	if _, err := mln.Accept(); err == nil {
		t.Fatal("a failed New left its MQTT listener open")
	}

	ts := startServer(t, Options{InsecureNoAuth: true}, wal.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, resp, err := websocket.Dial(ctx, ts.url(), nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no-auth without ?device=: %v", err)
	}
	c, _, err := websocket.Dial(ctx, ts.url()+"?device=bench-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	send(t, c, `{"id":1}`)
	if f, err := readFrame(t, c); err != nil || f.Type != "ack" {
		t.Fatalf("no ack: %+v %v", f, err)
	}
}

// TestNoAuthRefusesForeignHost: without auth the frontend trusts every
// local process, not a web page: a page whose host name its DNS makes
// resolve to 127.0.0.1 (DNS rebinding) is same-origin with the frontend
// for the browser, so the Origin check let it write as any device (and
// post commands). A request that names a host of the DNS (a name with a
// dot, but localhost's) is now refused with 403; a local client's names,
// localhost, an IP address or the machine's own one-label name, are
// served.
func TestNoAuthRefusesForeignHost(t *testing.T) {
	ts := startServer(t, Options{InsecureNoAuth: true}, wal.Options{})
	_, port, _ := net.SplitHostPort(ts.addr)
	for _, host := range []string{"evil.example", "evil.example.", "EVIL.Example"} {
		c, resp, err := testkit.DialVia("ws://"+net.JoinHostPort(host, port)+"/v1/ingest?device=d-1", ts.addr)
		if err == nil {
			c.CloseNow()
			t.Errorf("Host %s: accepted a device", host)
			continue
		}
		if resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("Host %s: %v, want HTTP 403", host, err)
		}
	}
	for _, host := range []string{"localhost", "127.0.0.1", "::1", "myhost", "app.localhost"} {
		c, _, err := testkit.DialVia("ws://"+net.JoinHostPort(host, port)+"/v1/ingest?device=d-"+host, ts.addr)
		if err != nil {
			t.Fatalf("Host %s: %v", host, err)
		}
		send(t, c, `{"id":1}`)
		if f, err := readFrame(t, c); err != nil || f.Type != "ack" {
			t.Fatalf("Host %s: no ack: %+v %v", host, f, err)
		}
		c.CloseNow()
	}
}

// TestScopedTokenIsNoDeviceToken: a feed reader's token (scope feed:read,
// handed to dashboard users) or an application's (scope commands) is
// signed with the same keys as devices', and is refused as a device's
// token (401): it cannot write data as the device its subject names, nor
// take that device's commands. Before, the device endpoint looked at the
// signature and the subject only.
func TestScopedTokenIsNoDeviceToken(t *testing.T) {
	ts := startServer(t, Options{}, wal.Options{})
	for _, scope := range []string{"feed:read", "commands"} {
		tok := testkit.SignHS256(t, testSecret, auth.ScopedClaims{
			RegisteredClaims: jwt.RegisteredClaims{Subject: "tracker-001", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))},
			Scope:            auth.Scopes{scope},
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, resp, err := websocket.Dial(ctx, ts.url(), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
		cancel()
		if err == nil {
			c.CloseNow()
			t.Fatalf("a token with scope %q opened a device session as tracker-001", scope)
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a token with scope %q: %v, want HTTP 401", scope, err)
		}
	}
}
