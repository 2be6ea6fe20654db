package client_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

// TestRevokedDeviceStops: a device disabled in the registry is
// refused with HTTP 403 "revoked" ("do not retry"); a client with a
// TokenFunc must stop (Err set, its messages failed with ErrRefused)
// rather than redial forever.
func TestRevokedDeviceStops(t *testing.T) {
	dir := t.TempDir()
	var revoked atomic.Bool
	s1 := start(t, "127.0.0.1:0", dir, frontend.Options{Revoked: func(string) bool { return revoked.Load() }}, wal.Options{})
	var dials atomic.Int32
	var res results
	tok := token(t, "dev-r4")
	c, err := client.Dial(context.Background(), client.Options{URL: s1.URL(),
		TokenFunc:  func(context.Context) (string, error) { dials.Add(1); return tok, nil },
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, OnResult: res.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	revoked.Store(true)
	addr := s1.Addr
	s1.Stop(t) // the connection ends (1001)
	start(t, addr, dir, frontend.Options{Revoked: func(string) bool { return revoked.Load() }}, wal.Options{})
	if _, err := c.Send(context.Background(), msg(1)); err != nil && !errors.Is(err, client.ErrRefused) {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if c.Err() == nil {
		t.Errorf("after %d handshakes refused 403 revoked, Err() is nil and %d messages pending", dials.Load(), c.Pending())
	}
	if !errors.Is(c.Err(), client.ErrRefused) {
		t.Errorf("Err() = %v, want ErrRefused", c.Err())
	}
	for _, r := range res.snapshot() {
		if !errors.Is(r.Err, client.ErrRefused) {
			t.Errorf("message %d: %v, want ErrRefused", r.N, r.Err)
		}
	}
}

// TestUnauthorizedFreshTokenOnce: with a TokenFunc, a handshake refused
// 401 is retried once with a fresh token (docs/protocol.md: "get a new
// token; do not retry the same token in a loop"): if the fresh token is
// good the client carries on; a second 401 in a row stops it.
func TestUnauthorizedFreshTokenOnce(t *testing.T) {
	bad, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "dev-u"}).SignedString([]byte("another secret, 32 bytes or more!!"))
	if err != nil {
		t.Fatal(err)
	}
	good := token(t, "dev-u")
	for _, tc := range []struct {
		name    string
		tokens  []string // what TokenFunc returns, call by call; the last one thereafter
		stopped bool
	}{
		{"fresh token good", []string{good, bad, good}, false},
		{"fresh token refused too", []string{good, bad}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s1 := start(t, "127.0.0.1:0", dir, frontend.Options{}, wal.Options{})
			var calls atomic.Int32
			var res results
			// Redials wait for the restarted frontend, so that every
			// token fetched after the first is used on a handshake.
			restarted := make(chan struct{})
			c, err := client.Dial(context.Background(), client.Options{URL: s1.URL(),
				TokenFunc: func(ctx context.Context) (string, error) {
					i := int(calls.Add(1)) - 1
					if i > 0 {
						select {
						case <-restarted:
						case <-ctx.Done():
							return "", ctx.Err()
						}
					}
					return tc.tokens[min(i, len(tc.tokens)-1)], nil
				},
				MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, OnResult: res.add})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			addr := s1.Addr
			s1.Stop(t)
			start(t, addr, dir, frontend.Options{}, wal.Options{})
			close(restarted)
			if _, err := c.Send(context.Background(), msg(1)); err != nil && !errors.Is(err, client.ErrRefused) {
				t.Fatal(err)
			}
			if tc.stopped {
				testkit.WaitFor(t, "the client to stop", 5*time.Second, func() bool { return c.Err() != nil })
				if !errors.Is(c.Err(), client.ErrRefused) {
					t.Fatalf("Err() = %v, want ErrRefused", c.Err())
				}
				time.Sleep(100 * time.Millisecond)
				if n := calls.Load(); n != 3 {
					t.Fatalf("%d tokens fetched, want 3 (the dial, the refused redial, one fresh try)", n)
				}
				return
			}
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.Flush(fctx); err != nil {
				t.Fatalf("flush: %v (Err %v)", err, c.Err())
			}
			if got := res.snapshot(); len(got) != 1 || got[0].Err != nil {
				t.Fatalf("results %+v, want message 1 acknowledged", got)
			}
		})
	}
}
