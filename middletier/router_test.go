package middletier_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// tier is a Router running on loopback over a real WAL.
type tier struct {
	t     *testing.T
	dir   string
	log   *wal.Log
	r     *middletier.Router
	addrs middletier.Addrs
	reg   *prometheus.Registry
	stop  func() error
}

func startTier(t *testing.T, dir string, opts middletier.Options, walOpts wal.Options) *tier {
	t.Helper()
	walOpts.Hop = "middletier"
	l, err := wal.Open(filepath.Join(dir, "wal"), walOpts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if opts.ID == "" {
		opts.ID = "mt-test"
	}
	opts.StateDir = dir
	for _, a := range []*string{&opts.IngestAddr, &opts.ConsumerAddr, &opts.StreamAddr} {
		if *a == "" {
			*a = "tcp://127.0.0.1:0"
		}
	}
	reg := prometheus.NewRegistry()
	r, err := middletier.New(opts, l, reg, nil)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	addrs, err := r.Listen()
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	tr := &tier{t: t, dir: dir, log: l, r: r, addrs: addrs, reg: reg}
	var once sync.Once
	var stopErr error
	tr.stop = func() error {
		once.Do(func() {
			cancel()
			stopErr = <-done
			l.Close()
		})
		return stopErr
	}
	t.Cleanup(func() { tr.stop() })
	return tr
}

// peer is a zmq4 socket with a receive loop, so that tests can wait for a
// message with a deadline.
type peer struct {
	sck  zmq4.Socket
	msgs chan zmq4.Msg
	wg   sync.WaitGroup
}

func newPeer(t *testing.T, sck zmq4.Socket, endpoint string) *peer {
	t.Helper()
	if err := sck.Dial(endpoint); err != nil {
		t.Fatal(err)
	}
	p := &peer{sck: sck, msgs: make(chan zmq4.Msg, 1024)}
	p.wg.Go(func() {
		for {
			m, err := sck.Recv()
			if err != nil {
				close(p.msgs)
				return
			}
			p.msgs <- m
		}
	})
	t.Cleanup(func() { sck.Close(); p.wg.Wait() })
	return p
}

func dealer(t *testing.T, endpoint, id string) *peer {
	return newPeer(t, zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(id)), zmq4.WithTimeout(time.Second)), endpoint)
}

func subscriber(t *testing.T, endpoint string) *peer {
	sub := zmq4.NewSub(context.Background())
	p := newPeer(t, sub, endpoint)
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *peer) send(t *testing.T, m wire.Message) {
	t.Helper()
	if err := p.sck.Send(zmq4.NewMsg(wire.Append(nil, m))); err != nil {
		t.Fatal(err)
	}
}

// next waits for the next message that decodes to one of the wanted kind.
func next[M wire.Message](t *testing.T, p *peer) M {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case msg, ok := <-p.msgs:
			if !ok {
				t.Fatal("socket closed")
			}
			m, err := wire.Decode(msg.Frames[len(msg.Frames)-1])
			if err != nil {
				t.Fatalf("undecodable message: %v", err)
			}
			if want, ok := m.(M); ok {
				return want
			}
			t.Logf("skipping %s", m.Kind())
		case <-deadline:
			var zero M
			t.Fatalf("no %T within 10s", zero)
		}
	}
}

func entries(from, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "entry-%d", from+i)
	}
	return out
}

