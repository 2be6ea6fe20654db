package stream_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/stream"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// The tests stop middletiers while followers are connected and sending:
// the goroutines zmq4 strands in their PUB and ROUTER sockets then
// (testkit says why) are ignored, and only they.
func TestMain(m *testing.M) {
	testkit.Main(m, testkit.PubWriterLeak, testkit.RouterReaderLeak)
}

// recorder is a Handler that keeps what it is given. Records waits while
// gate is closed, and refuses the next refuse batches.
type recorder struct {
	mu      sync.Mutex
	entered chan struct{} // a token each time Records is called
	gate    chan struct{}
	refuse  int
	seqs    []uint64     // sequences taken, in the order taken
	data    []string     // each record's origin/index: data
	firsts  []uint64     // each batch's first sequence
	lost    []stream.Gap // in the order reported
	invalid int          // records handed over that did not decode
	cancel  func(uint64) // called with the last sequence of each batch taken
}

func newRecorder() *recorder {
	g := make(chan struct{})
	close(g)
	return &recorder{gate: g, entered: make(chan struct{}, 1)}
}

func (r *recorder) Records(ctx context.Context, b *stream.Batch) error {
	select {
	case r.entered <- struct{}{}:
	default:
	}
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	select {
	case <-gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse > 0 {
		r.refuse--
		return errors.New("store down")
	}
	r.firsts = append(r.firsts, b.First)
	for i, rb := range b.Records {
		rec, err := wire.DecodeRecord(rb)
		if err != nil {
			r.invalid++
			return err
		}
		r.seqs = append(r.seqs, b.First+uint64(i))
		r.data = append(r.data, fmt.Sprintf("%s/%d:%s", rec.Origin, rec.Index, rec.Data))
	}
	if r.cancel != nil {
		r.cancel(b.First + uint64(len(b.Records)) - 1)
	}
	return nil
}

func (r *recorder) Lost(g stream.Gap) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lost = append(r.lost, g)
}

func (r *recorder) taken() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seqs)
}

// last is the last sequence taken, 0 for none.
func (r *recorder) last() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seqs) == 0 {
		return 0
	}
	return r.seqs[len(r.seqs)-1]
}

// check fails unless the records taken are the sequences from..to, once
// each, in order, and each holds entry-<index> of origin.
func (r *recorder) check(t *testing.T, from, to uint64, origin string, firstIndex uint64) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if uint64(len(r.seqs)) != to-from+1 {
		t.Fatalf("%d records taken, want %d..%d", len(r.seqs), from, to)
	}
	for i, seq := range r.seqs {
		want := from + uint64(i)
		idx := firstIndex + uint64(i)
		if seq != want || r.data[i] != fmt.Sprintf("%s/%d:entry-%d", origin, idx, idx) {
			t.Fatalf("record %d: seq %d holding %q, want seq %d holding entry %d of %s", i, seq, r.data[i], want, idx, origin)
		}
	}
}

// entries are entry-from .. entry-(from+n-1).
func entries(from, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, "entry-%d", from+i)
	}
	return out
}

// send sends entries from .. from+n-1 in batches of 100.
func send(t *testing.T, fe *testkit.Frontend, from, n int) {
	t.Helper()
	for i := from; i < from+n; i += 100 {
		fe.Send(t, entries(i, min(100, from+n-i))...)
	}
}

func newMetrics(reg prometheus.Registerer) stream.Metrics {
	mt := []string{"middletier"}
	m := stream.Metrics{
		Received:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "received_total", Help: "h"}, mt),
		Gaps:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gaps_total", Help: "h"}, mt),
		Filled:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "filled_total", Help: "h"}, mt),
		Fetches:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fetches_total", Help: "h"}, mt),
		Reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "reconnects_total", Help: "h"}, mt),
		Lag:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lag", Help: "h"}, mt),
		Checkpoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "checkpoint", Help: "h"}, mt),
		Repeats:    prometheus.NewCounter(prometheus.CounterOpts{Name: "repeats_total", Help: "h"}),
		Overflows:  prometheus.NewCounter(prometheus.CounterOpts{Name: "overflows_total", Help: "h"}),
		Invalid:    prometheus.NewCounter(prometheus.CounterOpts{Name: "invalid_total", Help: "h"}),
	}
	reg.MustRegister(m.Received, m.Gaps, m.Filled, m.Fetches, m.Reconnects, m.Lag, m.Checkpoint, m.Repeats, m.Overflows, m.Invalid)
	return m
}

// follower is a Follower running until stopped or the test ends.
type follower struct {
	*stream.Follower
	reg    *prometheus.Registry
	cancel context.CancelFunc // ends Run, as stop does, without waiting
	stop   func() error
}

