package middletier_test

import (
	"bytes"
	"fmt"
	"runtime"
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

// TestFetchReadsWithinItsBound: a fetch reply holds at most MaxFetchBytes
// of records (4 MiB), and the middletier reads no more than that for it:
// with 640 records of 60 KiB retained (37.5 MiB), one fetch of up to 4,096
// records allocates a few MiB, not the whole 37.5.
func TestFetchReadsWithinItsBound(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}}, wal.Options{})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	const batches, each, size = 10, 64, 60 << 10
	for b := range batches {
		es := make([][]byte, each)
		for i := range es {
			es[i] = bytes.Repeat([]byte{byte('a' + i%26)}, size)
		}
		fe.Send(t, &wire.Batch{Origin: "fe-1", First: uint64(1 + b*each), Entries: es})
		testkit.Next[*wire.Ack](t, fe)
	}
	// Measured once the stream has published every record: its
	// encoding, some 38 MiB, is none of the fetch's.
	testkit.WaitFor(t, "every record published", 20*time.Second, func() bool {
		return testkit.Metric(t, tr.Reg, "ingest_middletier_published_records_total") == batches*each
	})
	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cons.Send(t, &wire.Fetch{Consumer: "storage", From: 1, Max: 4096})
	fr := testkit.Next[*wire.FetchReply](t, cons)
	runtime.ReadMemStats(&after)
	if n := len(fr.Records); n == 0 || n*size > 4<<20 {
		t.Fatalf("%d records in the reply", n)
	}
	// The reply read (twice: the store, then the entry), encoded, sent and
	// received: some 4 MiB each, 20 in all; reading every record retained
	// took over 80.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d records in the reply; %.1f MiB allocated", len(fr.Records), float64(alloc)/(1<<20))
	if alloc > 40<<20 {
		t.Fatalf("one fetch of a %d-record reply allocated %.1f MiB: the middletier read past MaxFetchBytes", len(fr.Records), float64(alloc)/(1<<20))
	}
}
