package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/client"
)

// TestCloseDuringRedial: while the client redials a server that accepts
// TCP but does not answer the handshake (a half-dead host, a stuck load
// balancer), Close must end the dial, not wait for DialTimeout.
func TestCloseDuringRedial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		n     int
	)
	second := make(chan struct{})
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.Close(1001, "server shutting down")
	})}
	// The first connection is served (and closed with 1001); later ones
	// are held open without an answer.
	pl := &pickListener{Listener: ln, first: make(chan net.Conn, 1)}
	go hs.Serve(&oneListener{pickListener: pl, done: make(chan struct{})})
	go func() {
		for {
			cn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			if n == 1 {
				pl.first <- cn
			} else {
				conns = append(conns, cn)
				if n == 2 {
					close(second)
				}
			}
			mu.Unlock()
		}
	}()
	defer func() {
		hs.Close()
		ln.Close()
		mu.Lock()
		for _, cn := range conns {
			cn.Close()
		}
		mu.Unlock()
	}()
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + ln.Addr().String() + "/v1/ingest", Token: "t",
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, DialTimeout: 8 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-second:
	case <-time.After(5 * time.Second):
		t.Fatal("no redial")
	}
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	c.Close()
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Close took %v while redialling", d.Round(time.Millisecond))
	}
}

// TestCloseDuringTokenFunc: the TokenFunc called before a redial gets a
// context that Close cancels, so a TokenFunc waiting on a token service
// that does not answer does not hold Close up.
func TestCloseDuringTokenFunc(t *testing.T) {
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ws.Close(1001, "server shutting down")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(ln)
	defer hs.Close()
	var calls atomic.Int32
	waiting := make(chan struct{})
	ended := make(chan error, 1)
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + ln.Addr().String() + "/v1/ingest",
		TokenFunc: func(ctx context.Context) (string, error) {
			if calls.Add(1) == 1 {
				return "t", nil
			}
			if calls.Load() == 2 {
				close(waiting)
			}
			select {
			case <-ctx.Done():
				if calls.Load() == 2 {
					ended <- ctx.Err()
				}
				return "", ctx.Err()
			case <-time.After(8 * time.Second): // a token service that does not answer
				return "t", nil
			}
		},
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-waiting:
	case <-time.After(5 * time.Second):
		t.Fatal("no redial")
	}
	t0 := time.Now()
	c.Close()
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Close took %v while TokenFunc waited", d.Round(time.Millisecond))
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("TokenFunc's context ended with %v, want Canceled", err)
		}
	default:
		t.Error("TokenFunc's context did not end at Close")
	}
}

// pickListener hands http.Server the connections the accept loop picks.
type pickListener struct {
	net.Listener
	first chan net.Conn
}

type oneListener struct {
	*pickListener
	once sync.Once
	done chan struct{}
}

func (l *oneListener) Accept() (net.Conn, error) {
	select {
	case cn := <-l.first:
		return cn, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// TestCloseOnStalledServer: a server that stops reading (the frontend
// does so under backpressure; a stuck proxy does it too) leaves a frame
// write blocked; Close must not wait for it (or for the close handshake
// behind it) for seconds.
func TestCloseOnStalledServer(t *testing.T) {
	release := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		<-release // never reads
		ws.CloseNow()
	}))
	defer hs.Close()
	defer close(release)
	var res results
	c, err := client.Dial(context.Background(), client.Options{URL: "ws" + strings.TrimPrefix(hs.URL, "http") + "/v1/ingest", Token: "t", OnResult: res.add})
	if err != nil {
		t.Fatal(err)
	}
	big := []byte(`{"s":"` + strings.Repeat("x", 16<<20) + `"}`)
	if _, err := c.Send(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	c.Close()
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Close took %v with a write stalled", d.Round(time.Millisecond))
	}
	if got := res.snapshot(); len(got) != 1 || !errors.Is(got[0].Err, client.ErrClosed) {
		t.Errorf("results at Close: %+v, want the stalled message failed with ErrClosed", got)
	}
}