func follow(t *testing.T, ep stream.Endpoints, opts stream.Options, h stream.Handler) *follower {
	t.Helper()
	if opts.Consumer == "" {
		opts.Consumer = "storage"
	}
	reg := prometheus.NewRegistry()
	f, err := stream.New(ep, opts, h, newMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop := testkit.Go(t, "follower", func(c context.Context) error {
		context.AfterFunc(c, cancel)
		return f.Run(ctx)
	})
	return &follower{Follower: f, reg: reg, cancel: cancel, stop: stop}
}

// prober asks a middletier where a consumer resumes: its checkpoint.
type prober struct {
	p        *testkit.Peer
	consumer string
}

func probe(t *testing.T, mt *testkit.Middletier, consumer string) *prober {
	return &prober{testkit.Dealer(t, mt.Addrs.Consumer, zsock.Identity(consumer+"-probe")), consumer}
}

func (p *prober) checkpoint(t *testing.T) uint64 {
	t.Helper()
	p.p.Send(t, &wire.Fetch{Consumer: p.consumer, From: 0, Max: 0})
	return testkit.Next[*wire.FetchReply](t, p.p).First - 1
}

// checkpoint asks the middletier where consumer resumes: its checkpoint.
func checkpoint(t *testing.T, mt *testkit.Middletier, consumer string) uint64 {
	t.Helper()
	return probe(t, mt, consumer).checkpoint(t)
}

// waitCheckpoint waits for consumer's checkpoint at mt to be want.
func waitCheckpoint(t *testing.T, mt *testkit.Middletier, consumer string, want uint64) {
	t.Helper()
	p := probe(t, mt, consumer)
	testkit.WaitFor(t, fmt.Sprintf("checkpoint %d", want), 20*time.Second, func() bool { return p.checkpoint(t) == want })
}

func durableTier(t *testing.T, opts middletier.Options) (*testkit.Middletier, *testkit.Frontend, stream.Endpoints) {
	t.Helper()
	opts.Consumers = []string{"storage"}
	mt := testkit.StartMiddletier(t, t.TempDir(), opts, wal.Options{})
	return mt, testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001"), stream.Endpoints{Stream: mt.Addrs.Stream, Consumer: mt.Addrs.Consumer}
}

// A durable Follower resumes from the checkpoint (never committed: from the
// first record), takes what the stream never carried by fetch and the rest
// from the stream, once each and in order, and commits what it took: the
// middletier's checkpoint reaches the last record.
func TestDurableFetchThenStream(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{})
	send(t, fe, 1, 300)
	rec := newRecorder()
	f := follow(t, ep, stream.Options{Durable: true}, rec)
	testkit.WaitFor(t, "the records committed before", 20*time.Second, func() bool { return rec.taken() == 300 })
	testkit.WaitFor(t, "caught up", 20*time.Second, f.CaughtUp)
	send(t, fe, 301, 300)
	testkit.WaitFor(t, "the streamed records", 20*time.Second, func() bool { return rec.taken() == 600 })
	rec.check(t, 1, 600, "fe-1.0001", 1)
	waitCheckpoint(t, mt, "storage", 600)
	testkit.WaitFor(t, "no lag at the middletier", 20*time.Second, func() bool {
		return testkit.Metric(t, mt.Reg, "ingest_middletier_consumer_lag_entries") == 0
	})
	testkit.WaitFor(t, "the acknowledged checkpoint", 20*time.Second, func() bool { return testkit.Metric(t, f.reg, "checkpoint") == 600 })
	if f.Middletier() != "mt-0" {
		t.Fatalf("follows %q", f.Middletier())
	}
	// Counted before the middletier said its id (the resume's fetch),
	// under its endpoint: moved to the id, no series left of the
	// endpoint (the sums below keep every count).
	for _, name := range []string{"fetches_total", "filled_total", "received_total", "lag", "checkpoint"} {
		for _, m := range testkit.Series(t, f.reg, name) {
			if l := m.GetLabel(); len(l) != 1 || l[0].GetValue() != "mt-0" {
				t.Errorf("a series of %s labelled %v", name, l)
			}
		}
	}
	if got := testkit.Metric(t, f.reg, "lag"); got != 0 {
		t.Fatalf("lag %v", got)
	}
	if testkit.Metric(t, f.reg, "fetches_total") == 0 || testkit.Metric(t, f.reg, "filled_total") < 300 {
		t.Fatalf("fetches %v, filled %v", testkit.Metric(t, f.reg, "fetches_total"), testkit.Metric(t, f.reg, "filled_total"))
	}
}

