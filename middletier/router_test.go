package middletier_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// startTier runs a middletier with its data in dir until the test ends. Its
// id is "mt-test" unless opts names it.
func startTier(t *testing.T, dir string, opts middletier.Options, walOpts wal.Options) *testkit.Middletier {
	t.Helper()
	if opts.ID == "" {
		opts.ID = "mt-test"
	}
	return testkit.StartMiddletier(t, dir, opts, walOpts)
}

func dealer(t *testing.T, endpoint, id string) *testkit.Peer {
	return testkit.Dealer(t, endpoint, id)
}

// commitStorage commits the checkpoint seq of consumer "storage" through
// cons and fails unless the middletier acknowledges that checkpoint.
func commitStorage(t *testing.T, cons *testkit.Peer, seq uint64) {
	t.Helper()
	cons.Send(t, &wire.Commit{Consumer: "storage", Seq: seq})
	if ca := testkit.Next[*wire.CommitAck](t, cons); ca.Seq != seq {
		t.Fatalf("commit ack %+v, want %d", ca, seq)
	}
}

func entries(from, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "entry-%d", from+i)
	}
	return out
}

func TestBatchAckStream(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	sub := testkit.Subscriber(t, tr.Addrs.Stream)
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")

	// The subscription reaches the PUB socket asynchronously: send until the
	// stream shows something, then check what it shows.
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 3)})
	if ack := testkit.Next[*wire.Ack](t, fe); ack.Origin != "fe-1" || ack.UpTo != 3 {
		t.Fatalf("ack %+v", ack)
	}
	recs := testkit.Records(t, tr.Log)
	if len(recs) != 3 {
		t.Fatalf("%d records in the WAL", len(recs))
	}
	for i, r := range recs {
		if r.Origin != "fe-1" || r.Index != uint64(i+1) || !bytes.Equal(r.Data, entries(1, 3)[i]) {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	// Repeats are dropped and acknowledged; new entries after them appended.
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 2, Entries: entries(2, 4)}) // 2..5
	if ack := testkit.Next[*wire.Ack](t, fe); ack.UpTo != 5 {
		t.Fatalf("ack %+v", ack)
	}
	if n := len(testkit.Records(t, tr.Log)); n != 5 {
		t.Fatalf("%d records after an overlapping batch, want 5", n)
	}
	// A gap is answered with resend; a gap the frontend vouches for is not.
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 10, Entries: entries(10, 1)})
	if rs := testkit.Next[*wire.Resend](t, fe); rs.From != 6 {
		t.Fatalf("resend %+v", rs)
	}
	fe.Send(t, &wire.Batch{Origin: "fe-1", Acked: 9, First: 10, Entries: entries(10, 1)})
	if ack := testkit.Next[*wire.Ack](t, fe); ack.UpTo != 10 {
		t.Fatalf("ack %+v", ack)
	}
	// Another origin has its own marks.
	fe.Send(t, &wire.Batch{Origin: "fe-2", First: 1, Entries: entries(1, 2)})
	if ack := testkit.Next[*wire.Ack](t, fe); ack.Origin != "fe-2" || ack.UpTo != 2 {
		t.Fatalf("ack %+v", ack)
	}
	// The stream carries records committed after the subscriber joined, in
	// sequence; earlier ones are fetched.
	seen := uint64(0)
	for seen < tr.Log.LastIndex() {
		s := testkit.Next[*wire.Stream](t, sub)
		if s.Middletier != "mt-test" || (seen != 0 && s.First != seen+1) {
			t.Fatalf("stream message from %d after %d", s.First, seen)
		}
		seen = s.First + uint64(len(s.Records)) - 1
	}
	if got := testkit.Metric(t, tr.Reg, "ingest_middletier_repeats_dropped_total"); got != 2 {
		t.Fatalf("repeats dropped %v, want 2 (entries 2 and 3)", got)
	}
	if got := testkit.Metric(t, tr.Reg, "ingest_middletier_resends_total"); got != 1 {
		t.Fatalf("resends %v, want 1", got)
	}
}

