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

// A live Follower that subscribes again to a middletier whose WAL was
// created again sees the restart in the first stream message of the new
// connection, whatever sequence it starts at: a new subscription is only
// sent what is published after it, so a message below where the Follower
// is means the sequence went back. It used to see a restart only in a
// message from sequence 1 (which the new subscription may well miss), and
// took every later message for a repeat of the old sequence, handing
// nothing over, and reporting nothing lost, until the new sequence passed
// the old one.
func TestLiveRestartedMiddletierAfterReconnect(t *testing.T) {
	mt := testkit.StartMiddletier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	px := tcpproxy.Start(t, strings.TrimPrefix(mt.Addrs.Stream, "tcp://"))
	rec := newRecorder()
	f := follow(t, stream.Endpoints{Stream: px.Endpoint()}, stream.Options{Consumer: "feed", MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
	n := 0
	for rec.taken() == 0 { // the subscription reaches the PUB asynchronously
		n++
		send(t, fe, n, 1)
		time.Sleep(10 * time.Millisecond)
	}
	send(t, fe, n+1, 1000)
	n += 1000
	testkit.WaitFor(t, "the old sequence", 20*time.Second, func() bool { return rec.last() == uint64(n) })

	px.Cut()
	testkit.WaitFor(t, "the follower to notice the cut", 20*time.Second, func() bool { return !f.Connected() })
	if err := mt.Stop(); err != nil {
		t.Fatal(err)
	}
	opts := mt.Opts
	mt2 := testkit.StartMiddletier(t, t.TempDir(), opts, wal.Options{})
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
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if d := rec.data[taken]; !strings.HasPrefix(d, "fe-2.0002/") {
		t.Fatalf("after the restart took %q", d)
	}
}