// A Follower with a Linger gathers the stream into batches: records that
// arrive one stream message each are handed over MaxBatch at a time, and
// the rest wait for more (an hour here, so the test never sees them go).
// Without the Linger each message would be a batch of its own.
func TestDurableLingerGathers(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{})
	rec := newRecorder()
	f := follow(t, ep, stream.Options{Durable: true, MaxBatch: 10, Linger: time.Hour}, rec)
	testkit.WaitFor(t, "caught up", 20*time.Second, f.CaughtUp)
	for i := 1; i <= 25; i++ {
		fe.Send(t, entries(i, 1)...)
	}
	waitCheckpoint(t, mt, "storage", 20)
	rec.mu.Lock()
	firsts := slices.Clone(rec.firsts)
	rec.mu.Unlock()
	if !slices.Equal(firsts, []uint64{1, 11}) {
		t.Fatalf("batches handed over from %v, want two of 10 from 1 and 11", firsts)
	}
	rec.check(t, 1, 20, "fe-1.0001", 1)
}

// Nothing is committed before the Handler has taken it: while it holds a
// batch the checkpoint stays put, and a batch it refuses comes again.
func TestDurableCommitsOnlyWhatIsTaken(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{})
	send(t, fe, 1, 200)
	rec := newRecorder()
	rec.gate = make(chan struct{})
	rec.refuse = 1
	f := follow(t, ep, stream.Options{Durable: true, MaxBatch: 50}, rec)
	select {
	case <-rec.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no batch handed over")
	}
	send(t, fe, 201, 100)
	// The middletier takes a checkpoint as the commit arrives; one sent
	// before the batch was taken would show.
	if got := checkpoint(t, mt, "storage"); got != 0 {
		t.Fatalf("checkpoint %d while the handler holds the first batch", got)
	}
	close(rec.gate)
	testkit.WaitFor(t, "every record", 20*time.Second, func() bool { return rec.taken() == 300 })
	rec.check(t, 1, 300, "fe-1.0001", 1)
	waitCheckpoint(t, mt, "storage", 300)
	if got := testkit.Metric(t, f.reg, "reconnects_total"); got != 1 {
		t.Fatalf("%v reconnections, want 1 after the refused batch", got)
	}
}

// A durable Follower started again resumes from the checkpoint it
// committed: it takes only what came after.
func TestDurableResumes(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{})
	rec := newRecorder()
	f := follow(t, ep, stream.Options{Durable: true}, rec)
	send(t, fe, 1, 100)
	testkit.WaitFor(t, "the first records", 20*time.Second, func() bool { return rec.taken() == 100 })
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
	send(t, fe, 101, 100)
	rec2 := newRecorder()
	follow(t, ep, stream.Options{Durable: true}, rec2)
	testkit.WaitFor(t, "the records after the checkpoint", 20*time.Second, func() bool { return rec2.taken() >= 100 })
	rec2.check(t, 101, 200, "fe-1.0001", 101)
	if rec2.firsts[0] != 101 {
		t.Fatalf("resumed from %d", rec2.firsts[0])
	}
	waitCheckpoint(t, mt, "storage", 200)
}

// At shutdown a durable Follower commits its last checkpoint once more and
// waits for the middletier to make it durable: when Run returns, the
// middletier resumes the consumer after the last record taken.
func TestDurableFinalCommit(t *testing.T) {
	for round := range 5 {
		mt, fe, ep := durableTier(t, middletier.Options{})
		send(t, fe, 1, 100)
		rec := newRecorder()
		var f *follower
		var once sync.Once
		rec.cancel = func(last uint64) {
			if last == 100 {
				once.Do(func() { f.cancel() }) // shut down right after taking the last
			}
		}
		f = follow(t, ep, stream.Options{Durable: true, MaxBatch: 10}, rec)
		testkit.WaitFor(t, "every record", 20*time.Second, func() bool { return rec.taken() == 100 })
		if err := f.stop(); err != nil {
			t.Fatal(err)
		}
		if got := checkpoint(t, mt, "storage"); got != 100 {
			t.Fatalf("round %d: checkpoint %d when Run returned, want 100", round, got)
		}
	}
}

// A durable Follower whose buffer overflows fetches what it dropped: a gap
// seen at a later message, and the stream's lost tail at the idle poll.
func TestDurableFillsGaps(t *testing.T) {
	for _, c := range []struct {
		name     string
		idlePoll time.Duration
		more     bool
	}{
		{"gap", time.Hour, true},
		{"tail", 200 * time.Millisecond, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, fe, ep := durableTier(t, middletier.Options{StreamBatch: 10})
			rec := newRecorder()
			f := follow(t, ep, stream.Options{Durable: true, Buffer: 2, MaxBatch: 50, IdlePoll: c.idlePoll}, rec)
			testkit.WaitFor(t, "caught up", 20*time.Second, f.CaughtUp)
			rec.mu.Lock()
			rec.gate = make(chan struct{})
			rec.mu.Unlock()
			send(t, fe, 1, 1000)
			testkit.WaitFor(t, "an overflow", 20*time.Second, func() bool { return testkit.Metric(t, f.reg, "overflows_total") > 0 })
			close(rec.gate)
			n := 1000
			if c.more {
				for rec.taken() < n {
					send(t, fe, n+1, 10)
					n += 10
				}
			}
			testkit.WaitFor(t, "every record", 20*time.Second, func() bool { return rec.taken() == n })
			rec.check(t, 1, uint64(n), "fe-1.0001", 1)
			if c.more && testkit.Metric(t, f.reg, "gaps_total") == 0 {
				t.Fatal("no gap counted")
			}
		})
	}
}