// The marks that drop repeats survive a restart, also for entries the WAL
// has released and truncated.
func TestMarksSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	opts := middletier.Options{Consumers: []string{"storage"}}
	walOpts := wal.Options{SegmentBytes: 4096}
	tr := startTier(t, dir, opts, walOpts)
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	for i := 0; i < 10; i++ {
		fe.Send(t, &wire.Batch{Origin: "fe-1", First: uint64(1 + 50*i), Entries: entries(1+50*i, 50)})
		if ack := testkit.Next[*wire.Ack](t, fe); ack.UpTo != uint64(50*(i+1)) {
			t.Fatalf("ack %+v", ack)
		}
	}
	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	commitStorage(t, cons, 400)
	testkit.WaitFor(t, "truncation", 10*time.Second, func() bool { return tr.Log.FirstIndex() > 300 })
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}

	tr2 := startTier(t, dir, opts, walOpts)
	// Everything again, from 1: all repeats, from truncated and retained entries.
	resendAll(t, tr2, 510, "repeats entered the WAL")
	recs := testkit.Records(t, tr2.Log)
	if last := recs[len(recs)-1]; last.Index != 510 || !bytes.Equal(last.Data, []byte("entry-510")) {
		t.Fatalf("last record %+v", last)
	}
}

func TestFetchAndCommit(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}, MaxFetchRecords: 100}, wal.Options{})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 250)})
	testkit.Next[*wire.Ack](t, fe)

	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	cons.Send(t, &wire.Fetch{Consumer: "storage", From: 1, Max: 1000})
	fr := testkit.Next[*wire.FetchReply](t, cons)
	if fr.First != 1 || len(fr.Records) != 100 || fr.Last != 250 || fr.Oldest != 1 {
		t.Fatalf("fetch reply first %d, %d records, last %d, oldest %d", fr.First, len(fr.Records), fr.Last, fr.Oldest)
	}
	rec, err := wire.DecodeRecord(fr.Records[99])
	if err != nil || rec.Index != 100 {
		t.Fatalf("record 100: %+v %v", rec, err)
	}
	cons.Send(t, &wire.Fetch{Consumer: "storage", From: 251, Max: 10})
	if fr := testkit.Next[*wire.FetchReply](t, cons); len(fr.Records) != 0 || fr.Last != 250 {
		t.Fatalf("fetch past the end: %+v", fr)
	}
	// Nothing is released before the durable consumer commits.
	if got := tr.Log.Released(); got != 0 {
		t.Fatalf("released %d before any commit", got)
	}
	if got := testkit.Metric(t, tr.Reg, "ingest_middletier_consumer_lag_entries"); got != 250 {
		testkit.WaitFor(t, "lag gauge", 10*time.Second, func() bool { return testkit.Metric(t, tr.Reg, "ingest_middletier_consumer_lag_entries") == 250 })
	}
	commitStorage(t, cons, 200)
	if got := tr.Log.Released(); got != 200 {
		t.Fatalf("released %d after commit 200", got)
	}
	// A commit of what was never written changes nothing.
	cons.Send(t, &wire.Commit{Consumer: "storage", Seq: 9999})
	if ca := testkit.Next[*wire.CommitAck](t, cons); ca.Seq != 200 {
		t.Fatalf("commit beyond the log acknowledged as %d", ca.Seq)
	}
}

// TestFetchFromCheckpoint: a Fetch from 0 is answered from the consumer's
// checkpoint + 1, also after the middletier restarts, so that a consumer
// resumes where it committed without keeping state of its own.
func TestFetchFromCheckpoint(t *testing.T) {
	dir := t.TempDir()
	opts := middletier.Options{Consumers: []string{"storage"}}
	tr := startTier(t, dir, opts, wal.Options{})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 250)})
	testkit.Next[*wire.Ack](t, fe)

	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	// Never committed: from the first record.
	cons.Send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 5})
	if fr := testkit.Next[*wire.FetchReply](t, cons); fr.First != 1 || len(fr.Records) != 5 {
		t.Fatalf("fetch from 0 before any commit: first %d, %d records", fr.First, len(fr.Records))
	}
	commitStorage(t, cons, 200)
	cons.Send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 10})
	fr := testkit.Next[*wire.FetchReply](t, cons)
	if fr.First != 201 || len(fr.Records) != 10 || fr.Last != 250 {
		t.Fatalf("fetch from checkpoint: first %d, %d records, last %d", fr.First, len(fr.Records), fr.Last)
	}
	if rec, err := wire.DecodeRecord(fr.Records[0]); err != nil || rec.Index != 201 {
		t.Fatalf("first record after the checkpoint: %+v %v", rec, err)
	}
	// Max 0 asks only where to resume.
	cons.Send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 0})
	if fr := testkit.Next[*wire.FetchReply](t, cons); fr.First != 201 || len(fr.Records) != 0 {
		t.Fatalf("where to resume: first %d, %d records", fr.First, len(fr.Records))
	}
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}

	tr2 := startTier(t, dir, opts, wal.Options{})
	cons2 := dealer(t, tr2.Addrs.Consumer, "storage#2")
	cons2.Send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 1000})
	fr = testkit.Next[*wire.FetchReply](t, cons2)
	if fr.First != 201 || len(fr.Records) != 50 {
		t.Fatalf("after restart: first %d, %d records", fr.First, len(fr.Records))
	}
	// Up to date: an empty reply whose First is past Last.
	cons2.Send(t, &wire.Commit{Consumer: "storage", Seq: 250})
	testkit.Next[*wire.CommitAck](t, cons2)
	cons2.Send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 1000})
	if fr := testkit.Next[*wire.FetchReply](t, cons2); fr.First != 251 || fr.Last != 250 || len(fr.Records) != 0 {
		t.Fatalf("up to date: %+v", fr)
	}
}

