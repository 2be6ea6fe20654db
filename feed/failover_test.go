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
	f := startFailover(t)
	fs, r, toA, toB, mk := f.fs, f.r, f.toA, f.toB, counting
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

// TestLateEntriesAfterAFailover: a frontend's entries 1..5 reach the
// feed through middletier A only after entries 6..8 came through B (the
// frontend failed over to B while the feed was behind on A: A's PUB dropped
// them, or the feed's connection to A was down, and they come by gap fill or
// resend). They were never dispatched, and are. Before, the feed kept one
// high-water mark per origin and dropped them as repeats: readers lost them
// with no missed notice.
func TestLateEntriesAfterAFailover(t *testing.T) {
	f := startFailover(t)
	a, fs, r, toA, toB, mk := f.a, f.fs, f.r, f.toA, f.toB, counting
	toB.Next = 6
	toB.send(t, mk(6, 3)...)
	got := r.messages(t, 3, isWarm)
	toA.send(t, mk(1, 5)...)
	newSender(t, a.addrs.Ingest, "end-a.0000000000000001").send(t, msg{device: "end", payload: `{}`})
	seen := map[string]bool{}
	for _, f := range got {
		seen[string(f.Payload)] = true
	}
	for {
		f := r.next(t)
		if f.Type == "missed" {
			t.Logf("missed notice %+v", f)
		}
		if f.Type == "message" && f.Device == "end" {
			break
		}
		if f.Type == "message" {
			seen[string(f.Payload)] = true
		}
	}
	for n := 1; n <= 8; n++ {
		if p := fmt.Sprintf(`{"n":%d}`, n); !seen[p] {
			t.Errorf("entry %d never reached the reader (repeats dropped: %v)", n, metric(t, fs, "ingest_feed_repeats_dropped_total"))
		}
	}
}

// failover is two middletiers, a feed that follows both and a reader of
// every device, warmed up; toA and toB send as one frontend's log
// (fe-1) to each middletier, as across a failover.
type failover struct {
	a, b     *tier
	fs       *feedServer
	r        *reader
	toA, toB *sender
}

func startFailover(t *testing.T) *failover {
	t.Helper()
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
	return &failover{a: a, b: b, fs: fs, r: r,
		toA: newSender(t, a.addrs.Ingest, "fe-1.0000000000000001"),
		toB: newSender(t, b.addrs.Ingest, "fe-1.0000000000000001")}
}

// counting is n messages of device dev whose payloads count from from.
func counting(from, n int) []msg {
	out := make([]msg, n)
	for i := range out {
		out[i] = msg{device: "dev", payload: fmt.Sprintf(`{"n":%d}`, from+i)}
	}
	return out
}
