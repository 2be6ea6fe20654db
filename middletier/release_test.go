package middletier_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// TestReleaseAheadOfPublisher: a durable consumer may commit records the
// publisher has not published yet (it fetched them, or commits what it
// was told is durable), and the WAL is released up to its checkpoint and
// truncated. The publisher, behind, must go on from what the WAL still
// holds (subscribers fetch the gap) rather than fail the middletier on
// the entries truncated under its cursor. Sixty batches of 4,000 entries over
// 4 KiB segments, each committed as soon as it is acknowledged.
func TestReleaseAheadOfPublisher(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}, StateInterval: time.Millisecond},
		wal.Options{SegmentBytes: 4096, MarkInterval: time.Millisecond})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	const rounds, each = 60, 4000
	next := 1
	for range rounds {
		es := make([][]byte, each)
		for i := range es {
			es[i] = fmt.Appendf(nil, "entry-%08d", next+i)
		}
		fe.Send(t, &wire.Batch{Origin: "fe-1", First: uint64(next), Entries: es})
		next += each
		ack := testkit.Next[*wire.Ack](t, fe)
		if ack.UpTo != uint64(next-1) {
			t.Fatalf("ack %+v, want up to %d", ack, next-1)
		}
		cons.Send(t, &wire.Commit{Consumer: "storage", Seq: ack.UpTo})
		if ca := testkit.Next[*wire.CommitAck](t, cons); ca.Seq != ack.UpTo {
			t.Fatalf("commit ack %+v, want %d", ca, ack.UpTo)
		}
	}
	if err := tr.Stop(); err != nil {
		t.Fatalf("the middletier stopped with %v", err)
	}
}