func TestBusyAtBound(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}}, wal.Options{MaxEntries: 10})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 10)})
	testkit.Next[*wire.Ack](t, fe)
	// 9 and 10 are repeats; 11 does not fit.
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 9, Entries: entries(9, 3)})
	busy := testkit.Next[*wire.Busy](t, fe)
	if busy.UpTo != 10 || busy.RetryAfter <= 0 {
		t.Fatalf("busy %+v", busy)
	}
	// Once the consumer has them, room is freed and the batch goes in.
	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	cons.Send(t, &wire.Commit{Consumer: "storage", Seq: 10})
	testkit.Next[*wire.CommitAck](t, cons)
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 9, Entries: entries(9, 3)})
	if ack := testkit.Next[*wire.Ack](t, fe); ack.UpTo != 11 {
		t.Fatalf("ack %+v", ack)
	}
	// The batch refused busy is sent again whole: its repeats count once,
	// when it is taken.
	if got := testkit.Metric(t, tr.Reg, "ingest_middletier_repeats_dropped_total"); got != 2 {
		t.Fatalf("repeats dropped %v, want 2 (9 and 10, once)", got)
	}
}

// TestTooLargeLoggedOnce: a batch that can never fit under the WAL's
// bound is answered busy, and the frontend sends it again after every
// busy, for as long as the bound stays as it is. The error that says to
// raise the bound is logged once in a while, not at each of those sends.
// Before, every send logged it: five error lines a second per frontend
// (the busy's retry hint is 200 ms), for good.
func TestTooLargeLoggedOnce(t *testing.T) {
	var logs testkit.Logs
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{Hop: "middletier", MaxBytes: 64})
	r, err := middletier.New(middletier.Options{ID: "mt-test", StateDir: t.TempDir(), IngestAddr: "tcp://127.0.0.1:0",
		ConsumerAddr: "tcp://127.0.0.1:0", StreamAddr: "tcp://127.0.0.1:0"}, l, nil, logs.Logger())
	if err != nil {
		t.Fatal(err)
	}
	testkit.Go(t, "middletier", r.Run)
	fe := dealer(t, r.Addrs().Ingest, "fe-1#1")
	big := bytes.Repeat([]byte("x"), 100)
	const sends = 20
	for range sends {
		fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: [][]byte{big}})
		if busy := testkit.Next[*wire.Busy](t, fe); busy.UpTo != 0 {
			t.Fatalf("busy %+v", busy)
		}
	}
	if n := logs.Count("can never fit"); n != 1 {
		t.Fatalf("a batch over the bound sent %d times: the error logged %d times, want once:\n%s", sends, n, logs.String())
	}
}

func TestInvalidMessagesCounted(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	if err := fe.Sck.Send(zmq4.NewMsg([]byte("not a wire message"))); err != nil {
		t.Fatal(err)
	}
	fe.Send(t, &wire.Ack{Origin: "x", UpTo: 1}) // well-formed, wrong direction
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 1)})
	testkit.Next[*wire.Ack](t, fe)
	if got := testkit.Metric(t, tr.Reg, "ingest_middletier_invalid_messages_total"); got != 2 {
		t.Fatalf("invalid %v, want 2", got)
	}
}