// A middletier that comes back with a WAL created again restarts its
// sequence at 1; a durable Follower takes its records from its checkpoint
// there, not from where the old sequence was.
func TestDurableRestartedMiddletier(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{})
	rec := newRecorder()
	f := follow(t, ep, stream.Options{Durable: true, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}, rec)
	send(t, fe, 1, 200)
	testkit.WaitFor(t, "the first records", 20*time.Second, func() bool { return rec.taken() == 200 })
	if err := mt.Stop(); err != nil {
		t.Fatal(err)
	}
	// The same addresses over an empty directory.
	opts := mt.Opts
	opts.StateDir = ""
	mt2 := testkit.StartMiddletier(t, t.TempDir(), opts, wal.Options{})
	fe2 := testkit.NewFrontend(t, mt2.Addrs.Ingest, "fe-2.0002")
	send(t, fe2, 1, 50)
	testkit.WaitFor(t, "the new middletier's records", 20*time.Second, func() bool { return rec.taken() == 250 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, d := range rec.data[200:] {
		if want := fmt.Sprintf("fe-2.0002/%d:entry-%d", i+1, i+1); d != want || rec.seqs[200+i] != uint64(i+1) {
			t.Fatalf("after the restart, record %d is seq %d holding %q, want %q", i, rec.seqs[200+i], d, want)
		}
	}
	if testkit.Metric(t, f.reg, "reconnects_total") == 0 {
		t.Fatal("no reconnection counted")
	}
	waitCheckpoint(t, mt2, "storage", 50)
}

// A live Follower starts with the first stream message it receives, and
// fills a gap in the stream by fetch within MaxGapFill; what it cannot
// fetch (past MaxGapFill, or without a consumer endpoint) it reports lost.
// It never commits.
func TestLiveGaps(t *testing.T) {
	for _, c := range []struct {
		name       string
		consumer   bool
		maxGapFill int
		filled     int // records of the gap taken by fetch, -1 for all of them
		cause      stream.Cause
	}{
		{"filled", true, 0, -1, 0},
		{"beyond-limit", true, 12, 12, stream.BeyondLimit},
		{"no-consumer", false, 0, 0, stream.Unfetched},
	} {
		t.Run(c.name, func(t *testing.T) {
			mt := testkit.StartMiddletier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}}, wal.Options{})
			fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
			send(t, fe, 1, 20) // written before the Follower starts: never taken
			n := 20
			before := testkit.Written(t, mt.Addrs.Stream, 20, func() { n++; send(t, fe, n, 1) })
			px := tcpproxy.Start(t, strings.TrimPrefix(mt.Addrs.Stream, "tcp://"))
			ep := stream.Endpoints{Stream: px.Endpoint()}
			if c.consumer {
				ep.Consumer = mt.Addrs.Consumer
			}
			rec := newRecorder()
			f := follow(t, ep, stream.Options{Consumer: "feed", MaxGapFill: c.maxGapFill, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
			// The subscription reaches the PUB asynchronously: send until
			// a record arrives.
			for rec.taken() == 0 {
				send(t, fe, n+1, 1)
				n++
				time.Sleep(10 * time.Millisecond)
			}
			rec.mu.Lock()
			start := rec.seqs[0]
			rec.mu.Unlock()
			if start <= before {
				t.Fatalf("a live follower took %d, written to the stream before it started (up to %d)", start, before)
			}
			testkit.WaitFor(t, "every record sent", 20*time.Second, func() bool { return uint64(rec.taken()) == uint64(n)-start+1 })

			px.Cut()
			testkit.WaitFor(t, "the follower to notice the cut", 20*time.Second, func() bool { return !f.Connected() })
			send(t, fe, n+1, 30)
			gapFrom := uint64(n + 1)
			n += 30
			// Acknowledged is not yet published, and published is not yet
			// written: the middletier publishes from its WAL on its own
			// time, and its stream socket writes from a queue. Written
			// after the link is back, the 30 would reach the follower and
			// make no gap.
			testkit.Written(t, mt.Addrs.Stream, uint64(n), func() { n++; send(t, fe, n, 1) })
			px.Restore()
			testkit.WaitFor(t, "the follower to subscribe again", 20*time.Second, f.Connected)
			// The first stream message after the cut reveals the gap.
			for {
				send(t, fe, n+1, 1)
				n++
				if rec.last() > gapFrom+29 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			testkit.WaitFor(t, "every record after the gap", 20*time.Second, func() bool { return rec.last() == uint64(n) })
			rec.mu.Lock()
			defer rec.mu.Unlock()
			// The 30 records sent while the link was cut are a gap, and so
			// may be ticks sent before the subscription reached the PUB
			// again: the gap is gapFrom..gapTo, gapTo at least gapFrom+29.
			// Every sequence from start to n is taken or lost, once.
			var lost uint64
			for _, g := range rec.lost {
				lost += g.To - g.From + 1
			}
			if !slices.IsSorted(rec.seqs) || uint64(len(rec.seqs))+lost != uint64(n)-start+1 {
				t.Fatalf("took %d records from %d to %d, and %d lost", len(rec.seqs), start, n, lost)
			}
			filled := uint64(testkit.Metric(t, f.reg, "filled_total"))
			gapTo := gapFrom + lost + filled - 1
			if gapTo < gapFrom+29 {
				t.Fatalf("a gap of %d records, %d lost and %d filled, for 30 sent while cut", gapTo-gapFrom+1, lost, filled)
			}
			if c.filled >= 0 && filled != uint64(c.filled) || c.filled < 0 && lost != 0 {
				t.Fatalf("%d records of the gap filled, %d lost", filled, lost)
			}
			if i := slices.Index(rec.seqs, gapFrom-1) + 1; filled > 0 && (rec.seqs[i] != gapTo-filled+1 || rec.seqs[i+int(filled)-1] != gapTo) {
				t.Fatalf("took %v after %d, want the gap's last %d up to %d", rec.seqs[i:i+int(filled)], gapFrom-1, filled, gapTo)
			}
			if c.cause == 0 {
				if len(rec.lost) != 0 {
					t.Fatalf("lost %+v", rec.lost)
				}
			} else if want := (stream.Gap{Middletier: "mt-0", From: gapFrom, To: gapTo - filled, Cause: c.cause}); len(rec.lost) != 1 || rec.lost[0] != want {
				t.Fatalf("lost %+v, want %+v", rec.lost, want)
			}
			if testkit.Metric(t, f.reg, "gaps_total") != 1 {
				t.Fatalf("%v gaps", testkit.Metric(t, f.reg, "gaps_total"))
			}
			if got := checkpoint(t, mt, "feed"); got != 0 {
				t.Fatalf("a live follower committed %d", got)
			}
		})
	}
}

// A live Follower whose stream goes silent looks at the middletier after
// IdlePoll: it fills what the stream's last messages held (here the
// stream's connection went half-open, its host gone without a word, while
// the consumer's still answers: it goes on by fetch, once per IdlePoll),
// and a look that goes unanswered ends the connection, so that it dials
// again and follows again. It used to wait for the next stream message,
// which a half-open connection never brings for as long as the kernel
// keeps it (minutes).
func TestLiveSilentStream(t *testing.T) {
	mt := testkit.StartMiddletier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}}, wal.Options{})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	pxs := tcpproxy.Start(t, strings.TrimPrefix(mt.Addrs.Stream, "tcp://"))
	pxc := tcpproxy.Start(t, strings.TrimPrefix(mt.Addrs.Consumer, "tcp://"))
	rec := newRecorder()
	f := follow(t, stream.Endpoints{Stream: pxs.Endpoint(), Consumer: pxc.Endpoint()}, stream.Options{Consumer: "feed",
		IdlePoll: 100 * time.Millisecond, FetchTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
	n := 0
	for rec.taken() == 0 { // the subscription reaches the PUB asynchronously
		n++
		send(t, fe, n, 1)
		time.Sleep(10 * time.Millisecond)
	}
	testkit.WaitFor(t, "every record sent", 20*time.Second, func() bool { return rec.last() == uint64(n) })

	pxs.Strand()
	send(t, fe, n+1, 30)
	n += 30
	testkit.WaitFor(t, "the 30 sent while the stream was silent", 20*time.Second, func() bool { return rec.last() == uint64(n) })
	send(t, fe, n+1, 30) // and on by fetch, look after look
	n += 30
	testkit.WaitFor(t, "the next 30", 20*time.Second, func() bool { return rec.last() == uint64(n) })

	pxc.Strand()
	testkit.WaitFor(t, "the follower to end the silent connection", 20*time.Second, func() bool {
		return testkit.Metric(t, f.reg, "reconnects_total") > 0
	})
	before := uint64(n)
	testkit.WaitFor(t, "records over new connections", 20*time.Second, func() bool {
		n++
		send(t, fe, n, 1)
		return rec.last() > before
	})
	testkit.WaitFor(t, "every record sent", 20*time.Second, func() bool { return rec.last() == uint64(n) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.lost) != 0 || !slices.IsSorted(rec.seqs) || rec.seqs[len(rec.seqs)-1]-rec.seqs[0]+1 != uint64(len(rec.seqs)) {
		t.Fatalf("took %d records from %d to %d, lost %+v", len(rec.seqs), rec.seqs[0], rec.seqs[len(rec.seqs)-1], rec.lost)
	}
}

// A live Follower's idle look at a middletier that answers late: the
// first try times out and is asked again, the answer to the first comes
// and is taken, and the Follower fetches the records the stream did not
// bring. The middletier serves fetches one at a time, in order: the answer
// to the look's second try comes before the fetch's, with the same first
// sequence and no records (a look asks for none). Taken as the fetch's
// answer, it had the records the middletier holds reported lost
// (unfetched), never handed over. The middletier here is a bare ROUTER
// serving fetches in order, the first look 1.5 fetch timeouts late, and a
// PUB that stops carrying the stream's last 30 records.
func TestLiveLookAnsweredLate(t *testing.T) {
	const fetchTimeout = 300 * time.Millisecond
	pub, err := zsock.ListenPub("tcp://127.0.0.1:0", 1000)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	var (
		mu   sync.Mutex
		log  [][]byte // log[i]: the record at sequence i+1
		slow bool     // the next look (Max 0) is answered late
	)
	type request struct {
		id []byte
		f  *wire.Fetch
	}
	reqs := make(chan request, 100)
	mt := testkit.StartRouter(t, func(id []byte, m wire.Message) {
		if f, ok := m.(*wire.Fetch); ok {
			reqs <- request{id, f}
		}
	})
	testkit.Go(t, "fetch worker", func(ctx context.Context) error {
		for {
			var q request
			select {
			case <-ctx.Done():
				return nil
			case q = <-reqs:
			}
			mu.Lock()
			late := slow && q.f.Max == 0
			if late {
				slow = false
			}
			mu.Unlock()
			if late {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(fetchTimeout * 3 / 2):
				}
			}
			mu.Lock()
			r := &wire.FetchReply{Middletier: "mt-0", Oldest: 1, Last: uint64(len(log)), First: max(q.f.From, 1)}
			for s := r.First; s <= r.Last && uint64(len(r.Records)) < q.f.Max; s++ {
				r.Records = append(r.Records, log[s-1])
			}
			mu.Unlock()
			mt.Reply(q.id, r)
		}
	})
	add := func() *wire.Stream { // the caller holds mu
		seq := uint64(len(log)) + 1
		log = append(log, wire.AppendRecord(nil, &wire.Record{Origin: "fe-1.0001", Index: seq, Data: fmt.Appendf(nil, "entry-%d", seq)}))
		return &wire.Stream{Middletier: "mt-0", First: seq, Records: [][]byte{log[seq-1]}}
	}
	rec := newRecorder()
	follow(t, stream.Endpoints{Stream: pub.Addr(), Consumer: mt.Addr()}, stream.Options{Consumer: "feed",
		IdlePoll: 200 * time.Millisecond, FetchTimeout: fetchTimeout, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
	for rec.taken() == 0 { // the subscription reaches the PUB asynchronously
		mu.Lock()
		st := add()
		mu.Unlock()
		pub.Send(wire.Append(nil, st))
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	for range 30 {
		add() // never published: lost on the way
	}
	last := uint64(len(log))
	slow = true
	mu.Unlock()
	testkit.WaitFor(t, "the records the stream did not carry", 20*time.Second, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.lost) > 0 || len(rec.seqs) > 0 && rec.seqs[len(rec.seqs)-1] == last
	})
	rec.mu.Lock()
	start, lost := rec.seqs[0], rec.lost
	rec.mu.Unlock()
	if len(lost) != 0 {
		t.Fatalf("lost %+v of records the middletier holds (up to %d)", lost, last)
	}
	rec.check(t, start, last, "fe-1.0001", start)
}

// Fetch serves a reader's resume: records from a sequence, over the
// Follower's own socket.
func TestFetch(t *testing.T) {
	mt := testkit.StartMiddletier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}}, wal.Options{})
	send(t, testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001"), 1, 50)
	f := follow(t, stream.Endpoints{Stream: mt.Addrs.Stream, Consumer: mt.Addrs.Consumer}, stream.Options{Consumer: "feed"}, newRecorder())
	r, err := f.Fetch(context.Background(), 11, 5)
	if err != nil {
		t.Fatal(err)
	}
	if r.First != 11 || len(r.Records) != 5 || r.Last != 50 {
		t.Fatalf("fetched from %d, %d records, last %d", r.First, len(r.Records), r.Last)
	}
	if rec, err := wire.DecodeRecord(r.Records[0]); err != nil || string(rec.Data) != "entry-11" {
		t.Fatalf("record 11: %+v %v", rec, err)
	}
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Fetch(context.Background(), 1, 1); !errors.Is(err, stream.ErrStopped) {
		t.Fatalf("fetch after Run: %v", err)
	}
	nf := follow(t, stream.Endpoints{Stream: mt.Addrs.Stream}, stream.Options{Consumer: "feed"}, newRecorder())
	if _, err := nf.Fetch(context.Background(), 1, 1); !errors.Is(err, stream.ErrNoConsumer) {
		t.Fatalf("fetch without a consumer endpoint: %v", err)
	}
}

