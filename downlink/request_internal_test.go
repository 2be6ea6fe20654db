package downlink

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/command/commandtest"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// A request whose connection ends is sent again on the next connection at
// once, not after its timeout, and a miss on the old connection does not
// count against the new one: the new connection is ended only after two
// misses of its own. The home is a bare ROUTER that answers only the
// second copy of the request on the second connection. The first
// connection is ended as soon as the request reaches it, as when the home
// restarts.
func TestRequestOnANewConnection(t *testing.T) {
	type msg struct {
		id []byte
		m  wire.Message
		at time.Time
	}
	in := make(chan msg, 100)
	home := testkit.StartRouter(t, func(id []byte, m wire.Message) { in <- msg{id, m, time.Now()} })
	const timeout = 2 * time.Second
	l, err := New(Options{Frontend: "fe-1", Homes: []string{home.Addr()}, RequestTimeout: timeout, PresenceInterval: time.Hour}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "link", func(ctx context.Context) error { l.Run(ctx); return nil })
	t.Cleanup(func() { l.Close() })
	h := l.homes[0]

	type result struct {
		r   *wire.Reply
		err error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	go func() {
		q := &wire.Query{Req: 7, Op: wire.QueryList, Device: "dev-1"}
		r, err := l.request(ctx, h, q, q.Req)
		done <- result{r, err}
	}()

	var conns [][]byte // the identities, in the order they sent the request
	copies := map[string]int{}
	var ended time.Time
	for {
		var got msg
		select {
		case got = <-in:
		case res := <-done:
			t.Fatalf("request returned before the home answered: %+v", res)
		}
		if _, ok := got.m.(*wire.Query); !ok {
			continue // presence
		}
		id := string(got.id)
		if copies[id] == 0 {
			conns = append(conns, got.id)
		}
		copies[id]++
		switch {
		case len(conns) == 1:
			// The request reached the first connection: end it.
			h.mu.Lock()
			d := h.d
			h.mu.Unlock()
			if d == nil {
				t.Fatal("a request arrived with no connection")
			}
			ended = time.Now()
			h.reconnect(d)
		case len(conns) == 2 && copies[id] == 1:
			if wait := got.at.Sub(ended); wait > timeout*3/4 {
				t.Errorf("the request reached the new connection %v after the old one ended: it waited for its timeout (%v)", wait, timeout)
			}
		case len(conns) == 2 && copies[id] == 2:
			home.Reply(got.id, &wire.Reply{Req: 7, Code: "ok"})
			res := <-done
			if res.err != nil || res.r.Code != "ok" {
				t.Fatalf("request: %+v %v", res.r, res.err)
			}
			return
		default:
			t.Fatalf("the request went to a third connection after %d miss(es) on the second: a miss on the first counted against it", copies[string(conns[1])])
		}
	}
}

// A home that drops each connection once greeted is dialed again after a
// backoff that grows, not again and again at once: a few times in two
// seconds (before, hundreds).
func TestFlappingHomeBackoff(t *testing.T) {
	home, greeted := testkit.StartFlapper(t)
	l, err := New(Options{Frontend: "fe-1", Homes: []string{home}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := testkit.Go(t, "link", func(ctx context.Context) error { l.Run(ctx); return nil })
	t.Cleanup(func() { l.Close() })
	time.Sleep(2 * time.Second)
	stop()
	n := greeted.Load()
	t.Logf("greeted and dropped %d connections in 2 s", n)
	if n < 2 || n > 30 {
		t.Fatalf("the Link connected %d times in 2 s to a home that drops every connection, want a few", n)
	}
}

// TestRedeliveriesToAStalledDeviceNotQueued: a device whose writes stall
// (an MQTT session at its client's Receive Maximum waits for a PUBACK with
// no bound) is handed its unanswered command again by the home every
// redelivery interval. Each hand-on of a command already waiting to be
// written adds nothing: the device's queue holds each command once, so it
// stays bounded, and once the device reads again it gets the command once,
// not once per redelivery in a burst.
func TestRedeliveriesToAStalledDeviceNotQueued(t *testing.T) {
	h := commandtest.Start(t, command.Options{ID: "home-1", Redeliver: 100 * time.Millisecond}, wal.Options{})
	l, err := New(Options{Frontend: "fe-1", Homes: []string{h.Addr}, RequestTimeout: 200 * time.Millisecond, PresenceInterval: 200 * time.Millisecond}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "link", func(ctx context.Context) error { l.Run(ctx); return nil })
	t.Cleanup(func() { l.Close() })

	release := make(chan struct{})
	var mu sync.Mutex
	var written []string
	a := l.Attach("dev-1", func(b []byte, _ time.Time) error {
		<-release // the device takes nothing until released
		mu.Lock()
		written = append(written, string(b))
		mu.Unlock()
		if f, err := protocol.DecodeServerFrame(b); err == nil {
			l.Result("dev-1", protocol.CommandResult{ID: string(f.ID), Status: "ok"}) // it answers at once
		}
		return nil
	})
	defer a.Detach()
	testkit.WaitFor(t, "the device placed", 10*time.Second, func() bool {
		return testkit.Metric(t, h.Reg, "ingest_command_devices_placed") == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := l.Submit(ctx, wire.Submit{Device: "dev-1", Name: "n", Payload: []byte(`{}`), Key: "k"})
	if err != nil || rep.Code != "" {
		t.Fatalf("submit: %+v %v", rep, err)
	}
	cid := rep.Commands[0].ID
	// Some twenty redeliveries while the first write stalls.
	time.Sleep(2 * time.Second)
	a.mu.Lock()
	queued := len(a.queue)
	a.mu.Unlock()
	close(release)
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	n := 0
	for _, b := range written {
		if strings.Contains(b, cid) {
			n++
		}
	}
	mu.Unlock()
	if queued > 1 || n > 6 {
		t.Fatalf("a stalled device's queue held %d frames of its one command, and %d writes of it followed its release", queued, n)
	}
}