func TestOptionsValidation(t *testing.T) {
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{})
	for _, o := range []middletier.Options{{StateDir: t.TempDir()}, {ID: "x"}, {ID: "x", StateDir: t.TempDir(), Consumers: []string{""}}} {
		if _, err := middletier.New(o, l, nil, nil); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

// A damaged state file does not keep the middletier down: the marks come
// back from the records the WAL retains, and repeats are still dropped.
func TestDamagedStateRecovers(t *testing.T) {
	dir := t.TempDir()
	tr := startTier(t, dir, middletier.Options{}, wal.Options{})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 5)})
	testkit.Next[*wire.Ack](t, fe)
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "middletier-state"), []byte("{garbage"), 0o640); err != nil {
		t.Fatal(err)
	}
	tr2 := startTier(t, dir, middletier.Options{}, wal.Options{})
	resendAll(t, tr2, 6, "1..5 were there before")
}

// resendAll sends entries 1..n of fe-1 to tr from a restarted frontend
// and checks that they are acknowledged up to n and that tr's WAL ends at
// n: what it held already (why) is not appended again.
func resendAll(t *testing.T, tr *testkit.Middletier, n uint64, why string) {
	t.Helper()
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#2")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, int(n))})
	if ack := testkit.Next[*wire.Ack](t, fe); ack.UpTo != n {
		t.Fatalf("ack %+v", ack)
	}
	if got := tr.Log.LastIndex(); got != n {
		t.Fatalf("last index %d after resending 1..%d, want %d: %s", got, n, n, why)
	}
}

// TestCommitsShareStateWrites: commits that arrive within StateInterval of
// the last write of the state file wait for the interval's end and are made
// durable by one write; each is still acknowledged, with its checkpoint.
func TestCommitsShareStateWrites(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}, StateInterval: time.Second}, wal.Options{})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 100)})
	testkit.Next[*wire.Ack](t, fe)
	cons := dealer(t, tr.Addrs.Consumer, "storage#1")
	commitStorage(t, cons, 1)
	before := testkit.Metric(t, tr.Reg, "ingest_middletier_state_writes_total")

	// 40 commits, 5 ms apart: 200 ms, well inside one interval after the
	// write that acknowledged the first. Written one by one they would take
	// 40 writes; sharing, they take one (two if the second's tick falls
	// between them).
	const n = 40
	for seq := uint64(2); seq < 2+n; seq++ {
		cons.Send(t, &wire.Commit{Consumer: "storage", Seq: seq})
		time.Sleep(5 * time.Millisecond)
	}
	var last uint64
	for range n {
		ca := testkit.Next[*wire.CommitAck](t, cons)
		if ca.Seq < last {
			t.Fatalf("commit acks went back from %d to %d", last, ca.Seq)
		}
		last = ca.Seq
	}
	if last != n+1 {
		t.Fatalf("last commit acknowledged at %d, want %d", last, n+1)
	}
	if got := tr.Log.Released(); got != n+1 {
		t.Fatalf("released %d after commit %d", got, n+1)
	}
	writes := testkit.Metric(t, tr.Reg, "ingest_middletier_state_writes_total") - before
	if writes < 1 || writes > 2 {
		t.Fatalf("%d commits took %v writes of the state file, want 1 or 2", n, writes)
	}
}

// The middletier gives each batch's frame back to the ingest socket's
// reads once it has appended the batch's entries, and later batches are
// read into it: with eight frontends sending at once, batches of 20
// entries (over 512 bytes a frame, of the sizes read into released
// buffers), every entry reaches the WAL intact, once. (The tests poison
// released frames: testkit.Main.)
func TestBatchesIntactWhileFramesReused(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	const frontends, batches, each = 8, 60, 20
	entry := func(fe, i int) []byte {
		return fmt.Appendf(nil, "fe-%d entry-%05d %s", fe, i, bytes.Repeat([]byte{byte('a' + (fe+i)%26)}, 20+i%40))
	}
	var wg sync.WaitGroup
	for f := range frontends {
		fe := testkit.NewFrontend(t, tr.Addrs.Ingest, fmt.Sprintf("fe-%d", f))
		wg.Go(func() {
			for b := range batches {
				es := make([][]byte, each)
				for i := range es {
					es[i] = entry(f, b*each+i+1)
				}
				fe.Send(t, es...)
			}
		})
	}
	wg.Wait()
	recs := testkit.Records(t, tr.Log)
	if len(recs) != frontends*batches*each {
		t.Fatalf("%d records in the WAL, want %d", len(recs), frontends*batches*each)
	}
	for _, r := range recs {
		var f int
		if _, err := fmt.Sscanf(r.Origin, "fe-%d", &f); err != nil {
			t.Fatalf("record of origin %q", r.Origin)
		}
		if want := entry(f, int(r.Index)); !bytes.Equal(r.Data, want) {
			t.Fatalf("record %s/%d: %q, want %q", r.Origin, r.Index, r.Data, want)
		}
	}
}