func TestOptions(t *testing.T) {
	ep := stream.Endpoints{Stream: "tcp://127.0.0.1:1", Consumer: "tcp://127.0.0.1:2"}
	for _, c := range []struct {
		ep   stream.Endpoints
		opts stream.Options
	}{
		{ep, stream.Options{}},
		{ep, stream.Options{Consumer: strings.Repeat("x", 250)}},
		{stream.Endpoints{Consumer: ep.Consumer}, stream.Options{Consumer: "c"}},
		{stream.Endpoints{Stream: ep.Stream}, stream.Options{Consumer: "c", Durable: true}},
		{ep, stream.Options{Consumer: "c", MaxGapFill: -1}},
		{ep, stream.Options{Consumer: "c", Linger: -time.Second}},
		{ep, stream.Options{Consumer: "c", FetchTimeout: time.Nanosecond}},
		{ep, stream.Options{Consumer: "c", FetchTimeout: 999 * time.Microsecond}},
	} {
		if _, err := stream.New(c.ep, c.opts, newRecorder(), stream.Metrics{}, nil); err == nil {
			t.Errorf("%+v %+v accepted", c.ep, c.opts)
		}
	}
	f, err := stream.New(ep, stream.Options{Consumer: "c"}, newRecorder(), stream.Metrics{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Run(ctx); err == nil {
		t.Fatal("a follower ran twice")
	}
}

// The Follower gives the stream's frames back to the socket's reads once
// their records are handed over, and later messages are read into them: a
// durable Follower whose batches (37 records) end part way through the
// stream's messages (100 records each, over 512 bytes, so of the sizes
// the socket reads into released buffers), and which lingers for more
// messages while records of one it read wait in its batch, still hands
// over every record intact, once and in order, with no stream message
// found invalid and most records taken from the stream, not fetched.
func TestRecordsIntactWhileFramesReused(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{})
	rec := newRecorder()
	f := follow(t, ep, stream.Options{Durable: true, MaxBatch: 37, Linger: 20 * time.Millisecond}, rec)
	testkit.WaitFor(t, "caught up", 20*time.Second, f.CaughtUp)
	send(t, fe, 1, 5000)
	testkit.WaitFor(t, "the streamed records", 30*time.Second, func() bool { return rec.taken() == 5000 })
	rec.check(t, 1, 5000, "fe-1.0001", 1)
	waitCheckpoint(t, mt, "storage", 5000)
	if got := testkit.Metric(t, f.reg, "invalid_total"); got != 0 {
		t.Errorf("%v stream messages invalid, want none", got)
	}
	rec.mu.Lock()
	if rec.invalid != 0 {
		t.Errorf("%d records handed over did not decode, want none", rec.invalid)
	}
	rec.mu.Unlock()
	if got := testkit.Metric(t, f.reg, "received_total"); got < 4000 {
		t.Errorf("%v records from the stream, want most of the 5000 (the rest fetched)", got)
	}
}

// A Follower takes what its stream socket received before the connection
// ended: the messages waiting in the socket's buffer when it sees the end
// are taken, not dropped (a live Follower without a consumer endpoint
// would report them lost). Here they wait while the handler is held, and
// the middletier stops behind them.
func TestReceivedBeforeTheEndTaken(t *testing.T) {
	mt := testkit.StartMiddletier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	rec := newRecorder()
	follow(t, stream.Endpoints{Stream: mt.Addrs.Stream}, stream.Options{Consumer: "feed", MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
	n := 0
	for rec.taken() == 0 { // the subscription reaches the PUB asynchronously
		n++
		send(t, fe, n, 1)
		time.Sleep(10 * time.Millisecond)
	}
	rec.mu.Lock()
	first := rec.seqs[0]
	gate := make(chan struct{})
	rec.gate = gate
	rec.mu.Unlock()
	testkit.WaitFor(t, "every record sent", 20*time.Second, func() bool { return uint64(rec.taken()) == uint64(n)-first+1 })
	for range 10 { // ten stream messages
		n++
		send(t, fe, n, 1)
	}
	testkit.Written(t, mt.Addrs.Stream, uint64(n), func() { n++; send(t, fe, n, 1) })
	if err := mt.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the socket reads what was written, then the end
	close(gate)
	testkit.WaitFor(t, "every record received before the end taken", 20*time.Second, func() bool { return uint64(rec.taken()) == uint64(n)-first+1 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.lost) > 0 {
		t.Fatalf("reported lost: %+v", rec.lost)
	}
	for i, seq := range rec.seqs {
		if seq != first+uint64(i) {
			t.Fatalf("record %d is seq %d, want %d", i, seq, first+uint64(i))
		}
	}
}

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
	f, rec, pxs, pxc := proxiedFollower(t, ep)

	// The middletier comes back over an empty directory, and takes 250
	// records before the Follower reaches it again.
	mt2 := restartEmpty(t, mt, f, pxs, pxc)

	waitCheckpoint(t, mt2, "storage", 250)
	rec.check(t, 1, 250, "fe-2.0002", 1)
}

// A durable Follower that resumed from checkpoint 0 and has committed
// records whose acknowledgement has not come yet (the middletier writes its
// state at most once per StateInterval) knows it committed them: when the
// middletier comes back with its WAL created again, and has by then more
// records than the Follower took of the old sequence, the Follower starts
// over from its checkpoint there (0) and takes every record of the new
// sequence. It used to compare the new checkpoint only with the
// acknowledged one (0, as the checkpoint it resumed from), took the new
// sequence for the old one, went on from the old position and committed
// past new records it had never taken: lost.
func TestDurableRestartedMiddletierBeforeTheCommitsAck(t *testing.T) {
	mt, fe, ep := durableTier(t, middletier.Options{StateInterval: time.Minute})
	// A state write now: the next waits a minute, and so does the
	// acknowledgement of the Follower's commits.
	pr := probe(t, mt, "storage")
	pr.p.Send(t, &wire.Commit{Consumer: "other", Seq: 0})
	testkit.Next[*wire.CommitAck](t, pr.p)

	f, rec, pxs, pxc := proxiedFollower(t, ep)
	send(t, fe, 1, 100)
	testkit.WaitFor(t, "the first records", 20*time.Second, func() bool { return rec.taken() == 100 })
	testkit.WaitFor(t, "their commit", 20*time.Second, func() bool { return testkit.Metric(t, f.reg, "lag") == 0 })

	// The middletier comes back over an empty directory, and takes 250
	// records before the Follower reaches it again.
	mt2 := restartEmpty(t, mt, f, pxs, pxc)

	waitCheckpoint(t, mt2, "storage", 250)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var seqs []uint64
	for i, d := range rec.data {
		if strings.HasPrefix(d, "fe-2.0002/") {
			seqs = append(seqs, rec.seqs[i])
		}
	}
	if len(seqs) != 250 || seqs[0] != 1 {
		t.Fatalf("of the new sequence 1..250, %d records taken (the first %v), lost %+v", len(seqs), seqs[:min(1, len(seqs))], rec.lost)
	}
}

// proxiedFollower starts a durable Follower of ep's middletier through
// proxies of its stream and consumer sockets, with a short backoff, and
// waits until it has caught up.
func proxiedFollower(t *testing.T, ep stream.Endpoints) (*follower, *recorder, *tcpproxy.Proxy, *tcpproxy.Proxy) {
	t.Helper()
	pxs := tcpproxy.Start(t, strings.TrimPrefix(ep.Stream, "tcp://"))
	pxc := tcpproxy.Start(t, strings.TrimPrefix(ep.Consumer, "tcp://"))
	rec := newRecorder()
	f := follow(t, stream.Endpoints{Stream: pxs.Endpoint(), Consumer: pxc.Endpoint()},
		stream.Options{Durable: true, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, rec)
	testkit.WaitFor(t, "caught up", 20*time.Second, f.CaughtUp)
	return f, rec, pxs, pxc
}

// restartEmpty cuts f off its middletier mt (the proxies pxs and pxc), then
// starts mt again over an empty directory (its WAL and state created
// again, its state interval the default), sends it 250 records from a new
// frontend, fe-2, and lets f reach it again: a new sequence, ahead of
// where f was.
func restartEmpty(t *testing.T, mt *testkit.Middletier, f *follower, pxs, pxc *tcpproxy.Proxy) *testkit.Middletier {
	t.Helper()
	pxs.Cut()
	pxc.Cut()
	testkit.WaitFor(t, "the follower to notice the cut", 20*time.Second, func() bool { return !f.Connected() })
	if err := mt.Stop(); err != nil {
		t.Fatal(err)
	}
	opts := mt.Opts
	opts.StateDir, opts.StateInterval = "", 0
	mt2 := testkit.StartMiddletier(t, t.TempDir(), opts, wal.Options{})
	send(t, testkit.NewFrontend(t, mt2.Addrs.Ingest, "fe-2.0002"), 1, 250)
	pxs.Restore()
	pxc.Restore()
	return mt2
}
