package feed_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
)

// TestResume: a reader that names a sequence it wants to resume from gets
// the records from there (filtered like the live ones) before the live ones.
func TestResume(t *testing.T) {
	tr := startTier(t, middletier.Options{Consumers: []string{"storage"}})
	fs := startFeed(t, feed.Options{
		Sources:   []feed.Source{{Feed: tr.addrs.Feed, Consumer: tr.addrs.Consumer}},
		MaxResume: 8,
	})
	fe := newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
	tok := token(t, "feed:read", nil)
	a := tickedReader(t, fs, fe, tok)

	// Ten messages, with one of another device between each.
	for i := range 10 {
		fe.send(t, msg{device: "dev", payload: fmt.Sprintf(`{"n":%d}`, i)}, msg{device: "other", payload: `{}`})
	}
	got := a.messages(t, 10, nil)

	// Resume from message 6: 6..9 replayed, "other" filtered out.
	b := dialReader(t, fs.url, tok, nil)
	b.run(t)
	sub := b.subscribe(t, fmt.Sprintf(`{"type":"subscribe","devices":["dev"],"from":{"mt-0":%d,"mt-9":1}}`, got[6].Seq))
	if live := sub.Live["mt-0"]; live != got[9].Seq+2 {
		t.Fatalf("live from %d, want %d", live, got[9].Seq+2)
	}
	// mt-9 is not followed: an error frame, before or after the replay
	// (the order of middletiers in from is not defined).
	unavailable := 0
	isUnavailable := func(f frame) bool {
		if f.Type == "error" && f.Code == "resume_unavailable" {
			unavailable++
			return true
		}
		return false
	}
	replayed := b.messages(t, 4, isUnavailable)
	for i, f := range replayed {
		if want := got[6+i]; f.Seq != want.Seq || string(f.Payload) != string(want.Payload) || f.Origin != want.Origin || f.Index != want.Index {
			t.Fatalf("replayed %+v, want %+v", f, want)
		}
	}
	// Then live.
	fe.send(t, msg{device: "dev", payload: `{"n":10}`})
	if f := b.messages(t, 1, isUnavailable)[0]; string(f.Payload) != `{"n":10}` {
		t.Fatalf("live message %+v", f)
	}
	if unavailable != 1 {
		t.Fatalf("%d resume_unavailable errors, want 1", unavailable)
	}

	// Resume from further back than MaxResume: told how many are not replayed.
	c := dialReader(t, fs.url, tok, nil)
	c.run(t)
	c.subscribe(t, fmt.Sprintf(`{"type":"subscribe","from":{"mt-0":%d}}`, got[0].Seq))
	f := c.next(t)
	live := got[9].Seq + 3
	if f.Type != "missed" || f.Reason != "resume_limit" || f.From != got[0].Seq || f.To != live-9 || f.Count != f.To-f.From+1 {
		t.Fatalf("got %+v, want a resume_limit notice up to %d", f, live-9)
	}
	for seq := live - 8; seq < live; seq++ {
		if f := c.next(t); f.Type != "message" || f.Seq != seq {
			t.Fatalf("replayed %+v, want seq %d", f, seq)
		}
	}
	if n := metric(t, fs, "ingest_feed_replayed_records_total"); n < 4+8 {
		t.Errorf("replayed records %v", n)
	}
}