// TestStreamIntactWhileBuffersReused: the stream and the feed socket share
// each message the publisher sends, and the publisher encodes the next
// ones into buffers both have given back (poisoned once given back, in
// the test binary). Both subscribers get every record as the WAL holds it:
// no buffer is written into while a socket still sends it.
func TestStreamIntactWhileBuffersReused(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{FeedAddr: "tcp://127.0.0.1:0"}, wal.Options{})
	subs := []*testkit.Peer{testkit.Subscriber(t, tr.Addrs.Stream), testkit.Subscriber(t, tr.Addrs.Feed)}
	fe := testkit.NewFrontend(t, tr.Addrs.Ingest, "fe-1")
	// Until both subscriptions have reached their sockets, messages are
	// dropped: send a batch at a time until each subscriber has one.
	seen := make([]uint64, len(subs))
	for i, sub := range subs {
		for seen[i] == 0 {
			fe.Send(t, []byte("warm-up"))
			select {
			case msg := <-sub.Msgs:
				m, err := wire.Decode(msg.Frames[0])
				if err != nil {
					t.Fatal(err)
				}
				s := m.(*wire.Stream)
				seen[i] = s.First + uint64(len(s.Records)) - 1
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	const batches, each = 300, 10
	for b := range batches {
		es := make([][]byte, each)
		for i := range es {
			es[i] = fmt.Appendf(nil, "batch-%03d entry-%02d %s", b, i, bytes.Repeat([]byte{byte('a' + (b+i)%26)}, 30+(b*7+i)%200))
		}
		fe.Send(t, es...)
	}
	want := map[uint64][]byte{}
	c, err := tr.Log.Cursor(tr.Log.FirstIndex())
	if err != nil {
		t.Fatal(err)
	}
	for range tr.Log.LastIndex() - tr.Log.FirstIndex() + 1 {
		e, err := c.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		want[e.Index] = bytes.Clone(e.Data)
	}
	last := tr.Log.LastIndex()
	for i, sub := range subs {
		for seen[i] < last {
			s := testkit.Next[*wire.Stream](t, sub)
			for k, r := range s.Records {
				idx := s.First + uint64(k)
				if !bytes.Equal(r, want[idx]) {
					t.Fatalf("subscriber %d, record %d: %q, the WAL holds %q", i, idx, r, want[idx])
				}
			}
			seen[i] = s.First + uint64(len(s.Records)) - 1
		}
	}
}

// TestCheckpointsBounded: the middletier keeps at most 1,024 checkpoints
// of consumers that are not durable (any connection may commit under any
// name); past that, a new name takes the place of the lowest checkpoint.
// Durable consumers' checkpoints are never given up, and a name that kept
// its place resumes from it.
func TestCheckpointsBounded(t *testing.T) {
	dir := t.TempDir()
	tr := startTier(t, dir, middletier.Options{Consumers: []string{"storage"}, StateInterval: 10 * time.Millisecond}, wal.Options{})
	fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
	fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 200)})
	testkit.Next[*wire.Ack](t, fe)
	cons := dealer(t, tr.Addrs.Consumer, "c#1")
	cons.Send(t, &wire.Commit{Consumer: "storage", Seq: 1})
	testkit.Next[*wire.CommitAck](t, cons)

	// Names c0..c1199 with checkpoints rising with the name's number, in
	// rounds of 100 that each wait for their acknowledgements.
	const n, round = 1200, 100
	for i := 0; i < n; i += round {
		for j := i; j < i+round; j++ {
			cons.Send(t, &wire.Commit{Consumer: fmt.Sprintf("c%d", j), Seq: uint64(2 + j/8)})
		}
		for range round {
			testkit.Next[*wire.CommitAck](t, cons)
		}
	}
	var st struct{ Consumers map[string]uint64 }
	testkit.WaitFor(t, "the last commit in the state file", 5*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "middletier-state"))
		if err != nil {
			t.Fatal(err)
		}
		b = b[:bytes.LastIndexByte(b[:len(b)-1], '\n')] // the JSON, before the checksum
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		_, ok := st.Consumers[fmt.Sprintf("c%d", n-1)]
		return ok
	})
	if len(st.Consumers) != 1024+1 || st.Consumers["storage"] != 1 {
		t.Fatalf("state holds %d checkpoints, storage's %d; want 1,024 besides storage's 1", len(st.Consumers), st.Consumers["storage"])
	}
	for c, seq := range st.Consumers {
		if c != "storage" && seq < 2+(n-1024)/8 {
			t.Fatalf("%s kept at %d: a lower checkpoint than the ones given up", c, seq)
		}
	}
	last := fmt.Sprintf("c%d", n-1)
	cons.Send(t, &wire.Fetch{Consumer: last, From: 0, Max: 0})
	if fr := testkit.Next[*wire.FetchReply](t, cons); fr.First != 2+(n-1)/8+1 {
		t.Fatalf("%s resumes at %d, want %d", last, fr.First, 2+(n-1)/8+1)
	}
}

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
		commitStorage(t, cons, ack.UpTo)
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
	commitStorage(t, cons, 250)
	if err := tr.Stop(); err != nil {
		t.Fatal(err)
	}

	// Cut the last segment short, as a damaged volume or an operator's
	// mistake would, and open the log with the repair option.
	cutLastSegment(t, filepath.Join(dir, "wal"))
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

