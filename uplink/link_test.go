package uplink_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// startTier runs a middletier with its data in dir until the test ends.
func startTier(t *testing.T, dir string, opts middletier.Options, wopts wal.Options) *testkit.Middletier {
	t.Helper()
	return testkit.StartMiddletier(t, dir, opts, wopts)
}

// records returns, by identity, how often each record is in the stopped
// middletier's WAL.
func records(t *testing.T, mt *testkit.Middletier) map[uint64]int {
	t.Helper()
	l, err := wal.Open(filepath.Join(mt.Dir, "wal"), wal.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := map[uint64]int{}
	for _, rec := range testkit.Records(t, l) {
		if want := fmt.Sprintf("entry-%d", rec.Index); string(rec.Data) != want {
			t.Fatalf("record %d holds %q", rec.Index, rec.Data)
		}
		seen[rec.Index]++
	}
	return seen
}

// frontend is a frontend's WAL with a Link running over it.
type frontend struct {
	log  *wal.Log
	reg  *prometheus.Registry
	stop func()
}

func startLink(t *testing.T, opts uplink.Options) *frontend {
	t.Helper()
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if opts.ID == "" {
		opts.ID = "fe-test"
	}
	reg := prometheus.NewRegistry()
	k, err := uplink.New(opts, l, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := testkit.Go(t, "uplink", func(ctx context.Context) error {
		defer l.Close()
		return k.Run(ctx)
	})
	return &frontend{log: l, reg: reg, stop: func() { stop() }}
}

// appendEntries appends entry-1 .. entry-n in batches of 100, pausing
// between batches for pace, so that the content of each entry names its
// index.
// appendAcked appends n entries in the background, paced, and returns
// once the first 1,000 are acknowledged; done is closed when all n are
// appended.
func (f *frontend) appendAcked(t *testing.T, n int) (done <-chan struct{}) {
	t.Helper()
	c := make(chan struct{})
	go func() {
		defer close(c)
		f.appendEntries(t, n, 20*time.Millisecond)
	}()
	testkit.WaitFor(t, "the first acknowledgements", 10*time.Second, func() bool { return f.log.Released() > 1000 })
	return c
}

func (f *frontend) appendEntries(t *testing.T, n int, pace time.Duration) {
	t.Helper()
	for i := 1; i <= n; i += 100 {
		var batch [][]byte
		for j := i; j < i+100 && j <= n; j++ {
			batch = append(batch, fmt.Appendf(nil, "entry-%d", j))
		}
		first, err := f.log.AppendBatch(context.Background(), batch)
		if err != nil {
			t.Error(err)
			return
		}
		if first != uint64(i) {
			t.Errorf("entry-%d appended at %d", i, first)
			return
		}
		if pace > 0 {
			time.Sleep(pace)
		}
	}
}

func exactlyOnce(t *testing.T, seen map[uint64]int, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if seen[uint64(i)] != 1 {
			t.Fatalf("entry %d is in the middletier's WAL %d times", i, seen[uint64(i)])
		}
	}
	if len(seen) != n {
		t.Fatalf("%d records, want %d", len(seen), n)
	}
}

func TestForward(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	f := startLink(t, uplink.Options{Middletiers: []string{mt.Addrs.Ingest}})
	const n = 20000
	f.appendEntries(t, n, 0)
	testkit.WaitFor(t, "every entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == n })
	mt.Stop()
	exactlyOnce(t, records(t, mt), n)
}

// With one batch in flight and batches of 7, the entries the Link has read
// wait in its pending list across many acknowledgements: their bytes share
// the cursor's buffer (wal.Cursor.NextBatchShared), which the Link reads
// into again only once they are all sent. Every entry reaches the
// middletier intact, once.
func TestForwardOneInFlight(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	f := startLink(t, uplink.Options{Middletiers: []string{mt.Addrs.Ingest}, Window: 1, MaxBatchEntries: 7})
	const n = 3000
	f.appendEntries(t, n, 0)
	testkit.WaitFor(t, "every entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == n })
	mt.Stop()
	exactlyOnce(t, records(t, mt), n)
}

// A Link with a Linger waits for a full batch (up to the Linger, an hour
// here): entries committed one at a time go in batches of MaxBatchEntries,
// and the last five wait. Without it each entry would be a batch.
func TestLingerGathers(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	f := startLink(t, uplink.Options{Middletiers: []string{mt.Addrs.Ingest}, MaxBatchEntries: 10, Linger: time.Hour})
	for i := 1; i <= 25; i++ {
		if _, err := f.log.AppendBatch(context.Background(), [][]byte{fmt.Appendf(nil, "entry-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "20 entries acknowledged", 30*time.Second, func() bool { return f.log.Released() >= 20 })
	if got, sent := f.log.Released(), testkit.Metric(t, f.reg, "ingest_uplink_batches_sent_total"); got != 20 || sent != 2 {
		t.Fatalf("%d entries acknowledged in %v batches, want 20 in 2", got, sent)
	}
}

// A middletier restarted while the frontend sends: traffic resumes, and
// nothing is lost or doubled in the middletier's stream.
func TestMiddletierRestart(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	f := startLink(t, uplink.Options{Middletiers: []string{mt.Addrs.Ingest}})
	const n = 6000
	done := f.appendAcked(t, n)
	mt.Stop()
	before := f.log.Released()
	mt.Start(t)
	took := testkit.WaitFor(t, "traffic to resume", 30*time.Second, func() bool { return f.log.Released() > before })
	t.Logf("traffic resumed %v after the middletier restarted", took)
	if took > 5*time.Second {
		t.Errorf("traffic resumed after %v, want within 5s", took)
	}
	<-done
	testkit.WaitFor(t, "every entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == n })
	mt.Stop()
	exactlyOnce(t, records(t, mt), n)
}

// When a middletier dies for good, the frontend fails over to the next:
// every entry is acknowledged, each is durable in a middletier, and no
// middletier holds one twice.
func TestFailover(t *testing.T) {
	a, b := firstChoiceFirst(t, "fe-test",
		startTier(t, t.TempDir(), middletier.Options{ID: "mt-a"}, wal.Options{}),
		startTier(t, t.TempDir(), middletier.Options{ID: "mt-b"}, wal.Options{}))
	f := startLink(t, uplink.Options{Middletiers: []string{b.Addrs.Ingest, a.Addrs.Ingest}, Failover: 2 * time.Second})
	const n = 5000
	done := f.appendAcked(t, n)
	a.Stop()
	<-done
	testkit.WaitFor(t, "every entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == n })
	b.Stop()
	_, inB := inOneEach(t, a, b, n)
	if len(inB) == 0 {
		t.Fatal("nothing reached the second middletier")
	}
}

// inOneEach checks that each of the entries 1..n is in the WAL of a or b,
// and in none of them twice, and returns how often each WAL holds each.
func inOneEach(t *testing.T, a, b *testkit.Middletier, n uint64) (inA, inB map[uint64]int) {
	t.Helper()
	inA, inB = records(t, a), records(t, b)
	for i := uint64(1); i <= n; i++ {
		if inA[i] > 1 || inB[i] > 1 {
			t.Fatalf("entry %d twice in one middletier (a %d, b %d)", i, inA[i], inB[i])
		}
		if inA[i]+inB[i] == 0 {
			t.Fatalf("entry %d acknowledged and in no middletier", i)
		}
	}
	return inA, inB
}

// firstChoiceFirst returns x and y in the order the frontend id ranks them.
func firstChoiceFirst(t *testing.T, id string, x, y *testkit.Middletier) (*testkit.Middletier, *testkit.Middletier) {
	t.Helper()
	if uplink.Rank(id, []string{x.Addrs.Ingest, y.Addrs.Ingest})[0] == x.Addrs.Ingest {
		return x, y
	}
	return y, x
}

// A frontend whose first choice stops moves to its second, and goes back
// to its first once it is back: it drains the second (sends nothing new
// until what is in flight is acknowledged) and resends from its oldest
// unacknowledged entry, so no middletier holds an entry twice and every
// acknowledged entry is in one of them.
func TestReturnToFirstChoice(t *testing.T) {
	a, b := firstChoiceFirst(t, "fe-test",
		startTier(t, t.TempDir(), middletier.Options{ID: "mt-a"}, wal.Options{}),
		startTier(t, t.TempDir(), middletier.Options{ID: "mt-b"}, wal.Options{}))
	f := startLink(t, uplink.Options{Middletiers: []string{b.Addrs.Ingest, a.Addrs.Ingest}, Failover: 3 * time.Second, Return: 300 * time.Millisecond})
	// Entries in batches of 10 every 10 ms until told to stop.
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		var n uint64
		defer func() { done <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			var batch [][]byte
			for j := n + 1; j <= n+10; j++ {
				batch = append(batch, fmt.Appendf(nil, "entry-%d", j))
			}
			if _, err := f.log.AppendBatch(context.Background(), batch); err != nil {
				t.Error(err)
				return
			}
			n += 10
		}
	}()
	testkit.WaitFor(t, "the first acknowledgements", 10*time.Second, func() bool { return f.log.Released() > 200 })
	if got := b.Log.LastIndex(); got != 0 {
		t.Fatalf("the second choice holds %d entries while the first is up", got)
	}
	a.Stop()
	testkit.WaitFor(t, "traffic on the second choice", 20*time.Second, func() bool { return b.Log.LastIndex() > 200 })
	a.Start(t)
	aBack := a.Log.LastIndex()
	testkit.WaitFor(t, "traffic back on the first choice", 20*time.Second, func() bool { return a.Log.LastIndex() > aBack+200 })
	if got := testkit.Metric(t, f.reg, "ingest_uplink_returns_total"); got < 1 {
		t.Errorf("%v returns counted", got)
	}
	bAfter := b.Log.LastIndex()
	close(stop)
	n := <-done
	testkit.WaitFor(t, "every entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == n })
	if got := b.Log.LastIndex(); got != bAfter {
		t.Errorf("the second choice took %d more entries after the return", got-bAfter)
	}
	a.Stop()
	b.Stop()
	inOneEach(t, a, b, n)
}

// A middletier at its bound answers busy; the frontend keeps its entries
// and delivers them once room is made.
func TestBusyBackpressure(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}, BusyRetry: 20 * time.Millisecond}, wal.Options{MaxEntries: 500})
	f := startLink(t, uplink.Options{Middletiers: []string{mt.Addrs.Ingest}})
	const n = 2000
	f.appendEntries(t, n, 0)
	// Batches are all or nothing: the middletier takes whole batches while
	// they fit under its bound, then answers busy.
	testkit.WaitFor(t, "busy answers", 10*time.Second, func() bool { return testkit.Metric(t, f.reg, "ingest_uplink_retransmits_total") > 0 })
	if held, released := mt.Log.LastIndex(), f.log.Released(); held == 0 || held > 500 || released != held {
		t.Fatalf("middletier holds %d entries (bound 500), frontend released %d", held, released)
	}
	// The consumer catches up in steps; everything gets through.
	cons := testkit.Dealer(t, mt.Addrs.Consumer, "storage#test")
	for f.log.Released() < n {
		seq := mt.Log.LastIndex()
		cons.Send(t, &wire.Commit{Consumer: "storage", Seq: seq})
		testkit.Next[*wire.CommitAck](t, cons)
		testkit.WaitFor(t, "room", 10*time.Second, func() bool { return mt.Log.Released() >= seq })
		testkit.WaitFor(t, "more entries or the end", 10*time.Second, func() bool { return mt.Log.LastIndex() > seq || f.log.Released() == n })
	}
	mt.Stop()
	exactlyOnce(t, records(t, mt), n)
}

// The WAL, the middletier and the uplink share metric names (the queue
// depth of every hop); in one process they register in one registry, which
// Prometheus allows only if their label names and help agree.
func TestMetricsShareOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	fl, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	ml, err := wal.Open(t.TempDir(), wal.Options{Hop: "middletier"}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Close()
	loop := "tcp://127.0.0.1:0"
	r, err := middletier.New(middletier.Options{ID: "mt", StateDir: t.TempDir(), IngestAddr: loop, ConsumerAddr: loop, StreamAddr: loop}, ml, reg, nil)
	if err != nil {
		t.Fatalf("middletier beside the WALs: %v", err)
	}
	defer r.Close()
	if _, err := uplink.New(uplink.Options{ID: "fe", Middletiers: []string{"tcp://127.0.0.1:1"}}, fl, reg, nil); err != nil {
		t.Fatalf("uplink beside the WALs and the middletier: %v", err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// Endpoints from DNS: a headless Service's name resolves to every
// middletier pod; localhost stands in for it here.
func TestDNSResolver(t *testing.T) {
	eps, err := uplink.DNSResolver("localhost", 5555)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ep := range eps {
		found = found || ep == "tcp://127.0.0.1:5555"
	}
	if !found {
		t.Fatalf("localhost resolved to %v", eps)
	}
	if _, err := uplink.DNSResolver("no-such-host.invalid", 5555)(context.Background()); err == nil {
		t.Fatal("an unknown name resolved")
	}
}

// A frontend configured with a resolver finds its middletier through it.
func TestForwardThroughResolver(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	port := mt.Addrs.Ingest[strings.LastIndexByte(mt.Addrs.Ingest, ':')+1:]
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	f := startLink(t, uplink.Options{Resolve: func(ctx context.Context) ([]string, error) {
		eps, err := uplink.DNSResolver("localhost", p)(ctx)
		// Keep IPv4: the middletier listens on 127.0.0.1.
		var v4 []string
		for _, ep := range eps {
			if strings.HasPrefix(ep, "tcp://127.") {
				v4 = append(v4, ep)
			}
		}
		return v4, err
	}})
	f.appendEntries(t, 500, 0)
	testkit.WaitFor(t, "every entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == 500 })
}

// Close unregisters the metrics of a Link that never ran, as Run does when
// it returns, and may be called again: a new Link can then register its
// metrics on the same Registerer.
func TestCloseUnregisters(t *testing.T) {
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{Hop: "frontend"})
	reg := prometheus.NewRegistry()
	opts := uplink.Options{ID: "fe", Middletiers: []string{"tcp://127.0.0.1:1"}}
	k2 := testkit.CheckCloseUnregisters(t, reg, "Link", func() (*uplink.Link, error) { return uplink.New(opts, l, reg, nil) })
	testkit.CheckRunUnregisters(t, reg, k2.Run)
}

// Each socket of a Link has an identity of its own, however long its ID:
// with the longest (its origin 255 bytes, all that ZMTP carries) zmq4 cut
// the socket's number and random part off, and every socket of the Link
// reached the middletier as the origin alone. Here the peer acknowledges
// nothing, so the Link connects a new socket after every two ack
// timeouts; the sockets must reach it under identities that differ.
func TestLongIDSocketsDiffer(t *testing.T) {
	var mu sync.Mutex
	ids := map[string]bool{}
	mt := testkit.StartRouter(t, func(id []byte, m wire.Message) {
		if _, ok := m.(*wire.Batch); ok {
			mu.Lock()
			ids[string(id)] = true
			mu.Unlock()
		}
	})
	id := strings.Repeat("f", wire.MaxNameLen-17)
	f := startLink(t, uplink.Options{ID: id, Middletiers: []string{mt.Addr()}, AckTimeout: 100 * time.Millisecond})
	f.appendEntries(t, 10, 0)
	origin := uplink.Origin(id, f.log.ID())
	testkit.WaitFor(t, "batches from three sockets of the Link under identities of their own", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	for s := range ids {
		if len(s) > 255 || !strings.HasPrefix(s, origin[:min(len(origin), len(s)-13)]) {
			t.Errorf("socket identity %q (%d bytes): want at most 255, led by the origin", s, len(s))
		}
	}
}

// An AckTimeout under a millisecond is refused by New. Run ticks every
// quarter of it, and used to panic (a ticker of no interval) once a
// frontend started with --uplink.ack-timeout 3ns, say.
func TestNewRefusesATinyAckTimeout(t *testing.T) {
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{Hop: "frontend"})
	for _, d := range []time.Duration{time.Nanosecond, 3 * time.Nanosecond, 999 * time.Microsecond} {
		k, err := uplink.New(uplink.Options{ID: "fe", Middletiers: []string{"tcp://127.0.0.1:1"}, AckTimeout: d}, l, nil, nil)
		if err == nil {
			k.Close()
			t.Errorf("New took an AckTimeout of %v, under a millisecond (under 4ns Run's tick, a quarter of it, panics)", d)
		} else if !strings.Contains(err.Error(), "ack timeout") {
			t.Errorf("AckTimeout %v refused with %q, want it named", d, err)
		}
	}
	for _, o := range []uplink.Options{{Failover: time.Nanosecond}, {Return: 999 * time.Microsecond}} {
		o.ID, o.Middletiers = "fe", []string{"tcp://127.0.0.1:1"}
		if k, err := uplink.New(o, l, nil, nil); err == nil {
			k.Close()
			t.Errorf("New took Failover %v, Return %v: under a millisecond it fails over or returns without end", o.Failover, o.Return)
		}
	}
	k, err := uplink.New(uplink.Options{ID: "fe", Middletiers: []string{"tcp://127.0.0.1:1"}, AckTimeout: time.Millisecond}, l, nil, nil)
	if err != nil {
		t.Fatalf("AckTimeout 1ms: %v", err)
	}
	k.Close()
}

// An entry committed after the Link found the log caught up, and before
// it waits, is sent at once: the Link does not wait without listening for
// commits (it used to, until an acknowledgement or its next tick, a
// quarter of AckTimeout: up to 250 ms with the defaults, and here 5 s).
// With a linger the entry waits for it; without one it is read at once.
func TestCommitBeforeTheWait(t *testing.T) {
	for _, linger := range []time.Duration{0, -1} { // the default (5 ms), none
		t.Run(fmt.Sprint("linger=", linger), func(t *testing.T) {
			mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
			l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			k, err := uplink.New(uplink.Options{ID: "fe-test", Middletiers: []string{mt.Addrs.Ingest}, AckTimeout: 20 * time.Second, Linger: linger}, l, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			n := 0 // the hook runs on Run's goroutine
			uplink.SetAfterFill(k, func() {
				// Caught up with nothing in flight: the first fill, and
				// each one after the last entry is acknowledged.
				if l.Released() == l.LastIndex() && n < 5 {
					n++
					if _, err := l.AppendBatch(context.Background(), [][]byte{fmt.Appendf(nil, "entry-%d", n)}); err != nil {
						t.Error(err)
					}
				}
			})
			stop := testkit.Go(t, "uplink", func(ctx context.Context) error {
				defer l.Close()
				return k.Run(ctx)
			})
			start := time.Now()
			testkit.WaitFor(t, "five entries, each appended between a fill and the wait, acknowledged", 4*time.Second, func() bool { return l.Released() == 5 })
			t.Logf("acknowledged in %v", time.Since(start))
			stop()
			mt.Stop()
			exactlyOnce(t, records(t, mt), 5)
		})
	}
}

// Run returns at shutdown although its read of the WAL fails then (the
// log closed under it): fill keeps quiet about such a failure, and Run
// must not read again and again instead of returning.
func TestRunEndsWhenReadFailsAtShutdown(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := uplink.New(uplink.Options{ID: "fe-test", Middletiers: []string{mt.Addrs.Ingest}, Linger: -1}, l, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fills := 0
	uplink.SetAfterFill(k, func() {
		fills++
		if fills == 1 {
			if _, err := l.AppendBatch(context.Background(), [][]byte{[]byte("entry-1")}); err != nil {
				t.Error(err)
			}
			cancel()
			l.Close()
		}
	})
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended") // it spins: the binary ends it
	}
}

// An acknowledgement past every entry sent, while the Link lingers over
// a tail shorter than a batch, leaves it with nothing to read: it then
// waits for commits, and does not wake again and again for a linger that
// has ended (it used to, until the next commit, at 100% of a core).
// The middletier has every entry from the frontend's earlier life, whose
// release was lost, and acknowledges them all at the first batch.
func TestLateAckEndsTheLinger(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := uplink.Options{ID: "fe-test", Middletiers: []string{mt.Addrs.Ingest}, MaxBatchEntries: 4, Linger: 200 * time.Millisecond}
	earlier := testkit.NewFrontend(t, mt.Addrs.Ingest, uplink.Origin(opts.ID, l.ID()))
	var es [][]byte
	for i := 1; i <= 10; i++ {
		es = append(es, fmt.Appendf(nil, "entry-%d", i))
	}
	earlier.Send(t, es...)
	if _, err := l.AppendBatch(context.Background(), es); err != nil {
		t.Fatal(err)
	}
	k, err := uplink.New(opts, l, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var fills atomic.Int64
	uplink.SetAfterFill(k, func() { fills.Add(1) })
	stop := testkit.Go(t, "uplink", func(ctx context.Context) error {
		defer l.Close()
		return k.Run(ctx)
	})
	defer stop()
	testkit.WaitFor(t, "every entry acknowledged", 10*time.Second, func() bool { return l.Released() == 10 })
	// Past the linger, idle: the Link wakes at its ticks (a quarter of
	// AckTimeout, 250 ms), a few times a second.
	time.Sleep(2 * opts.Linger)
	before := fills.Load()
	time.Sleep(time.Second)
	n := fills.Load() - before
	if n > 20 {
		t.Fatalf("idle, the Link read the WAL %d times in a second", n)
	}
	t.Logf("idle, the Link read the WAL %d times in a second", n)
	if got := testkit.Metric(t, mt.Reg, "ingest_middletier_entries_total"); got != 10 {
		t.Fatalf("the middletier appended %v entries, want the 10 of the earlier life", got)
	}
}

// After a busy answer the Link sends again once the middletier's hint has
// passed, not at its next tick (a quarter of AckTimeout, here 5 s): with
// one batch in flight, each busy answer is one try.
func TestBusyRetriesAtTheHint(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{Consumers: []string{"storage"}, BusyRetry: 50 * time.Millisecond}, wal.Options{MaxEntries: 500})
	f := startLink(t, uplink.Options{Middletiers: []string{mt.Addrs.Ingest}, Window: 1, AckTimeout: 20 * time.Second, Failover: time.Minute})
	const n = 1000
	f.appendEntries(t, n, 0)
	busy := func() float64 { return testkit.Metric(t, f.reg, "ingest_uplink_retransmits_total", "reason", "busy") }
	took := testkit.WaitFor(t, "ten busy answers before the first tick", 4*time.Second, func() bool { return busy() >= 10 })
	t.Logf("ten busy answers in %v", took)
	cons := testkit.Dealer(t, mt.Addrs.Consumer, "storage#test")
	for f.log.Released() < n {
		seq := mt.Log.LastIndex()
		cons.Send(t, &wire.Commit{Consumer: "storage", Seq: seq})
		testkit.Next[*wire.CommitAck](t, cons)
		testkit.WaitFor(t, "more entries or the end", 10*time.Second, func() bool { return mt.Log.LastIndex() > seq || f.log.Released() == n })
	}
	mt.Stop()
	exactlyOnce(t, records(t, mt), n)
}

// A Link that cannot reach its middletier dials again when its backoff
// ends, not at its next tick (a quarter of AckTimeout, here 5 s).
func TestRedialAtTheBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "tcp://" + ln.Addr().String()
	ln.Close() // refused until the middletier listens there
	f := startLink(t, uplink.Options{Middletiers: []string{addr}, AckTimeout: 20 * time.Second, Failover: time.Minute})
	const n = 100
	f.appendEntries(t, n, 0)
	time.Sleep(300 * time.Millisecond) // a few dials refused: the backoff is under a second
	mt := startTier(t, t.TempDir(), middletier.Options{IngestAddr: addr}, wal.Options{})
	took := testkit.WaitFor(t, "every entry acknowledged before the first tick", 4*time.Second, func() bool { return f.log.Released() == n })
	t.Logf("acknowledged %v after the middletier started", took)
	mt.Stop()
	exactlyOnce(t, records(t, mt), n)
}

// A Link that finds its connection gone when it sends (the middletier
// restarted while the Link was busy, and no dial has failed) dials again
// at once, not at its next tick (a quarter of AckTimeout, here 5 s).
func TestRedialWhenASendFindsTheLinkDown(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "frontend"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := uplink.New(uplink.Options{ID: "fe-test", Middletiers: []string{mt.Addrs.Ingest}, AckTimeout: 20 * time.Second, Failover: time.Minute, Linger: -1}, l, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var restart atomic.Bool
	uplink.SetAfterFill(k, func() {
		// Between the fill that read the next ten and their send.
		if restart.Load() && l.LastIndex() == 20 {
			restart.Store(false)
			mt.Stop()
			time.Sleep(500 * time.Millisecond) // the Link's socket reads the end and ends
			mt.Start(t)
		}
	})
	stop := testkit.Go(t, "uplink", func(ctx context.Context) error {
		defer l.Close()
		return k.Run(ctx)
	})
	defer stop()
	appendTen := func(from int) {
		var es [][]byte
		for i := from; i < from+10; i++ {
			es = append(es, fmt.Appendf(nil, "entry-%d", i))
		}
		if _, err := l.AppendBatch(context.Background(), es); err != nil {
			t.Fatal(err)
		}
	}
	appendTen(1)
	testkit.WaitFor(t, "the first ten acknowledged", 4*time.Second, func() bool { return l.Released() == 10 })
	restart.Store(true)
	appendTen(11)
	took := testkit.WaitFor(t, "the next ten acknowledged before the first tick", 4*time.Second, func() bool { return l.Released() == 20 })
	t.Logf("acknowledged %v after they were appended, 500 ms of it with the middletier down", took)
	stop()
	mt.Stop()
	exactlyOnce(t, records(t, mt), 20)
}

// A middletier that takes connections and answers nothing (a stopped
// process: its kernel still completes them) holds the Link for one
// DialTimeout, and the Link moves to the next. A connection that sends
// nothing to a middletier keeps no frontend from connecting to it.
// Before, both waited for a greeting for good.
func TestSilentPeers(t *testing.T) {
	t.Run("silent-middletier", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close() // never accepts
		silent := "tcp://" + ln.Addr().String()
		mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
		eps := []string{silent, mt.Addrs.Ingest}
		id := rankingFirst(silent, eps)
		f := startLink(t, uplink.Options{ID: id, Middletiers: eps, DialTimeout: 200 * time.Millisecond})
		forwardHundred(t, f, mt)
	})
	t.Run("silent-connection", func(t *testing.T) {
		mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
		nc, err := net.Dial("tcp", strings.TrimPrefix(mt.Addrs.Ingest, "tcp://"))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close() // sends nothing
		forwardHundred(t, startLink(t, uplink.Options{Middletiers: []string{mt.Addrs.Ingest}}), mt)
	})
}

// forwardHundred appends 100 entries and fails unless f has them all
// acknowledged within 10 s, and mt holds each once.
func forwardHundred(t *testing.T, f *frontend, mt *testkit.Middletier) {
	t.Helper()
	f.appendEntries(t, 100, 0)
	took := testkit.WaitFor(t, "every entry acknowledged", 10*time.Second, func() bool { return f.log.Released() == 100 })
	t.Logf("acknowledged in %v", took)
	f.stop()
	mt.Stop()
	exactlyOnce(t, records(t, mt), 100)
}

// A middletier that takes each connection and drops it once greeted is
// dialed again after a backoff that grows, as one that refuses them: not
// again and again at once (the Link dialed it about 10,000 times in two
// seconds).
func TestFlappingMiddletierBackoff(t *testing.T) {
	ep, greeted := testkit.StartFlapper(t)
	f := startLink(t, uplink.Options{Middletiers: []string{ep}})
	f.appendEntries(t, 10, 0)
	time.Sleep(2 * time.Second)
	f.stop()
	n := greeted.Load()
	t.Logf("greeted and dropped %d connections in 2 s", n)
	if n < 2 || n > 30 {
		t.Fatalf("the Link connected %d times in 2 s to a middletier that drops every connection, want a few", n)
	}
}

// A first choice that drops each connection once greeted is left for the
// next middletier once it has been silent for Failover, as one that
// answers nothing. Before, the Link failed over only from a live
// connection, and it was seldom connected to this one when it looked: it
// stayed with it.
func TestFlappingMiddletierFailover(t *testing.T) {
	flapper, greeted := testkit.StartFlapper(t)
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	eps := []string{flapper, mt.Addrs.Ingest}
	id := rankingFirst(flapper, eps)
	f := startLink(t, uplink.Options{ID: id, Middletiers: eps, Failover: time.Second, Return: time.Hour})
	forwardHundred(t, f, mt)
	if greeted.Load() == 0 {
		t.Fatal("the Link never reached its first choice")
	}
}

// A resend asked for on a new connection is answered at once, though the
// same one was answered on the connection before within AckTimeout (as
// when zmq4 loses the first batches on each). Before, the Link took it for
// a repeat of the earlier request and sent again only after AckTimeout.
// The middletier is a bare ROUTER behind a proxy: it asks for a resend of
// the first batch it gets on each connection, cuts the first connection
// once the resend has come, and acknowledges the resend on the second.
func TestResendOnANewConnection(t *testing.T) {
	type batch struct {
		id string
		b  *wire.Batch
		at time.Time
	}
	in := make(chan batch, 100)
	mt := testkit.StartRouter(t, func(id []byte, m wire.Message) {
		if b, ok := m.(*wire.Batch); ok {
			in <- batch{string(id), b, time.Now()}
		}
	})
	p := tcpproxy.Start(t, strings.TrimPrefix(mt.Addr(), "tcp://"))
	const ackTimeout = 8 * time.Second
	f := startLink(t, uplink.Options{Middletiers: []string{p.Endpoint()}, AckTimeout: ackTimeout})
	f.appendEntries(t, 10, 0)

	var conns []string
	seen := map[string]int{}
	var asked time.Time
	for {
		var got batch
		select {
		case got = <-in:
		case <-time.After(2 * ackTimeout):
			t.Fatalf("no batch in %v (connections %d)", 2*ackTimeout, len(conns))
		}
		if got.b.First != 1 {
			continue
		}
		if seen[got.id] == 0 {
			conns = append(conns, got.id)
		}
		seen[got.id]++
		switch {
		case seen[got.id] == 1:
			asked = time.Now()
			mt.Reply([]byte(got.id), &wire.Resend{Origin: got.b.Origin, From: 1})
		case len(conns) == 1:
			p.Cut() // the resend came on the first connection
			p.Restore()
		default:
			if wait := got.at.Sub(asked); wait > ackTimeout/2 {
				t.Errorf("the resend asked for on the new connection came %v after the request: it waited for the ack timeout (%v)", wait, ackTimeout)
			}
			last := got.b.First + uint64(len(got.b.Entries)) - 1
			mt.Reply([]byte(got.id), &wire.Ack{Origin: got.b.Origin, UpTo: last})
			testkit.WaitFor(t, "the entries released", 10*time.Second, func() bool { return f.log.Released() == last })
			return
		}
	}
}

// A first choice that drops each connection once greeted is not returned
// to: the look's socket to it ends within its probation (a second), and
// the Link stays where it is and looks less often. Before, it took the
// ended socket over, and went back to the first choice for Failover (2 s
// here) after every look; with nothing in flight when the look came, at
// once, so that nothing reached the second choice at all. Entries
// appended every 50 ms after the first failover must each be
// acknowledged within a second.
func TestNoReturnToAFlappingFirstChoice(t *testing.T) {
	flapper, greeted := testkit.StartFlapper(t)
	mt := startTier(t, t.TempDir(), middletier.Options{}, wal.Options{})
	eps := []string{flapper, mt.Addrs.Ingest}
	id := rankingFirst(flapper, eps)
	f := startLink(t, uplink.Options{ID: id, Middletiers: eps, Failover: 2 * time.Second, Return: 200 * time.Millisecond})
	f.appendEntries(t, 10, 0)
	testkit.WaitFor(t, "the failover to the second choice", 10*time.Second, func() bool { return f.log.Released() == 10 })
	looks := greeted.Load()
	var worst time.Duration
	for i := range 60 {
		start := time.Now()
		want, err := f.log.AppendBatch(context.Background(), [][]byte{fmt.Appendf(nil, "entry-%d", 11+i)})
		if err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, "the entry acknowledged", 10*time.Second, func() bool { return f.log.Released() >= want })
		worst = max(worst, time.Since(start))
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the longest wait for an acknowledgement %v; the first choice greeted %d connections meanwhile", worst, greeted.Load()-looks)
	if greeted.Load() == looks {
		t.Fatal("the Link never looked at its first choice again")
	}
	if worst > time.Second {
		t.Fatalf("an entry waited %v for its acknowledgement: the Link returned to a first choice that drops every connection", worst)
	}
}

// rankingFirst returns a frontend id (fe-N) whose ranking of eps puts ep
// first.
func rankingFirst(ep string, eps []string) string {
	for i := 0; ; i++ {
		if id := fmt.Sprint("fe-", i); uplink.Rank(id, eps)[0] == ep {
			return id
		}
	}
}

// stoppedAfterFirst listens on 127.0.0.1 and forwards its first
// connection to target; later ones it takes and never answers, as the
// kernel of a stopped process does from its listen backlog. It returns its
// endpoint.
func stoppedAfterFirst(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		held []net.Conn
		wg   sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for first := true; ; first = false {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			if !first {
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			held = append(held, s)
			mu.Unlock()
			wg.Go(func() { io.Copy(s, c); s.Close() })
			wg.Go(func() { io.Copy(c, s); c.Close() })
		}
	})
	return "tcp://" + ln.Addr().String()
}

// TestCurrentLostDuringAReturnsProbation: the Link is on its second
// choice, which takes batches and acknowledges none (a stopped process),
// when its first choice comes back and a look connects a standby socket to
// it. The second choice's socket is closed for want of acknowledgements
// while the standby is on probation, and dialing it again hangs until the
// greeting's timeout. The Link must go on to the standby (its current
// connection is gone, as when it ends) and have everything acknowledged
// there. Before, probation logged the current connection's endpoint with
// no current connection, and the frontend's process panicked.
func TestCurrentLostDuringAReturnsProbation(t *testing.T) {
	a := startTier(t, t.TempDir(), middletier.Options{ID: "mt-a"}, wal.Options{})
	pa := tcpproxy.Start(t, strings.TrimPrefix(a.Addrs.Ingest, "tcp://"))
	pa.Cut() // the first choice is down when the Link starts
	silent := testkit.StartRouter(t, func([]byte, wire.Message) {})
	b := stoppedAfterFirst(t, strings.TrimPrefix(silent.Addr(), "tcp://"))
	eps := []string{pa.Endpoint(), b}
	id := rankingFirst(pa.Endpoint(), eps)
	f := startLink(t, uplink.Options{ID: id, Middletiers: eps, AckTimeout: 200 * time.Millisecond,
		Failover: time.Hour, Return: 300 * time.Millisecond})
	f.appendEntries(t, 10, 0)
	time.Sleep(100 * time.Millisecond) // on the second choice by now
	pa.Restore()
	testkit.WaitFor(t, "every entry acknowledged by the first choice", 15*time.Second, func() bool { return f.log.Released() == 10 })
	f.stop()
	a.Stop()
	exactlyOnce(t, records(t, a), 10)
}