// TestSubscribesDuringAReplay: subscribes a reader sends while the feed
// replays for its resume (here a fetch from a consumer socket that never
// answers) wait and are answered after it; the feed's keepalive goes on
// meanwhile. Before, the second waiting subscribe held the feed's reader
// goroutine, the reader's pong went unread, and the connection was cut at
// the next ping. More than 16 waiting close the connection with 1008.
//
// The resume's fetch fails: the records are told with reason gap, as a
// lost part of the stream is (the middletier may hold them still, and a
// resume later may get them). Before, they were reported released, which
// says the middletier no longer holds them.
func TestSubscribesDuringAReplay(t *testing.T) {
	tr := startTier(t, middletier.Options{})
	ln := testkit.Listen(t) // takes connections and answers nothing
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for len(accepted) > 0 {
			(<-accepted).Close()
		}
	})
	fs := startFeed(t, feed.Options{
		Sources:      []feed.Source{{Feed: tr.addrs.Feed, Consumer: "tcp://" + ln.Addr().String()}},
		FetchTimeout: 4 * time.Second,
		PingInterval: 200 * time.Millisecond,
		PongTimeout:  300 * time.Millisecond,
	})
	fe := newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
	tok := token(t, "feed:read", nil)
	a := tickedReader(t, fs, fe, tok)
	fe.send(t, msg{device: "dev", payload: `{"n":0}`})
	got := a.messages(t, 1, nil)

	resume := fmt.Sprintf(`{"type":"subscribe","from":{"mt-0":%d}}`, got[0].Seq)
	b := dialReader(t, fs.url, tok, nil)
	b.run(t)
	live := b.subscribe(t, resume).Live["mt-0"]
	for range 3 {
		if err := b.c.Write(t.Context(), websocket.MessageText, []byte(`{"type":"subscribe","devices":["dev"]}`)); err != nil {
			t.Fatal(err)
		}
	}
	if f := b.next(t); f.Type != "missed" || f.Reason != "gap" || f.From != got[0].Seq || f.To != live-1 || f.Count != live-got[0].Seq {
		t.Fatalf("after a failed fetch: %+v, want a gap notice for %d…%d", f, got[0].Seq, live-1)
	}
	answers := 0
	for answers < 3 {
		switch f := b.next(t); f.Type {
		case "subscribed":
			answers++
		case "missed", "message":
		default:
			t.Fatalf("during and after the replay: %+v", f)
		}
	}

	c := dialReader(t, fs.url, tok, nil)
	c.run(t)
	c.subscribe(t, resume)
	for range 18 {
		c.c.Write(t.Context(), websocket.MessageText, []byte(`{"type":"subscribe"}`))
	}
	for f := range c.frames {
		t.Logf("frame %+v", f)
	}
	if code := closeStatus(c.err); code != websocket.StatusPolicyViolation {
		t.Fatalf("18 subscribes waiting: ended with %v, want close 1008", c.err)
	}
}

// TestResumeAcrossAFailover: a message is delivered once per connection,
// and a resume repeats nothing (docs/protocol.md): a resume from both
// middletiers of a failover writes once the entries the frontend sent to
// both. Before, the replay wrote them twice.
func TestResumeAcrossAFailover(t *testing.T) {
	f := startFailover(t)
	a, fs, r, toA, toB, mk := f.a, f.fs, f.r, f.toA, f.toB, counting
	toA.send(t, mk(1, 5)...)
	got := r.messages(t, 5, isWarm)
	toB.Next = 3
	toB.send(t, mk(3, 6)...)
	got = append(got, r.messages(t, 3, isWarm)...)
	// B holds fe-1's entries 3..8 at contiguous sequences ending at got[7]'s.
	fromA, fromB := got[0].Seq, got[7].Seq-5
	r2 := dialReader(t, fs.url, token(t, "feed:read", nil), nil)
	r2.run(t)
	r2.subscribe(t, fmt.Sprintf(`{"type":"subscribe","devices":["dev"],"from":{"mt-a":%d,"mt-b":%d}}`, fromA, fromB))
	newSender(t, a.addrs.Ingest, "end-a.0000000000000001").send(t, msg{device: "dev", payload: `{"end":true}`})
	count := map[uint64]int{}
	for {
		f := r2.next(t)
		if f.Type != "message" {
			t.Logf("frame %+v", f)
			continue
		}
		if string(f.Payload) == `{"end":true}` {
			break
		}
		count[f.Index]++
	}
	for i := uint64(1); i <= 8; i++ {
		if count[i] != 1 {
			t.Errorf("entry %d (origin fe-1) delivered %d times on one connection, want 1", i, count[i])
		}
	}
}
