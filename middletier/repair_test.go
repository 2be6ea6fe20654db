package middletier_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// TestCheckpointPastRepairedWAL: a middletier whose WAL was repaired
// (--wal.repair: its last segment was cut, and the log ends before a
// checkpoint it had acknowledged) appends new entries under sequences at or
// below that checkpoint. They are new to the durable consumer: a Fetch
// from 0 must hand them over, and nothing may be released before the
// consumer commits them. Before, the old checkpoint stood: the fetch said
// "up to date" past them, and the WAL released them unseen.
func TestCheckpointPastRepairedWAL(t *testing.T) {
	dir := t.TempDir()
	opts := middletier.Options{Consumers: []string{"storage"}, StateInterval: time.Millisecond}
	walOpts := wal.Options{SegmentBytes: 4096}
	tr := startTier(t, dir, opts, walOpts)
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 250)})
	testkit.Next[*wire.Ack](t, fe)
	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	cons.Send(t, &wire.Commit{Consumer: "storage", Seq: 250})
	if ca := testkit.Next[*wire.CommitAck](t, cons); ca.Seq != 250 {
		t.Fatalf("commit ack %+v", ca)
	}
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}

	// Cut the last segment short, as a damaged volume or an operator's
	// mistake would, and open the log with the repair option.
	walDir := filepath.Join(dir, "wal")
	names, err := os.ReadDir(walDir)
	if err != nil {
		t.Fatal(err)
	}
	var segs []string
	for _, n := range names {
		if regexp.MustCompile(`^[0-9]{20}$`).MatchString(n.Name()) {
			segs = append(segs, n.Name())
		}
	}
	slices.Sort(segs)
	if len(segs) == 0 {
		t.Fatal("no segment")
	}
	if err := os.Truncate(filepath.Join(walDir, segs[len(segs)-1]), 100); err != nil {
		t.Fatal(err)
	}
	walOpts.RepairTruncated = true
	tr2 := startTier(t, dir, opts, walOpts)
	kept := tr2.Log.LastIndex()
	if kept >= 250 {
		t.Fatalf("the repaired log ends at %d, want before 250", kept)
	}
	t.Logf("the repaired log ends at %d", kept)

	// A new frontend's entries: acknowledged, so the consumer must get them.
	fe2 := dealer(t, tr2.Addrs.Ingest, "fe-2#1")
	fe2.Send(t, &wire.Batch{Origin: "fe-2", First: 1, Entries: entries(1, 20)})
	if ack := testkit.Next[*wire.Ack](t, fe2); ack.UpTo != 20 {
		t.Fatalf("ack %+v", ack)
	}
	// Let the state keeper run a few times (a write per tick at most).
	cons2 := dealer(t, tr2.Addrs.Consumer, "storage#2")
	cons2.Send(t, &wire.Commit{Consumer: "other", Seq: 1}) // wakes the state keeper
	testkit.Next[*wire.CommitAck](t, cons2)
	time.Sleep(1200 * time.Millisecond)
	if rel := tr2.Log.Released(); rel > kept {
		t.Errorf("released up to %d, past the %d entries the consumer had: fe-2's entries went unseen", rel, kept)
	}
	cons2.Send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 1000})
	fr := testkit.Next[*wire.FetchReply](t, cons2)
	var got int
	for _, b := range fr.Records {
		if rec, err := wire.DecodeRecord(b); err == nil && rec.Origin == "fe-2" {
			got++
		}
	}
	if got != 20 {
		t.Fatalf("fetch from the checkpoint: first %d, last %d, %d records, %d of fe-2's 20 acknowledged entries", fr.First, fr.Last, len(fr.Records), got)
	}
}