// readRecords decodes every record in the tier's WAL from its first entry.
func readRecords(t *testing.T, l *wal.Log) []wire.Record {
	t.Helper()
	var out []wire.Record
	last := l.LastIndex()
	if last < l.FirstIndex() {
		return nil
	}
	c, err := l.Cursor(l.FirstIndex())
	if err != nil {
		t.Fatal(err)
	}
	for uint64(len(out)) < last-l.FirstIndex()+1 {
		e, err := c.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		rec, err := wire.DecodeRecord(e.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestBatchAckStream(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	sub := subscriber(t, tr.addrs.Stream)
	fe := dealer(t, tr.addrs.Ingest, "fe-1#1")

	// The subscription reaches the PUB socket asynchronously: send until the
	// stream shows something, then check what it shows.
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 3)})
	if ack := next[*wire.Ack](t, fe); ack.Origin != "fe-1" || ack.UpTo != 3 {
		t.Fatalf("ack %+v", ack)
	}
	recs := readRecords(t, tr.log)
	if len(recs) != 3 {
		t.Fatalf("%d records in the WAL", len(recs))
	}
	for i, r := range recs {
		if r.Origin != "fe-1" || r.Index != uint64(i+1) || !bytes.Equal(r.Data, entries(1, 3)[i]) {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	// Repeats are dropped and acknowledged; new entries after them appended.
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 2, Entries: entries(2, 4)}) // 2..5
	if ack := next[*wire.Ack](t, fe); ack.UpTo != 5 {
		t.Fatalf("ack %+v", ack)
	}
	if n := len(readRecords(t, tr.log)); n != 5 {
		t.Fatalf("%d records after an overlapping batch, want 5", n)
	}
	// A gap is answered with resend; a gap the frontend vouches for is not.
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 10, Entries: entries(10, 1)})
	if rs := next[*wire.Resend](t, fe); rs.From != 6 {
		t.Fatalf("resend %+v", rs)
	}
	fe.send(t, &wire.Batch{Origin: "fe-1", Acked: 9, First: 10, Entries: entries(10, 1)})
	if ack := next[*wire.Ack](t, fe); ack.UpTo != 10 {
		t.Fatalf("ack %+v", ack)
	}
	// Another origin has its own marks.
	fe.send(t, &wire.Batch{Origin: "fe-2", First: 1, Entries: entries(1, 2)})
	if ack := next[*wire.Ack](t, fe); ack.Origin != "fe-2" || ack.UpTo != 2 {
		t.Fatalf("ack %+v", ack)
	}
	// The stream carries records committed after the subscriber joined, in
	// sequence; earlier ones are fetched.
	seen := uint64(0)
	for seen < tr.log.LastIndex() {
		s := next[*wire.Stream](t, sub)
		if s.Middletier != "mt-test" || (seen != 0 && s.First != seen+1) {
			t.Fatalf("stream message from %d after %d", s.First, seen)
		}
		seen = s.First + uint64(len(s.Records)) - 1
	}
	if got := metric(t, tr.reg, "ingest_middletier_repeats_dropped_total"); got != 2 {
		t.Fatalf("repeats dropped %v, want 2 (entries 2 and 3)", got)
	}
	if got := metric(t, tr.reg, "ingest_middletier_resends_total"); got != 1 {
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
	fe := dealer(t, tr.addrs.Ingest, "fe-1#1")
	for i := 0; i < 10; i++ {
		fe.send(t, &wire.Batch{Origin: "fe-1", First: uint64(1 + 50*i), Entries: entries(1+50*i, 50)})
		if ack := next[*wire.Ack](t, fe); ack.UpTo != uint64(50*(i+1)) {
			t.Fatalf("ack %+v", ack)
		}
	}
	cons := dealer(t, tr.addrs.Consumer, "storage#1")
	cons.send(t, &wire.Commit{Consumer: "storage", Seq: 400})
	if ca := next[*wire.CommitAck](t, cons); ca.Seq != 400 {
		t.Fatalf("commit ack %+v", ca)
	}
	waitFor(t, "truncation", func() bool { return tr.log.FirstIndex() > 300 })
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}

	tr2 := startTier(t, dir, opts, walOpts)
	fe2 := dealer(t, tr2.addrs.Ingest, "fe-1#2")
	// Everything again, from 1: all repeats, from truncated and retained entries.
	fe2.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 510)})
	if ack := next[*wire.Ack](t, fe2); ack.UpTo != 510 {
		t.Fatalf("ack %+v", ack)
	}
	if got := tr2.log.LastIndex(); got != 510 {
		t.Fatalf("last index %d after resending, want 510: repeats entered the WAL", got)
	}
	recs := readRecords(t, tr2.log)
	if last := recs[len(recs)-1]; last.Index != 510 || !bytes.Equal(last.Data, []byte("entry-510")) {
		t.Fatalf("last record %+v", last)
	}
}

