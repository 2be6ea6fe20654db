package feed_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
)

// TestGap breaks the link between the feed and a middletier's feed socket
// while messages are published, then restores it. The jump in sequence is
// noticed; with the middletier's consumer socket the records are fetched and
// delivered in order, without it every reader is told how many it missed.
func TestGap(t *testing.T) {
	for _, fill := range []bool{true, false} {
		t.Run(fmt.Sprintf("fill=%v", fill), func(t *testing.T) {
			// A durable consumer that never commits keeps the WAL's records.
			tr := startTier(t, middletier.Options{Consumers: []string{"storage"}})
			px := tcpproxy.Start(t, tr.addrs.Feed[len("tcp://"):])
			src := feed.Source{Feed: px.Endpoint()}
			if fill {
				src.Consumer = tr.addrs.Consumer
			}
			fs := startFeed(t, feed.Options{Sources: []feed.Source{src}})
			fe := newSender(t, tr.addrs.Ingest, "fe-1.0000000000000001")
			// Warm up with a device the reader follows.
			r := tickedReader(t, fs, fe, token(t, "feed:read", nil))

			before := r.messagesOf(t, fe, 5, 0)

			px.Cut()
			testkit.WaitFor(t, "the feed to notice the cut", 10*time.Second, func() bool { return !fs.s.Ready() })
			published := testkit.Metric(t, tr.reg, "ingest_middletier_published_records_total")
			var missing []msg
			for i := range 3 {
				for j := range 10 {
					missing = append(missing, msg{device: "dev", payload: fmt.Sprintf(`{"n":%d}`, 5+i*10+j)})
				}
				fe.send(t, missing[i*10:]...)
			}
			testkit.WaitFor(t, "the middletier to publish", 10*time.Second, func() bool {
				return testkit.Metric(t, tr.reg, "ingest_middletier_published_records_total") >= published+30
			})
			// Published is not yet written: the feed socket writes from a
			// queue, and what it writes after the link is back reaches the
			// feed and makes no gap. Ticks until one reaches a probe of
			// its own, written after the 30; they are in the gap too.
			testkit.Written(t, tr.addrs.Feed, tr.Log.LastIndex(), func() { fe.send(t, msg{device: "tick", payload: `{}`}) })
			px.Restore()

			// Ticks until one arrives: the first stream message after the
			// link is back reveals the gap.
			var seen []frame
			waitTick(t, fe, r, func(f frame) { seen = append(seen, f) })
			if fill {
				var ns []string
				for _, f := range seen {
					if f.Type != "message" {
						t.Fatalf("unexpected %+v", f)
					}
					if f.Device == "dev" {
						ns = append(ns, string(f.Payload))
					}
				}
				if len(ns) != 30 {
					t.Fatalf("after the gap got %d of 30 messages: %q", len(ns), ns)
				}
				for i, p := range ns {
					if want := fmt.Sprintf(`{"n":%d}`, 5+i); p != want {
						t.Fatalf("message %d is %s, want %s", i, p, want)
					}
				}
				if metric(t, fs, "ingest_feed_gap_records_total") < 30 {
					t.Errorf("gap records %v", metric(t, fs, "ingest_feed_gap_records_total"))
				}
			} else {
				var lost uint64
				for _, f := range seen {
					if f.Type == "missed" {
						if f.Reason != "gap" || f.Middletier != "mt-0" || f.To-f.From+1 != f.Count {
							t.Fatalf("notice %+v", f)
						}
						lost += f.Count
					} else if f.Device == "dev" {
						t.Fatalf("a message from the gap arrived: %+v", f)
					}
				}
				if lost < 30 {
					t.Fatalf("told of %d missed messages, want at least 30", lost)
				}
			}
			if metric(t, fs, "ingest_feed_gaps_total") < 1 {
				t.Error("no gap counted")
			}
			// Sequences go on from there without a hole.
			after := r.messagesOf(t, fe, 3, 100)
			if after[0].Seq <= before[len(before)-1].Seq {
				t.Fatalf("sequence went back: %d after %d", after[0].Seq, before[len(before)-1].Seq)
			}
		})
	}
}

// waitTick sends a message from device "tick" every 20ms until r gets one,
// handing every other frame to other (nil: none expected).
func waitTick(t *testing.T, fe *sender, r *reader, other func(frame)) {
	t.Helper()
	testkit.WaitFor(t, "a tick", 10*time.Second, func() bool {
		fe.send(t, msg{device: "tick", payload: `{}`})
		timeout := time.After(20 * time.Millisecond)
		for {
			select {
			case f := <-r.frames:
				if f.Type == "message" && f.Device == "tick" {
					return true
				}
				if other == nil {
					t.Fatalf("unexpected %+v", f)
				}
				other(f)
			case <-timeout:
				return false
			}
		}
	})
}

// tickedReader dials a reader of devices "dev" and "tick" and waits for a
// tick: the feed follows the middletier, and the reader gets what it
// sends from then on.
func tickedReader(t *testing.T, fs *feedServer, fe *sender, tok string) *reader {
	t.Helper()
	r := dialReader(t, fs.url, tok, nil)
	r.run(t)
	r.subscribe(t, `{"type":"subscribe","devices":["dev","tick"]}`)
	waitTick(t, fe, r, nil)
	return r
}

// messagesOf sends n messages from "dev" numbered from first and returns
// them as r receives them, skipping ticks.
func (r *reader) messagesOf(t *testing.T, fe *sender, n, first int) []frame {
	t.Helper()
	msgs := make([]msg, n)
	for i := range msgs {
		msgs[i] = msg{device: "dev", payload: fmt.Sprintf(`{"n":%d}`, first+i)}
	}
	fe.send(t, msgs...)
	got := r.messages(t, n, func(f frame) bool { return f.Type == "message" && f.Device == "tick" })
	for i, f := range got {
		if want := fmt.Sprintf(`{"n":%d}`, first+i); string(f.Payload) != want || (i > 0 && f.Seq != got[i-1].Seq+1) {
			t.Fatalf("message %d: %+v", i, f)
		}
	}
	return got
}
