package stream_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/stream"
	"github.com/ingest-io/ingest/wal"
)

// TestLiveRestartedMiddletierFromItsStart: a live Follower that subscribes
// again to a middletier whose WAL was created again sees the restart in
// the first stream message of the new connection, whatever sequence it
// starts at: a new subscription is only sent what is published after it,
// so a message below where the Follower is means the sequence went back.
// (It used to see a restart only in a message from sequence 1, which the
// new subscription may well miss, and took every later message for a
// repeat of the old sequence, handing nothing over and reporting nothing
// lost until the new sequence passed the old one.) It then accounts for
// the new sequence from 1, as for any gap: with a consumer endpoint it
// fetches 1 up to that message, without one it reports them lost. Every
// sequence of the new middletier is taken or lost, none silently skipped.
func TestLiveRestartedMiddletierFromItsStart(t *testing.T) {
	for _, c := range []struct {
		name     string
		consumer bool
	}{{"filled", true}, {"no-consumer", false}} {
		t.Run(c.name, func(t *testing.T) {
			mt := testkit.StartMiddletier(t, t.TempDir(), middletier.Options{}, wal.Options{})
			fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
			px := tcpproxy.Start(t, strings.TrimPrefix(mt.Addrs.Stream, "tcp://"))
			ep := stream.Endpoints{Stream: px.Endpoint()}
			if c.consumer {
				ep.Consumer = mt.Addrs.Consumer
			}
			rec := newRecorder()
			f := follow(t, ep, stream.Options{Consumer: "feed", MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
			n := 0
			for rec.taken() == 0 {
				n++
				send(t, fe, n, 1)
				time.Sleep(10 * time.Millisecond)
			}
			send(t, fe, n+1, 500)
			n += 500
			testkit.WaitFor(t, "the old sequence", 20*time.Second, func() bool { return rec.last() == uint64(n) })

			px.Cut()
			testkit.WaitFor(t, "the follower to notice the cut", 20*time.Second, func() bool { return !f.Connected() })
			if err := mt.Stop(); err != nil {
				t.Fatal(err)
			}
			mt2 := testkit.StartMiddletier(t, t.TempDir(), mt.Opts, wal.Options{})
			fe2 := testkit.NewFrontend(t, mt2.Addrs.Ingest, "fe-2.0002")
			m := 0
			testkit.Written(t, mt2.Addrs.Stream, 1, func() { m++; send(t, fe2, m, 1) })
			px.Restore()
			testkit.WaitFor(t, "the follower to subscribe again", 20*time.Second, f.Connected)
			taken := rec.taken()
			deadline := time.Now().Add(10 * time.Second)
			for rec.taken() == taken {
				if time.Now().After(deadline) {
					t.Fatalf("nothing of the new sequence (1..%d, below the old %d) handed over or reported lost", m, n)
				}
				m++
				send(t, fe2, m, 1)
				time.Sleep(20 * time.Millisecond)
			}
			testkit.WaitFor(t, "the new sequence's last", 20*time.Second, func() bool { return rec.last() == uint64(m) })

			rec.mu.Lock()
			defer rec.mu.Unlock()
			if d := rec.data[taken]; !strings.HasPrefix(d, "fe-2.0002/") {
				t.Fatalf("after the restart took %q", d)
			}
			after := rec.seqs[taken:]
			var lost uint64
			var gaps []stream.Gap
			for _, g := range rec.lost {
				if g.From <= uint64(m) {
					lost += g.To - g.From + 1
					gaps = append(gaps, g)
				}
			}
			if uint64(len(after))+lost != uint64(m) {
				t.Fatalf("of the new sequence 1..%d, %d taken (from %d) and %d lost %+v: %d neither handed over nor reported lost",
					m, len(after), after[0], lost, gaps, uint64(m)-uint64(len(after))-lost)
			}
			if c.consumer && (lost != 0 || after[0] != 1 || !strings.HasPrefix(rec.data[taken], "fe-2.0002/1:")) {
				t.Fatalf("with a consumer endpoint: took from %d (%q), lost %+v; want every record from 1", after[0], rec.data[taken], gaps)
			}
		})
	}
}