func TestFetchAndCommit(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}, MaxFetchRecords: 100}, wal.Options{})
	fe := dealer(t, tr.addrs.Ingest, "fe-1#1")
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 250)})
	next[*wire.Ack](t, fe)

	cons := dealer(t, tr.addrs.Consumer, "storage#1")
	cons.send(t, &wire.Fetch{Consumer: "storage", From: 1, Max: 1000})
	fr := next[*wire.FetchReply](t, cons)
	if fr.First != 1 || len(fr.Records) != 100 || fr.Last != 250 || fr.Oldest != 1 {
		t.Fatalf("fetch reply first %d, %d records, last %d, oldest %d", fr.First, len(fr.Records), fr.Last, fr.Oldest)
	}
	rec, err := wire.DecodeRecord(fr.Records[99])
	if err != nil || rec.Index != 100 {
		t.Fatalf("record 100: %+v %v", rec, err)
	}
	cons.send(t, &wire.Fetch{Consumer: "storage", From: 251, Max: 10})
	if fr := next[*wire.FetchReply](t, cons); len(fr.Records) != 0 || fr.Last != 250 {
		t.Fatalf("fetch past the end: %+v", fr)
	}
	// Nothing is released before the durable consumer commits.
	if got := tr.log.Released(); got != 0 {
		t.Fatalf("released %d before any commit", got)
	}
	if got := metric(t, tr.reg, "ingest_middletier_consumer_lag_entries"); got != 250 {
		waitFor(t, "lag gauge", func() bool { return metric(t, tr.reg, "ingest_middletier_consumer_lag_entries") == 250 })
	}
	cons.send(t, &wire.Commit{Consumer: "storage", Seq: 200})
	if ca := next[*wire.CommitAck](t, cons); ca.Seq != 200 {
		t.Fatalf("commit ack %+v", ca)
	}
	if got := tr.log.Released(); got != 200 {
		t.Fatalf("released %d after commit 200", got)
	}
	// A commit of what was never written changes nothing.
	cons.send(t, &wire.Commit{Consumer: "storage", Seq: 9999})
	if ca := next[*wire.CommitAck](t, cons); ca.Seq != 200 {
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
	fe := dealer(t, tr.addrs.Ingest, "fe-1#1")
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 250)})
	next[*wire.Ack](t, fe)

	cons := dealer(t, tr.addrs.Consumer, "storage#1")
	// Never committed: from the first record.
	cons.send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 5})
	if fr := next[*wire.FetchReply](t, cons); fr.First != 1 || len(fr.Records) != 5 {
		t.Fatalf("fetch from 0 before any commit: first %d, %d records", fr.First, len(fr.Records))
	}
	cons.send(t, &wire.Commit{Consumer: "storage", Seq: 200})
	if ca := next[*wire.CommitAck](t, cons); ca.Seq != 200 {
		t.Fatalf("commit ack %+v", ca)
	}
	cons.send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 10})
	fr := next[*wire.FetchReply](t, cons)
	if fr.First != 201 || len(fr.Records) != 10 || fr.Last != 250 {
		t.Fatalf("fetch from checkpoint: first %d, %d records, last %d", fr.First, len(fr.Records), fr.Last)
	}
	if rec, err := wire.DecodeRecord(fr.Records[0]); err != nil || rec.Index != 201 {
		t.Fatalf("first record after the checkpoint: %+v %v", rec, err)
	}
	// Max 0 asks only where to resume.
	cons.send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 0})
	if fr := next[*wire.FetchReply](t, cons); fr.First != 201 || len(fr.Records) != 0 {
		t.Fatalf("where to resume: first %d, %d records", fr.First, len(fr.Records))
	}
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}

	tr2 := startTier(t, dir, opts, wal.Options{})
	cons2 := dealer(t, tr2.addrs.Consumer, "storage#2")
	cons2.send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 1000})
	fr = next[*wire.FetchReply](t, cons2)
	if fr.First != 201 || len(fr.Records) != 50 {
		t.Fatalf("after restart: first %d, %d records", fr.First, len(fr.Records))
	}
	// Up to date: an empty reply whose First is past Last.
	cons2.send(t, &wire.Commit{Consumer: "storage", Seq: 250})
	next[*wire.CommitAck](t, cons2)
	cons2.send(t, &wire.Fetch{Consumer: "storage", From: 0, Max: 1000})
	if fr := next[*wire.FetchReply](t, cons2); fr.First != 251 || fr.Last != 250 || len(fr.Records) != 0 {
		t.Fatalf("up to date: %+v", fr)
	}
}

