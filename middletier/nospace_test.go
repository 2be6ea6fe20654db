package middletier_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/internal/tmpfs"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// TestSelfFilledDisk: the middletier's own WAL fills its volume, with the
// state file beside it, as the docs ask, until batches are answered busy.
// Then the durable consumer commits everything. The state file, which
// must be durable before the WAL releases, is written in the room the
// WAL kept in reserve: the commit is acknowledged, the WAL truncated, and
// frontends are taken again, with no file removed by hand. Before, the
// state could not be written, so nothing was ever released: busy for good.
func TestSelfFilledDisk(t *testing.T) {
	dir := tmpfs.Mount(t, 1<<20)
	tr := startTier(t, dir, middletier.Options{Consumers: []string{"storage"}, StateInterval: 10 * time.Millisecond},
		wal.Options{SegmentBytes: 16 << 10, NoSpaceRetry: 20 * time.Millisecond, MarkInterval: 10 * time.Millisecond})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	pad := strings.Repeat("p", 200)
	entries := func(from uint64, n int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			out[i] = fmt.Appendf(nil, "e%d|%s", from+uint64(i), pad)
		}
		return out
	}
	send := func(first uint64) wire.Message {
		fe.Send(t, &wire.Batch{Origin: "fe-1", First: first, Entries: entries(first, 50)})
		msg := <-fe.Msgs
		m, err := wire.Decode(msg.Frames[len(msg.Frames)-1])
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	next := uint64(1)
	for busy := 0; busy < 10; {
		switch m := send(next).(type) {
		case *wire.Ack:
			next = m.UpTo + 1
		case *wire.Busy:
			busy++
			time.Sleep(30 * time.Millisecond)
		default:
			t.Fatalf("answered %T", m)
		}
	}
	last := tr.Log.LastIndex()
	t.Logf("the volume full after %d records", last)
	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	cons.Send(t, &wire.Commit{Consumer: "storage", Seq: last})
	select {
	case msg := <-cons.Msgs:
		if m, err := wire.Decode(msg.Frames[len(msg.Frames)-1]); err != nil {
			t.Fatal(err)
		} else if a, ok := m.(*wire.CommitAck); !ok || a.Seq != last {
			t.Fatalf("commit of %d answered %T %+v", last, m, m)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the commit of %d not acknowledged in 10 s; ingest_middletier_state_no_space %v, released %d, first %d",
			last, testkit.Metric(t, tr.Reg, "ingest_middletier_state_no_space"), tr.Log.Released(), tr.Log.FirstIndex())
	}
	testkit.WaitFor(t, "the released segments removed", 10*time.Second, func() bool { return tr.Log.FirstIndex() > 1 })
	testkit.WaitFor(t, "batches taken again", 10*time.Second, func() bool {
		m := send(next)
		if a, ok := m.(*wire.Ack); ok {
			next = a.UpTo + 1
			return true
		}
		time.Sleep(30 * time.Millisecond)
		return false
	})
}
