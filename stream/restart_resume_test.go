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

// A durable Follower that resumed from a checkpoint and has had nothing to
// commit since (so no CommitAck yet) still knows that checkpoint: when the
// middletier comes back with its WAL created again, and has by then more
// records than the Follower had taken of the old sequence, the Follower
// starts over from its checkpoint at the new middletier (1), and takes
// every record of the new sequence. It used to compare the new checkpoint
// only with the checkpoints acknowledged since it resumed (none), took the
// new sequence for the old one, went on from the old position and
// committed past the new records it had never taken.
func TestDurableRestartedMiddletierBeforeAnyAck(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{})
	send(t, fe, 1, 200)
	// An earlier run of the writer took and committed the 200.
	first := newRecorder()
	f1 := follow(t, ep, stream.Options{Durable: true}, first)
	testkit.WaitFor(t, "the first run's records", 20*time.Second, func() bool { return first.taken() == 200 })
	waitCheckpoint(t, mt, "storage", 200)
	if err := f1.stop(); err != nil {
		t.Fatal(err)
	}

	// This run resumes after 200 and has nothing to take or commit.
	pxs := tcpproxy.Start(t, strings.TrimPrefix(ep.Stream, "tcp://"))
	pxc := tcpproxy.Start(t, strings.TrimPrefix(ep.Consumer, "tcp://"))
	rec := newRecorder()
	f := follow(t, stream.Endpoints{Stream: pxs.Endpoint(), Consumer: pxc.Endpoint()},
		stream.Options{Durable: true, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
	testkit.WaitFor(t, "caught up", 20*time.Second, f.CaughtUp)

	// The middletier comes back over an empty directory, and takes 250
	// records before the Follower reaches it again.
	pxs.Cut()
	pxc.Cut()
	testkit.WaitFor(t, "the follower to notice the cut", 20*time.Second, func() bool { return !f.Connected() })
	if err := mt.Stop(); err != nil {
		t.Fatal(err)
	}
	opts := mt.Opts
	opts.StateDir = ""
	mt2 := testkit.StartMiddletier(t, t.TempDir(), opts, wal.Options{})
	send(t, testkit.NewFrontend(t, mt2.Addrs.Ingest, "fe-2.0002"), 1, 250)
	pxs.Restore()
	pxc.Restore()

	waitCheckpoint(t, mt2, "storage", 250)
	rec.check(t, 1, 250, "fe-2.0002", 1)
}
