package client_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

// blackholeProxy forwards TCP to a target; blackhole() makes the paths open
// so far go silent in both directions without closing them (a NAT entry
// that expired, a Wi-Fi handover, a dead peer without RST). New
// connections are forwarded normally.
type blackholeProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	dead  chan struct{}
	wg    sync.WaitGroup
}

func newBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, dead: make(chan struct{})}
	p.wg.Go(func() {
		for {
			cn, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				cn.Close()
				continue
			}
			p.mu.Lock()
			dead := p.dead
			p.conns = append(p.conns, cn, up)
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					select {
					case <-dead:
						io.Copy(io.Discard, src) // silently drop until closed
						return
					default:
					}
					if n > 0 {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						dst.Close()
						return
					}
				}
			}
			p.wg.Go(func() { pipe(up, cn) })
			p.wg.Go(func() { pipe(cn, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) blackhole() {
	p.mu.Lock()
	close(p.dead)
	p.dead = make(chan struct{})
	p.mu.Unlock()
}

// TestSilentConnectionDetected: once the path to the frontend goes
// silent, a message in flight gets no ack; a small frame's write succeeds
// into the socket buffer, so WriteTimeout does not fire. The client must
// notice (its ping gets no pong), redial over a working path and resend.
func TestSilentConnectionDetected(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	p := newBlackholeProxy(t, s.Addr)
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: "ws://" + p.ln.Addr().String() + "/v1/ingest", Token: token(t, "dev-r5"),
		WriteTimeout: time.Second, DialTimeout: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendWait(ctx, msg(1)); err != nil {
		t.Fatal(err)
	}
	p.blackhole()
	wctx, cancel := context.WithTimeout(ctx, 12*time.Second)
	defer cancel()
	if err := c.SendWait(wctx, msg(2)); err != nil {
		t.Errorf("message 2 after the path went silent (WriteTimeout 1s, frontend reachable anew): %v", err)
	}
}

// TestIdleSilentConnectionDetected: with nothing in flight, the client
// pings every PingInterval, so a silent path is noticed and replaced by a
// new connection before there is anything to send.
func TestIdleSilentConnectionDetected(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	p := newBlackholeProxy(t, s.Addr)
	d := newDialer(t)
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: "ws://" + p.ln.Addr().String() + "/v1/ingest", Token: token(t, "dev-r6"),
		PingInterval: 200 * time.Millisecond, WriteTimeout: 300 * time.Millisecond,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, HTTPClient: &http.Client{Transport: d.tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Pings answered: no redial while the path works.
	time.Sleep(time.Second)
	if n := len(d.dials()); n != 1 {
		t.Fatalf("%d dials over a working path, want 1", n)
	}
	p.blackhole()
	testkit.WaitFor(t, "a redial after the path went silent", 5*time.Second, func() bool { return len(d.dials()) >= 2 })
	if err := c.SendWait(ctx, msg(1)); err != nil {
		t.Fatalf("send over the new connection: %v", err)
	}
}

// TestSlowOnResultKeepsConnection: the pong to the keepalive's ping
// is read by the goroutine that also calls OnResult. With a window of acks
// ahead of it whose OnResult calls take a moment each, the pong is read
// after WriteTimeout. The client must not take that for a dead path: one
// that did closed a healthy connection, reconnected, and sent again what
// the frontend had stored, which it stored twice. (The client before the
// keepalive kept the connection: nothing it wrote was blocked.)
func TestSlowOnResultKeepsConnection(t *testing.T) {
	s := start(t, "127.0.0.1:0", t.TempDir(), frontend.Options{}, wal.Options{})
	d := newDialer(t)
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Options{URL: s.URL(), Token: token(t, "dev-k1"), HTTPClient: &http.Client{Transport: d.tr},
		WriteTimeout: 400 * time.Millisecond,
		OnResult:     func(client.Result) { time.Sleep(40 * time.Millisecond) },
		MinBackoff:   time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const n = 150
	for i := range n {
		if _, err := c.Send(ctx, msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := c.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s.Stop(t)
	ids := stored(t, s.Dir)
	if dials := len(d.dials()); dials != 1 || len(ids) != n {
		t.Fatalf("%d dials; %d messages sent, %d stored", dials, n, len(ids))
	}
}
