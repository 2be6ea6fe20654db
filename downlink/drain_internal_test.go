package downlink

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wire"
)

// A home's deliveries that the link's socket received before its
// connection ended are taken, not dropped with the connection: serve's
// select picked at random between the end and what was waiting. Here
// twenty wait while the link's delivery is held (its lock taken), and the
// connection is ended, as after two unanswered requests. The home is a
// bare ROUTER: it delivers each command once.
func TestDeliveriesBeforeTheEndTaken(t *testing.T) {
	ids := make(chan []byte, 100)
	home := testkit.StartRouter(t, func(id []byte, _ wire.Message) { ids <- id })
	l, err := New(Options{Frontend: "fe-1", Homes: []string{home.Addr()}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "link", func(ctx context.Context) error { l.Run(ctx); return nil })
	t.Cleanup(func() { l.Close() })

	var mu sync.Mutex
	var got []string
	a := l.Attach("dev-1", func(b []byte, _ time.Time) error { mu.Lock(); got = append(got, string(b)); mu.Unlock(); return nil })
	defer a.Detach()
	id := <-ids // the link's presence: its socket is connected
	h := l.homes[0]
	h.mu.Lock()
	d := h.d
	h.mu.Unlock()
	if d == nil {
		t.Fatal("no connection after the presence arrived")
	}
	const n = 20
	l.mu.Lock() // the link takes the first delivery and waits for the lock
	for i := range n {
		home.Send(id, wire.Append(nil, &wire.Deliver{Commands: []wire.Command{{ID: fmt.Sprint("c-", i), Device: "dev-1", Name: "x", Payload: []byte(`{}`), State: wire.StateSent, Created: 1}}}))
	}
	time.Sleep(300 * time.Millisecond) // the rest reach the socket's queue
	h.reconnect(d)
	<-d.Done()
	l.mu.Unlock()
	testkit.WaitFor(t, "every delivered command written to the device", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == n
	})
}

// A frame whose command expired while it waited in the attachment's queue
// is not written: its home reports the command expired.
func TestExpiredFrameNotWritten(t *testing.T) {
	l, err := New(Options{Frontend: "fe-1", Homes: []string{"tcp://127.0.0.1:1"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	written := make(chan string, 3)
	a := l.Attach("dev-1", func(b []byte, _ time.Time) error { written <- string(b); return nil })
	defer a.Detach()
	now := time.Now().UnixNano()
	for _, f := range []frame{{cid: "a", b: []byte("a")}, {cid: "b", expires: now - 1, b: []byte("b")}, {cid: "c", expires: now + int64(time.Hour), b: []byte("c")}} {
		a.push(f)
	}
	for _, want := range []string{"a", "c"} {
		if got := <-written; got != want {
			t.Fatalf("written %q, want %q (b expired)", got, want)
		}
	}
}
