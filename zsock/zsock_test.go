package zsock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/zsock"
)

// The tests close a PUB that may be sending and recycle ROUTERs under a
// flooding peer: the goroutines zmq4 strands then (testkit says why) are
// ignored, and only they.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testkit.PubWriterLeak, testkit.RouterReaderLeak)
}

// runRouter listens on a free port and runs r with handle until the test
// ends.
func runRouter(t *testing.T, o zsock.RouterOptions, handle func(r *zsock.Router, frames [][]byte)) *zsock.Router {
	t.Helper()
	r := zsock.NewRouter("tcp://127.0.0.1:0", o, nil)
	if err := r.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, func(frames [][]byte) { handle(r, frames) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
	})
	return r
}

// echo answers every request "re:<request>".
func echo(r *zsock.Router, frames [][]byte) {
	r.Send(frames[0], append([]byte("re:"), frames[1]...))
}

func dial(t *testing.T, endpoint string, o zsock.DealerOptions) *zsock.Dealer {
	t.Helper()
	if o.Identity == "" {
		o.Identity = zsock.Identity("test")
	}
	d, err := zsock.Dial(endpoint, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// next waits for d's next message and returns its one frame.
func next(t *testing.T, d *zsock.Dealer) string {
	t.Helper()
	select {
	case frames := <-d.Recv():
		if len(frames) != 1 {
			t.Fatalf("%d frames", len(frames))
		}
		return string(frames[0])
	case <-d.Done():
		t.Fatalf("dealer ended: %v", d.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
	return ""
}

// nothing checks that d receives nothing for a while.
func nothing(t *testing.T, d *zsock.Dealer) {
	t.Helper()
	select {
	case frames := <-d.Recv():
		t.Fatalf("received %q", frames)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestIdentity(t *testing.T) {
	a, b := zsock.Identity("storage"), zsock.Identity("storage")
	if a == b {
		t.Fatalf("two identities are both %q", a)
	}
	for _, id := range []string{a, b} {
		if !strings.HasPrefix(id, "storage#") || len(id) != len("storage")+zsock.IdentitySuffixLen {
			t.Fatalf("identity %q", id)
		}
	}
}

// A Dealer's requests reach the Router with the Dealer's identity in front,
// and each Dealer gets the answers to its own requests only.
func TestDealerRouter(t *testing.T) {
	var mu sync.Mutex
	var from []string
	r := runRouter(t, zsock.RouterOptions{}, func(r *zsock.Router, frames [][]byte) {
		mu.Lock()
		from = append(from, string(frames[0]))
		mu.Unlock()
		echo(r, frames)
	})
	if strings.HasSuffix(r.Addr(), ":0") || !strings.HasPrefix(r.Addr(), "tcp://127.0.0.1:") {
		t.Fatalf("router listens on %s", r.Addr())
	}
	id1, id2 := zsock.Identity("peer"), zsock.Identity("peer")
	talkApart(t, r.Addr(), id1, id2)
	mu.Lock()
	defer mu.Unlock()
	n := map[string]int{}
	for _, id := range from {
		n[id]++
	}
	if n[id1] != 3 || n[id2] != 3 || len(n) != 2 {
		t.Fatalf("requests by identity: %v", n)
	}
}

// talkApart dials an echoing router at addr as two dealers of identities
// id1 and id2, and fails unless each gets its own answers, three rounds,
// and nothing more.
func talkApart(t *testing.T, addr, id1, id2 string) {
	t.Helper()
	d1 := dial(t, addr, zsock.DealerOptions{Identity: id1})
	d2 := dial(t, addr, zsock.DealerOptions{Identity: id2})
	for i := range 3 {
		if !d1.Send([]byte("one")) || !d2.Send([]byte("two")) {
			t.Fatal("send refused")
		}
		if got := next(t, d1); got != "re:one" {
			t.Fatalf("round %d: first dealer got %q", i, got)
		}
		if got := next(t, d2); got != "re:two" {
			t.Fatalf("round %d: second dealer got %q", i, got)
		}
	}
	nothing(t, d1)
	nothing(t, d2)
}

// ZMTP carries identities of at most 255 bytes, and zmq4 cut longer ones
// to that silently, suffix first: two Identity()s of a long prefix reached
// the Router as one, and each Dealer got the other's answers. Identity
// keeps its random suffix within the bound, and Dial refuses an identity
// that would be cut.
func TestLongIdentities(t *testing.T) {
	r := runRouter(t, zsock.RouterOptions{}, echo)
	long := strings.Repeat("p", 300)
	id1, id2 := zsock.Identity(long), zsock.Identity(long)
	for _, id := range []string{id1, id2} {
		if len(id) > zsock.MaxIdentityLen || !strings.HasPrefix(long, id[:len(id)-zsock.IdentitySuffixLen]) || id[len(id)-zsock.IdentitySuffixLen] != '#' {
			t.Fatalf("Identity of a %d-byte prefix: %q (%d bytes)", len(long), id, len(id))
		}
	}
	talkApart(t, r.Addr(), id1, id2)
	if d, err := zsock.Dial(r.Addr(), zsock.DealerOptions{Identity: long}); err == nil {
		d.Close()
		t.Fatalf("Dial took an identity of %d bytes, which ZMTP cuts to %d", len(long), zsock.MaxIdentityLen)
	}
}

// SendWait returns once the message is handed to the connection, and says
// why it could not be.
func TestDealerSendWait(t *testing.T) {
	r := runRouter(t, zsock.RouterOptions{}, echo)
	d := dial(t, r.Addr(), zsock.DealerOptions{})
	if err := d.SendWait([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if got := next(t, d); got != "re:ping" {
		t.Fatalf("got %q", got)
	}
	d.Close()
	if err := d.SendWait([]byte("after")); !errors.Is(err, zsock.ErrClosed) {
		t.Fatalf("SendWait on a closed dealer: %v", err)
	}
}

// Written hands back the bytes of each message Send was given, once
// written, in the order sent, and only then: the peer has each message as
// sent even though its bytes are overwritten as soon as they are handed
// back. SendWait's are not handed back.
func TestDealerWritten(t *testing.T) {
	r := runRouter(t, zsock.RouterOptions{}, echo)
	written := make(chan []byte, 100)
	d := dial(t, r.Addr(), zsock.DealerOptions{Written: func(b []byte) {
		got := slices.Clone(b)
		for i := range b {
			b[i] = 'X' // as a user filling it again would
		}
		written <- got
	}})
	const n = 50
	msgs := make([][]byte, n)
	for i := range msgs {
		msgs[i] = fmt.Appendf(nil, "message %02d", i)
		if !d.Send(msgs[i]) {
			t.Fatalf("send %d refused", i)
		}
	}
	for i := range n {
		if got := next(t, d); got != fmt.Sprintf("re:message %02d", i) {
			t.Fatalf("answer %d: %q", i, got)
		}
		select {
		case b := <-written:
			if want := fmt.Sprintf("message %02d", i); string(b) != want {
				t.Fatalf("written %d: %q, want %q", i, b, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d answered, never handed back", i)
		}
	}
	if err := d.SendWait([]byte("wait")); err != nil {
		t.Fatal(err)
	}
	if got := next(t, d); got != "re:wait" {
		t.Fatalf("got %q", got)
	}
	select {
	case b := <-written:
		t.Fatalf("SendWait's message handed back: %q", b)
	default:
	}
}

// Why each connection needs an identity of its own: a zmq4 ROUTER answers
// every connection whose peer has the identity, so a socket that shares an
// earlier one's identity gets that one's answers too.
func TestSharedIdentityGetsOthersAnswers(t *testing.T) {
	r := runRouter(t, zsock.RouterOptions{}, echo)
	id := zsock.Identity("peer")
	d1 := dial(t, r.Addr(), zsock.DealerOptions{Identity: id})
	// An answer shows the ROUTER has taken d1's connection: it takes each
	// once its handshake is done, on a goroutine of its own, in no set
	// order.
	d1.Send([]byte("zero"))
	if got := next(t, d1); got != "re:zero" {
		t.Fatalf("first dealer got %q", got)
	}
	d2 := dial(t, r.Addr(), zsock.DealerOptions{Identity: id})
	d2.Send([]byte("two"))
	if got := next(t, d2); got != "re:two" {
		t.Fatalf("second dealer got %q", got)
	}
	d1.Send([]byte("one"))
	got := []string{next(t, d1), next(t, d1)}
	if got[0] != "re:two" && got[1] != "re:two" {
		t.Fatalf("the first dealer got %q, not the other's answer too", got)
	}
}

// A peer that stops reading stalls a Dealer's send; the watchdog closes the
// socket within SendStall, and the Dealer ends with ErrStalled.
func TestDealerStall(t *testing.T) {
	r := runRouter(t, zsock.RouterOptions{}, echo)
	px := tcpproxy.Start(t, strings.TrimPrefix(r.Addr(), "tcp://"))
	const stall = 300 * time.Millisecond
	d := dial(t, px.Endpoint(), zsock.DealerOptions{SendStall: stall})
	d.Send([]byte("ping"))
	if got := next(t, d); got != "re:ping" {
		t.Fatalf("got %q", got)
	}
	px.FreezeRequests()
	big := make([]byte, 64<<10)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var refusedSince time.Time
	for ended := false; !ended; {
		select {
		case <-d.Done():
			ended = true
		case <-tick.C:
			if !d.Send(big) && refusedSince.IsZero() {
				refusedSince = time.Now() // the sender is stuck on one send
			}
			if time.Since(start) > 30*time.Second {
				t.Fatal("the dealer did not end within 30s of a peer that stopped reading")
			}
		}
	}
	if !errors.Is(d.Err(), zsock.ErrStalled) {
		t.Fatalf("dealer ended with %v, want ErrStalled", d.Err())
	}
	if !refusedSince.IsZero() {
		if took := time.Since(refusedSince); took > stall+2*time.Second {
			t.Errorf("the dealer ended %v after its queue filled, SendStall %v", took, stall)
		}
	}
	if d.Send([]byte("after")) {
		t.Fatal("an ended dealer took a message")
	}
}

// A Dealer whose peer goes away ends; Close is idempotent and says why.
func TestDealerEnds(t *testing.T) {
	r := runRouter(t, zsock.RouterOptions{}, echo)
	d := dial(t, r.Addr(), zsock.DealerOptions{})
	// Once answered, the connection is one the router closes with itself
	// (zmq4 leaves open a connection it accepts while it closes).
	d.Send([]byte("ping"))
	if got := next(t, d); got != "re:ping" {
		t.Fatalf("got %q", got)
	}
	r.Close()
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the dealer did not end when its peer closed")
	}
	if d.Err() == nil || errors.Is(d.Err(), zsock.ErrClosed) {
		t.Fatalf("ended with %v, want the connection's error", d.Err())
	}
	d.Close()
	d.Close()

	d2 := dial(t, runRouter(t, zsock.RouterOptions{}, echo).Addr(), zsock.DealerOptions{})
	d2.Close()
	d2.Close()
	if !errors.Is(d2.Err(), zsock.ErrClosed) {
		t.Fatalf("closed dealer: %v", d2.Err())
	}
	if _, err := zsock.Dial(r.Addr(), zsock.DealerOptions{}); err == nil {
		t.Fatal("a dealer without an identity dialled")
	}
}

// A peer that stops reading freezes a ROUTER's sends to every peer; the
// watchdog recycles the socket on the same address, and peers that connect
// again are served.
func TestRouterRecycles(t *testing.T) {
	r, _, _, addr := stalledRouter(t)
	if r.Addr() != addr {
		t.Fatalf("listening on %s after the recycle, was %s", r.Addr(), addr)
	}
	// A peer that connects after the recycle is served on the same address.
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Until the new socket listens, a dial fails or reaches the old
		// one as it closes: dial again.
		d, err := zsock.Dial(addr, zsock.DealerOptions{Identity: zsock.Identity("after")})
		if err == nil {
			d.Send([]byte("hello"))
			select {
			case frames := <-d.Recv():
				d.Close()
				if string(frames[0]) != "re:hello" {
					t.Fatalf("got %q", frames[0])
				}
				return
			case <-time.After(500 * time.Millisecond):
			}
			d.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the recycled router serves no one: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRouterLifecycle(t *testing.T) {
	r := zsock.NewRouter("tcp://127.0.0.1:0", zsock.RouterOptions{}, nil)
	if err := r.Run(context.Background(), nil); err == nil {
		t.Fatal("a router ran before it listened")
	}
	if err := r.Listen(); err != nil {
		t.Fatal(err)
	}
	if err := r.Listen(); err != nil {
		t.Fatalf("second listen: %v", err)
	}
	r.Close()
	r.Close()
	if err := r.Run(context.Background(), nil); err == nil {
		t.Fatal("a closed router ran")
	}
	if err := r.Listen(); !errors.Is(err, zsock.ErrClosed) {
		t.Fatalf("listen after close: %v", err)
	}
	// Close ends Run.
	r2 := zsock.NewRouter("tcp://127.0.0.1:0", zsock.RouterOptions{}, nil)
	if err := r2.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	running := make(chan struct{})
	var once sync.Once
	go func() { done <- r2.Run(context.Background(), func([][]byte) { once.Do(func() { close(running) }) }) }()
	dial(t, r2.Addr(), zsock.DealerOptions{}).Send([]byte("x"))
	select {
	case <-running:
	case <-time.After(10 * time.Second):
		t.Fatal("Run received nothing")
	}
	r2.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end Run")
	}
}

// A Sub drains its socket into its buffer whatever its user does; what does
// not fit is dropped and counted, and the messages kept come out in order.
func TestSubOverflow(t *testing.T) {
	pub, err := zsock.ListenPub("tcp://127.0.0.1:0", 10000)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	var overflows atomic.Int32
	sub, err := zsock.Subscribe(pub.Addr(), zsock.SubOptions{Buffer: 4, OnOverflow: func() { overflows.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// The subscription reaches the PUB asynchronously: publish until one
	// arrives.
	deadline := time.Now().Add(10 * time.Second)
warm:
	for {
		pub.Send([]byte("warm"))
		select {
		case <-sub.Recv():
			break warm
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing arrived")
		}
	}
	for i := range 1000 {
		pub.Send([]byte{byte(i >> 8), byte(i)})
	}
	for overflows.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no overflow")
		}
		time.Sleep(time.Millisecond)
	}
	prev := -1
	for len(sub.Recv()) > 0 {
		frames := <-sub.Recv()
		if bytes.Equal(frames[0], []byte("warm")) {
			continue
		}
		i := int(frames[0][0])<<8 | int(frames[0][1])
		if i <= prev {
			t.Fatalf("message %d after %d", i, prev)
		}
		prev = i
	}
	pub.Close()
	select {
	case <-sub.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the sub did not end when its PUB closed")
	}
	sub.Close()
}

// Buffers gives back what was put, keeps no more than its bound of
// buffers nor any larger than its size bound, lets go of a kept buffer too
// small for the size asked, and poisons what is put in test binaries.
func TestBuffers(t *testing.T) {
	b := zsock.NewBuffers(2, 16, 64)
	first := b.Get(4)
	if cap(first) < 16 || len(first) != 0 {
		t.Fatalf("new buffer: len %d cap %d, want empty with room for 16", len(first), cap(first))
	}
	first = append(first, "abcd"...)
	b.Put(first)
	if b.Len() != 1 {
		t.Fatalf("%d kept, want 1", b.Len())
	}
	got := b.Get(8)
	if &got[:1][0] != &first[0] || len(got) != 0 {
		t.Fatal("Get after Put: not the buffer put, emptied")
	}
	zsock.PoisonReleasedFrames(true) // off in this binary otherwise
	defer zsock.PoisonReleasedFrames(false)
	b.Put(got)
	if got[:4][0] != 0xEE {
		t.Fatalf("a buffer put while poisoning is on holds %q", got[:4])
	}
	b.Put(make([]byte, 0, 65)) // over the size bound
	b.Put(make([]byte, 0, 32))
	b.Put(make([]byte, 0, 32)) // past the count bound
	if b.Len() != 2 {
		t.Fatalf("%d kept, want the bound 2", b.Len())
	}
	if big := b.Get(1000); cap(big) < 1000 || b.Len() != 1 {
		t.Fatalf("Get(1000) over small kept buffers: cap %d, %d kept; want a new one and one kept buffer let go", cap(big), b.Len())
	}
	b.Drop()
	if b.Len() != 0 {
		t.Fatalf("%d kept after Drop", b.Len())
	}
}

// stalledRouter runs a Router that answers "flood" with 64 KiB and echoes
// the rest, behind a proxy whose replies it freezes, and floods it from a
// dealer through the proxy until its watchdog fires. It returns the
// Router, its count of stalls, the stuck dealer and the address the
// Router listened on before.
func stalledRouter(t *testing.T) (*zsock.Router, *atomic.Int32, *zsock.Dealer, string) {
	t.Helper()
	stalls := new(atomic.Int32)
	big := make([]byte, 64<<10)
	r := runRouter(t, zsock.RouterOptions{SendStall: 300 * time.Millisecond, OnStall: func() { stalls.Add(1) }},
		func(r *zsock.Router, frames [][]byte) {
			if string(frames[1]) == "flood" {
				r.Send(frames[0], big)
				return
			}
			echo(r, frames)
		})
	addr := r.Addr()
	px := tcpproxy.Start(t, strings.TrimPrefix(addr, "tcp://"))
	stuck := dial(t, px.Endpoint(), zsock.DealerOptions{SendStall: time.Minute, SendQueue: 4096})
	stuck.Send([]byte("ping"))
	if got := next(t, stuck); got != "re:ping" {
		t.Fatalf("got %q", got)
	}
	px.FreezeReplies()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for stalls.Load() == 0 {
		<-tick.C
		stuck.Send([]byte("flood"))
		if time.Now().After(deadline) {
			t.Fatal("no stall within 30s of a peer that stopped reading")
		}
	}
	return r, stalls, stuck, addr
}
