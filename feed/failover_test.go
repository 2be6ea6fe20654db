package feed_test

import (
	"fmt"
	"testing"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/middletier"
)

// TestTwoMiddletiers: the feed follows two middletiers. A frontend's log
// moves from one to the other and sends some entries again (as after a
// failover): readers get each entry once, in order.
func TestTwoMiddletiers(t *testing.T) {
	a := startTier(t, middletier.Options{ID: "mt-a"})
	b := startTier(t, middletier.Options{ID: "mt-b"})
	fs := startFeed(t, feed.Options{Sources: []feed.Source{
		{Feed: a.addrs.Feed, Consumer: a.addrs.Consumer},
		{Feed: b.addrs.Feed, Consumer: b.addrs.Consumer},
	}})
	r := dialReader(t, fs.url, token(t, "feed:read", nil), nil)
	r.run(t)
	r.subscribe(t, `{"type":"subscribe"}`)
	warm(t, newSender(t, a.addrs.Ingest, "warm-a.0000000000000001"), r)
	warm(t, newSender(t, b.addrs.Ingest, "warm-b.0000000000000001"), r)

	toA := newSender(t, a.addrs.Ingest, "fe-1.0000000000000001")
	toB := newSender(t, b.addrs.Ingest, "fe-1.0000000000000001")
	mk := func(from, n int) []msg {
		out := make([]msg, n)
		for i := range out {
			out[i] = msg{device: "dev", payload: fmt.Sprintf(`{"n":%d}`, from+i)}
		}
		return out
	}
	toA.send(t, mk(1, 5)...)
	got := r.messages(t, 5, isWarm)
	// Entries 3..8 to the other middletier: 3..5 again.
	toB.Next = 3
	toB.send(t, mk(3, 6)...)
	toB.send(t, msg{device: "end", payload: `{}`})
	got = append(got, r.messages(t, 4, isWarm)...)
	for i, f := range got[:8] {
		if want := fmt.Sprintf(`{"n":%d}`, i+1); string(f.Payload) != want || f.Index != uint64(i+1) {
			t.Fatalf("message %d: %+v, want %s", i, f, want)
		}
	}
	if got[0].Middletier != "mt-a" || got[7].Middletier != "mt-b" {
		t.Fatalf("middletiers %q and %q", got[0].Middletier, got[7].Middletier)
	}
	if f := got[8]; f.Device != "end" {
		t.Fatalf("after 8 got %+v", f)
	}
	if n := metric(t, fs, "ingest_feed_repeats_dropped_total"); n != 3 {
		t.Fatalf("repeats dropped %v, want 3", n)
	}
}