func TestBusyAtBound(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}}, wal.Options{MaxEntries: 10})
	fe := dealer(t, tr.addrs.Ingest, "fe-1#1")
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 10)})
	next[*wire.Ack](t, fe)
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 11, Entries: entries(11, 1)})
	busy := next[*wire.Busy](t, fe)
	if busy.UpTo != 10 || busy.RetryAfter <= 0 {
		t.Fatalf("busy %+v", busy)
	}
	// Once the consumer has them, room is freed and the batch goes in.
	cons := dealer(t, tr.addrs.Consumer, "storage#1")
	cons.send(t, &wire.Commit{Consumer: "storage", Seq: 10})
	next[*wire.CommitAck](t, cons)
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 11, Entries: entries(11, 1)})
	if ack := next[*wire.Ack](t, fe); ack.UpTo != 11 {
		t.Fatalf("ack %+v", ack)
	}
}

func TestInvalidMessagesCounted(t *testing.T) {
	tr := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	fe := dealer(t, tr.addrs.Ingest, "fe-1#1")
	if err := fe.sck.Send(zmq4.NewMsg([]byte("not a wire message"))); err != nil {
		t.Fatal(err)
	}
	fe.send(t, &wire.Ack{Origin: "x", UpTo: 1}) // well-formed, wrong direction
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 1)})
	next[*wire.Ack](t, fe)
	if got := metric(t, tr.reg, "ingest_middletier_invalid_messages_total"); got != 2 {
		t.Fatalf("invalid %v, want 2", got)
	}
}

func TestOptionsValidation(t *testing.T) {
	l, err := wal.Open(t.TempDir(), wal.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, o := range []middletier.Options{{StateDir: t.TempDir()}, {ID: "x"}, {ID: "x", StateDir: t.TempDir(), Consumers: []string{""}}} {
		if _, err := middletier.New(o, l, nil, nil); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

// metric sums every series of a gauge or counter.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			} else {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// A damaged state file does not keep the middletier down: the marks come
// back from the records the WAL retains, and repeats are still dropped.
func TestDamagedStateRecovers(t *testing.T) {
	dir := t.TempDir()
	tr := startTier(t, dir, middletier.Options{}, wal.Options{})
	fe := dealer(t, tr.addrs.Ingest, "fe-1#1")
	fe.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 5)})
	next[*wire.Ack](t, fe)
	if err := tr.stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "middletier-state"), []byte("{garbage"), 0o640); err != nil {
		t.Fatal(err)
	}
	tr2 := startTier(t, dir, middletier.Options{}, wal.Options{})
	fe2 := dealer(t, tr2.addrs.Ingest, "fe-1#2")
	fe2.send(t, &wire.Batch{Origin: "fe-1", First: 1, Entries: entries(1, 6)})
	if ack := next[*wire.Ack](t, fe2); ack.UpTo != 6 {
		t.Fatalf("ack %+v", ack)
	}
	if got := tr2.log.LastIndex(); got != 6 {
		t.Fatalf("%d records after resending 1..6 over 1..5, want 6", got)
	}
}