// TestMarksPastLostWAL: a middletier whose WAL lost entries it had made
// durable (its last segment cut and repaired with --wal.repair, or its WAL
// directory lost) while its state file survived must not take a frontend's
// entries for repeats of the lost ones. A frontend that had no
// acknowledgement for them still holds them (its release mark, the batch's
// Acked, is below them): they are to be appended again and acknowledged
// once durable here, or the acknowledgement has the frontend release
// entries that no middletier holds. Before, the per-origin marks of the
// state file stood over the lost entries: the resent batch was all
// repeats, acknowledged up to 250, and the WAL held none of the lost ones.
func TestMarksPastLostWAL(t *testing.T) {
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, walDir string) wal.Options
	}{
		{"repaired", func(t *testing.T, walDir string) wal.Options {
			cutLastSegment(t, walDir)
			return wal.Options{SegmentBytes: 4096, RepairTruncated: true}
		}},
		{"lost", func(t *testing.T, walDir string) wal.Options {
			if err := os.RemoveAll(walDir); err != nil {
				t.Fatal(err)
			}
			return wal.Options{SegmentBytes: 4096}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := middletier.Options{Consumers: []string{"storage"}}
			tr := startTier(t, dir, opts, wal.Options{SegmentBytes: 4096})
			fe := dealer(t, tr.Addrs.Ingest, "fe-1#1")
			fe.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 250)})
			if ack := testkit.Next[*wire.Ack](t, fe); ack.UpTo != 250 {
				t.Fatalf("ack %+v", ack)
			}
			if err := tr.Stop(); err != nil {
				t.Fatal(err)
			}
			walOpts := tc.lose(t, filepath.Join(dir, "wal"))

			tr2 := startTier(t, dir, opts, walOpts)
			kept := tr2.Log.LastIndex()
			if kept >= 250 {
				t.Fatalf("the log ends at %d, want before 250", kept)
			}
			// The frontend never had the acknowledgement (it was lost with
			// the connection): it sends everything again, its release mark 0.
			fe2 := dealer(t, tr2.Addrs.Ingest, "fe-1#2")
			fe2.Send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 250)})
			if ack := testkit.Next[*wire.Ack](t, fe2); ack.UpTo != 250 {
				t.Fatalf("ack %+v", ack)
			}
			held := map[uint64]bool{}
			for _, rec := range testkit.Records(t, tr2.Log) {
				if rec.Origin == "fe-1" {
					held[rec.Index] = true
				}
			}
			var missing []uint64
			for i := uint64(1); i <= 250; i++ {
				if !held[i] {
					missing = append(missing, i)
				}
			}
			if len(missing) > 0 {
				t.Fatalf("acknowledged up to 250 with %d of fe-1's entries in no WAL (%d..%d); the log kept %d",
					len(missing), missing[0], missing[len(missing)-1], kept)
			}
		})
	}
}

// cutLastSegment cuts the last segment of the WAL in walDir to 100 bytes,
// as a damaged volume or an operator's mistake would.
func cutLastSegment(t *testing.T, walDir string) {
	t.Helper()
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
}
