package wal_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

func openLog(t testing.TB, dir string, opts wal.Options, reg prometheus.Registerer) *wal.Log {
	t.Helper()
	l, err := wal.Open(dir, opts, reg, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func readAll(t testing.TB, l *wal.Log, from uint64) []wal.Entry {
	t.Helper()
	c, err := l.Cursor(from)
	if err != nil {
		t.Fatalf("cursor: %v", err)
	}
	var out []wal.Entry
	for last := l.LastIndex(); lastIndex(out) < last && (from == 0 || from <= last); {
		out, err = c.NextBatch(context.Background(), out, 1000)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	return out
}

func lastIndex(es []wal.Entry) uint64 {
	if len(es) == 0 {
		return 0
	}
	return es[len(es)-1].Index
}

func TestAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l := openLog(t, dir, wal.Options{Hop: "test"}, nil)
	var want [][]byte
	for i := range 100 {
		d := []byte(fmt.Sprintf("entry-%d", i))
		idx, err := l.Append(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if idx != uint64(i+1) {
			t.Fatalf("index %d, want %d", idx, i+1)
		}
		want = append(want, d)
	}
	first, err := l.AppendBatch(ctx, [][]byte{[]byte("a"), {}, []byte("c")})
	if err != nil || first != 101 {
		t.Fatalf("batch: first %d err %v", first, err)
	}
	want = append(want, []byte("a"), []byte{}, []byte("c"))
	if _, err := l.AppendBatch(ctx, nil); !errors.Is(err, wal.ErrEmptyBatch) {
		t.Fatalf("empty batch: %v", err)
	}
	check := func(l *wal.Log) {
		t.Helper()
		got := readAll(t, l, 0)
		if len(got) != len(want) {
			t.Fatalf("read %d entries, want %d", len(got), len(want))
		}
		for i, e := range got {
			if e.Index != uint64(i+1) || !bytes.Equal(e.Data, want[i]) {
				t.Fatalf("entry %d: index %d data %q, want %q", i, e.Index, e.Data, want[i])
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := l.Append(ctx, []byte("x")); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	l2 := openLog(t, dir, wal.Options{Hop: "test"}, nil)
	if l2.LastIndex() != 103 {
		t.Fatalf("last index after reopen %d", l2.LastIndex())
	}
	check(l2)
	idx, err := l2.Append(ctx, []byte("after"))
	if err != nil || idx != 104 {
		t.Fatalf("append after reopen: %d %v", idx, err)
	}
}

// Concurrent appenders each see their own entries in the order they appended
// them, with every index used once.
func TestConcurrentAppendOrder(t *testing.T) {
	l := openLog(t, t.TempDir(), wal.Options{SegmentBytes: 64 << 10}, nil)
	const writers, each = 32, 200
	var wg sync.WaitGroup
	idx := make([][]uint64, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				n, err := l.Append(context.Background(), fmt.Appendf(nil, "%d/%d", w, i))
				if err != nil {
					t.Error(err)
					return
				}
				idx[w] = append(idx[w], n)
			}
		})
	}
	wg.Wait()
	var all []uint64
	for w := range writers {
		if !slices.IsSorted(idx[w]) {
			t.Fatalf("writer %d: indexes out of order", w)
		}
		all = append(all, idx[w]...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	for i, n := range all {
		if n != uint64(i+1) {
			t.Fatalf("indexes not consecutive at %d: %d", i, n)
		}
	}
	for _, e := range readAll(t, l, 0) {
		var w, i int
		if _, err := fmt.Sscanf(string(e.Data), "%d/%d", &w, &i); err != nil {
			t.Fatal(err)
		}
		if idx[w][i] != e.Index {
			t.Fatalf("entry %d holds %d/%d, which was acknowledged at %d", e.Index, w, i, idx[w][i])
		}
	}
}

// A cursor waits for entries that are not yet committed, and gives up when
// its context ends.
func TestCursorWaits(t *testing.T) {
	l := openLog(t, t.TempDir(), wal.Options{}, nil)
	c, err := l.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("next on empty log: %v", err)
	}
	got := make(chan wal.Entry)
	go func() {
		e, err := c.Next(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- e
	}()
	if _, err := l.Append(context.Background(), []byte("late")); err != nil {
		t.Fatal(err)
	}
	if e := <-got; e.Index != 1 || string(e.Data) != "late" {
		t.Fatalf("got %d %q", e.Index, e.Data)
	}
	// A reader blocked when the log closes is told so.
	done := make(chan error)
	go func() {
		_, err := c.Next(context.Background())
		done <- err
	}()
	l.Close()
	if err := <-done; !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("next after close: %v", err)
	}
}

func TestReleaseTruncatesAndSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	opts := wal.Options{Hop: "test", SegmentBytes: 4096}
	l := openLog(t, dir, opts, reg)
	ctx := context.Background()
	payload := bytes.Repeat([]byte("x"), 100)
	for range 400 { // about 44 KB: eleven segments
		if _, err := l.Append(ctx, payload); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(segmentFiles(t, dir)); n < 10 {
		t.Fatalf("%d segment files, want at least 10", n)
	}
	if err := l.Release(401); err == nil {
		t.Fatal("release beyond the last entry accepted")
	}
	if err := l.Release(300); err != nil {
		t.Fatal(err)
	}
	if e, b := l.Depth(); e != 100 || b != 100*100 {
		t.Fatalf("depth %d entries %d bytes, want 100 and 10000", e, b)
	}
	// Truncation removes the segments wholly released; the one holding
	// entry 301 stays whole.
	first := segmentHolding(l.SegmentStarts(), 301)
	if first <= 1 {
		t.Fatalf("entry 301 in the first segment (starts %v)", l.SegmentStarts())
	}
	waitFor(t, "truncation", func() bool { return l.FirstIndex() == first })
	if got := metricValue(t, reg, "ingest_queue_depth_entries", "test"); got != 100 {
		t.Fatalf("depth gauge %v", got)
	}
	// The log's idea of its segments matches the files on disk.
	if got, want := l.SegmentStarts(), segmentFiles(t, dir); !slices.Equal(got, want) {
		t.Fatalf("tracked segments %v, on disk %v", got, want)
	}
	if _, err := l.Cursor(5); !errors.Is(err, wal.ErrCompacted) {
		t.Fatalf("cursor below the first entry: %v", err)
	}
	l.Close()

	l2 := openLog(t, dir, opts, nil)
	if l2.Released() != 300 || l2.FirstIndex() != first || l2.LastIndex() != 400 {
		t.Fatalf("after reopen released %d first %d last %d", l2.Released(), l2.FirstIndex(), l2.LastIndex())
	}
	got := readAll(t, l2, 0)
	if len(got) != 100 || got[0].Index != 301 {
		t.Fatalf("read %d entries from %d after restart", len(got), got[0].Index)
	}
	// Releasing everything removes every segment but the tail, and appends
	// go on.
	tail := l2.SegmentStarts()[len(l2.SegmentStarts())-1]
	if err := l2.Release(400); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "full truncation", func() bool { return l2.FirstIndex() == tail || l2.Err() != nil })
	if err := l2.Err(); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if _, err := l2.Append(ctx, payload); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := l2.SegmentStarts(), segmentFiles(t, dir); !slices.Equal(got, want) {
		t.Fatalf("tracked segments %v, on disk %v", got, want)
	}
	l2.Close()
	l3 := openLog(t, dir, opts, nil)
	if got := readAll(t, l3, 0); len(got) != 100 || got[0].Index != 401 {
		t.Fatalf("read %d entries after the second restart", len(got))
	}
}

func TestBound(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := openLog(t, t.TempDir(), wal.Options{Hop: "test", MaxBytes: 1000, MaxEntries: 50}, reg)
	ctx := context.Background()
	if _, err := l.Append(ctx, make([]byte, 1001)); !errors.Is(err, wal.ErrTooLarge) {
		t.Fatalf("oversized entry: %v", err)
	}
	for range 9 {
		if _, err := l.Append(ctx, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.AppendBatch(ctx, [][]byte{make([]byte, 50), make([]byte, 51)}); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("batch over the byte bound: %v", err)
	}
	if _, err := l.Append(ctx, make([]byte, 100)); err != nil {
		t.Fatalf("append that fits exactly: %v", err)
	}
	room := l.Room()
	if _, err := l.Append(ctx, []byte{1}); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("append at the bound: %v", err)
	}
	select {
	case <-room:
		t.Fatal("Room closed with nothing released")
	default:
	}
	if err := l.Release(5); err != nil {
		t.Fatal(err)
	}
	select {
	case <-room:
	default:
		t.Fatal("Room not closed by a release")
	}
	if _, err := l.Append(ctx, make([]byte, 500)); err != nil {
		t.Fatalf("append after release: %v", err)
	}
	if got := metricValue(t, reg, "ingest_wal_full_total", "test"); got != 2 {
		t.Fatalf("full counter %v, want 2", got)
	}
	// The entry bound.
	if err := l.Release(l.LastIndex()); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if _, err := l.Append(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Append(ctx, nil); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("append over the entry bound: %v", err)
	}
	// A waiter is woken when the log closes, to see ErrClosed.
	room = l.Room()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-room:
	default:
		t.Fatal("Room not closed by Close")
	}
	// One taken after Close is closed too: no waiter is left behind.
	select {
	case <-l.Room():
	default:
		t.Fatal("Room taken after Close not closed")
	}
}

// TestAppendReplacing: an append that supersedes entries (a compaction) is
// admitted as if they were released: into a log at its bound, and into a
// log reopened over it (its last releases not yet durable when it
// stopped), as long as the entries fit once the superseded ones are gone.
func TestAppendReplacing(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	l := openLog(t, dir, wal.Options{Hop: "test", MaxBytes: 1000, MaxEntries: 50}, nil)
	for range 10 {
		if _, err := l.Append(ctx, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.AppendBatch(ctx, [][]byte{make([]byte, 300)}); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("append at the bound: %v", err)
	}
	// Superseding 3 of the 10 frees room for 300 bytes, not 301.
	if _, err := l.AppendReplacing(ctx, [][]byte{make([]byte, 301)}, 3); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("a replacing append past the room it frees: %v", err)
	}
	first, err := l.AppendReplacing(ctx, [][]byte{make([]byte, 300)}, 3)
	if err != nil || first != 11 {
		t.Fatalf("a replacing append within the room it frees: %d, %v", first, err)
	}
	if _, b := l.Depth(); b != 1300 {
		t.Fatalf("depth %d bytes before the release, want 1300 (past the bound until then)", b)
	}
	if err := l.Release(3); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopened with a lower bound, over it: only a replacing append gets in.
	l = openLog(t, dir, wal.Options{Hop: "test", MaxBytes: 500}, nil)
	if _, err := l.Append(ctx, []byte{1}); !errors.Is(err, wal.ErrFull) {
		t.Fatalf("append into a log over its bound: %v", err)
	}
	if _, err := l.AppendReplacing(ctx, [][]byte{make([]byte, 400)}, l.LastIndex()); err != nil {
		t.Fatalf("a compaction of a log over its bound: %v", err)
	}
}

// After a failed fsync the log refuses every append with that error, never
// retries the fsync, and recovers what is on disk when reopened.
func TestFailStop(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	l, err := wal.Open(dir, wal.Options{Hop: "test"}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	boom := errors.New("injected fsync failure")
	var mu sync.Mutex
	syncs, fail := 0, false
	l.SetSync(func() error {
		mu.Lock()
		defer mu.Unlock()
		syncs++
		if fail {
			return boom
		}
		return nil
	})
	ctx := context.Background()
	if _, err := l.Append(ctx, []byte("durable")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Failed():
		t.Fatal("Failed closed before any failure")
	default:
	}
	mu.Lock()
	fail = true
	mu.Unlock()
	if _, err := l.Append(ctx, []byte("lost")); !errors.Is(err, boom) {
		t.Fatalf("append with failing fsync: %v", err)
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	for range 3 {
		if _, err := l.Append(ctx, []byte("refused")); !errors.Is(err, boom) {
			t.Fatalf("append after failure: %v", err)
		}
	}
	mu.Lock()
	if syncs != 2 {
		t.Fatalf("%d fsyncs, want 2: a failed fsync must not be retried", syncs)
	}
	mu.Unlock()
	if got := metricValue(t, reg, "ingest_wal_failed", "test"); got != 1 {
		t.Fatalf("failed gauge %v", got)
	}
	if !errors.Is(l.Err(), boom) {
		t.Fatalf("Err() = %v", l.Err())
	}
	select {
	case <-l.Failed():
	default:
		t.Fatal("Failed not closed after the failure")
	}
	l.Close()
	l2 := openLog(t, dir, wal.Options{Hop: "test"}, nil)
	got := readAll(t, l2, 0)
	if len(got) < 1 || string(got[0].Data) != "durable" {
		t.Fatalf("after reopen: %v", got)
	}
	if _, err := l2.Append(ctx, []byte("again")); err != nil {
		t.Fatalf("append after reopen: %v", err)
	}
}

func TestMetricsUnregisteredOnClose(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{Hop: "frontend"}, reg)
	// A second log of another hop shares the registry.
	l2 := openLog(t, t.TempDir(), wal.Options{Hop: "middletier"}, reg)
	if _, err := l.AppendBatch(context.Background(), [][]byte{[]byte("ab"), []byte("cde")}); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, reg, "ingest_queue_depth_bytes", "frontend"); got != 5 {
		t.Fatalf("depth bytes %v, want 5", got)
	}
	if got := metricValue(t, reg, "ingest_wal_appended_entries_total", "frontend"); got != 2 {
		t.Fatalf("appended %v, want 2", got)
	}
	l.Close()
	l2.Close()
	n, err := testutil.GatherAndCount(reg)
	if err != nil || n != 0 {
		t.Fatalf("%d metrics left after close (%v)", n, err)
	}
	// The same registry takes a reopened log.
	openLog(t, dir, wal.Options{Hop: "frontend"}, reg)
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []wal.Options{{SegmentBytes: -1}, {MaxBytes: -1}, {SegmentBytes: 100}} {
		if _, err := wal.Open(t.TempDir(), o, nil, nil); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

// segmentFiles lists the first indexes of the segment files in dir.
// segmentHolding returns the start of the segment that holds index.
func segmentHolding(starts []uint64, index uint64) uint64 {
	var s uint64
	for _, start := range starts {
		if start <= index {
			s = start
		}
	}
	return s
}

func segmentFiles(t testing.TB, dir string) []uint64 {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, de := range des {
		var n uint64
		if len(de.Name()) == 20 {
			if _, err := fmt.Sscanf(de.Name(), "%d", &n); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func segmentPaths(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	for _, n := range segmentFiles(t, dir) {
		out = append(out, filepath.Join(dir, fmt.Sprintf("%020d", n)))
	}
	return out
}

// metricValue returns the value of the one gauge or counter called name.
func metricValue(t testing.TB, reg *prometheus.Registry, name, hop string) float64 {
	t.Helper()
	for _, m := range testkit.Series(t, reg, name) {
		for _, lp := range m.GetLabel() {
			if lp.GetName() != "hop" || lp.GetValue() != hop {
				continue
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s{hop=%q}", name, hop)
	return 0
}

// A log keeps its identity across reopening; a log created anew in the same
// place gets another.
func TestIdentity(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{}, nil)
	id := l.ID()
	if id == 0 {
		t.Fatal("zero identity")
	}
	if _, err := l.Append(context.Background(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = openLog(t, dir, wal.Options{}, nil)
	if l.ID() != id {
		t.Fatalf("identity changed across reopen: %x, was %x", l.ID(), id)
	}
	l.Close()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, wal.Options{}, nil)
	if l.ID() == id {
		t.Fatal("a new log in the same place has the old identity")
	}
	l.Close()
	// A damaged identity file is replaced, not an error.
	if err := os.WriteFile(filepath.Join(dir, "log-id"), []byte("junk"), 0o640); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, wal.Options{}, nil)
	if l.ID() == 0 {
		t.Fatal("zero identity after damage")
	}
}

func TestNotify(t *testing.T) {
	l := openLog(t, t.TempDir(), wal.Options{}, nil)
	ch := l.Notify()
	select {
	case <-ch:
		t.Fatal("notified before any commit")
	default:
	}
	if _, err := l.Append(context.Background(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("not notified of a commit")
	}
	ch = l.Notify()
	l.Close()
	select {
	case <-ch:
	default:
		t.Fatal("not notified of close")
	}
}

// waitFor is the package test files' waitFor.
var waitFor = wal.WaitFor

// TestCommitInterval: appends that come within Options.CommitInterval of
// the last commit's start wait for the rest of it and go out together, in
// one group commit (one write, one fsync); the first, with no commit
// before it, goes at once.
func TestCommitInterval(t *testing.T) {
	reg := prometheus.NewRegistry()
	// An interval far longer than the first commit's fsync and the ten
	// appends' 50 ms, so that all ten come within it on a slow disk too.
	l, err := wal.Open(t.TempDir(), wal.Options{Hop: "paced", CommitInterval: time.Second}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	if _, err := l.Append(ctx, []byte("first")); err != nil {
		t.Fatal(err)
	}
	// Ten appends 5 ms apart, each of which would have a commit of its own
	// without the interval.
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			if _, err := l.Append(ctx, fmt.Appendf(nil, "entry %d", i)); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	if n := testkit.Metric(t, reg, "ingest_wal_batch_entries"); n != 2 {
		t.Fatalf("%v group commits, want 2: the first append alone, then the ten together", n)
	}
	if n := metricValue(t, reg, "ingest_wal_appended_entries_total", "paced"); n != 11 {
		t.Fatalf("%v entries appended, want 11", n)
	}
	entries := readAll(t, l, 1)
	if len(entries) != 11 {
		t.Fatalf("read %d entries, want 11", len(entries))
	}
}

// TestNextBatchShared: NextBatchShared returns the entries NextBatch does,
// across segments, with no allocation once its buffer has grown; the next
// call overwrites the last one's data, which NextBatch's never is.
func TestNextBatchShared(t *testing.T) {
	ctx := context.Background()
	l := openLog(t, t.TempDir(), wal.Options{Hop: "test", SegmentBytes: 64 << 10}, nil)
	const n = 3000
	for i := range n {
		if _, err := l.Append(ctx, fmt.Appendf(nil, "entry %05d %s", i, bytes.Repeat([]byte{byte('a' + i%26)}, 50+i%100))); err != nil {
			t.Fatal(err)
		}
	}
	want := readAll(t, l, 1)
	if len(want) != n {
		t.Fatalf("read %d entries, want %d", len(want), n)
	}
	c, err := l.Cursor(1)
	if err != nil {
		t.Fatal(err)
	}
	var es []wal.Entry
	next := 0
	read := func() {
		es, err = c.NextBatchShared(ctx, es[:0], 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Index != want[next].Index || !bytes.Equal(e.Data, want[next].Data) {
				t.Fatalf("entry %d: %d %q, want %d %q", next, e.Index, e.Data, want[next].Index, want[next].Data)
			}
			next++
		}
	}
	read()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		read()
	}
	runtime.ReadMemStats(&after)
	// Ten entries a call, each its own allocation without sharing: 1,000.
	// With it, the buffer's growth to the largest batch, and whatever
	// the log's goroutines allocate meanwhile.
	if n := after.Mallocs - before.Mallocs; n >= 100 {
		t.Errorf("NextBatchShared: %d allocations in 100 calls, want under one a call", n)
	}
	last := es[0]
	kept := slices.Clone(last.Data)
	read()
	if bytes.Equal(last.Data, kept) {
		t.Errorf("the last call's data is unchanged by the next: not shared")
	}
	for next < n {
		read()
	}
	if !bytes.Equal(want[0].Data, []byte(fmt.Sprintf("entry %05d %s", 0, bytes.Repeat([]byte{'a'}, 50)))) {
		t.Errorf("NextBatch's entry 1 changed: %q", want[0].Data)
	}
}

// TestReadsWhileSegmentsReused: a log whose segments (8 KiB) turn over
// every few appends, released as a cursor reads them, so that tidwall/wal
// drops segments from its cache on every write that starts one and on
// every truncation, and new segments take their buffers. Two cursors read
// every entry while the appends go on (one with NextBatchShared, one
// entry at a time with Next) and see what was appended. (A read holds a
// slice into a buffer only for the moment it copies from it, too short a
// window to hit on purpose: reuseEvicted's comment says why none is
// reused in it.)
func TestReadsWhileSegmentsReused(t *testing.T) {
	ctx := context.Background()
	l := openLog(t, t.TempDir(), wal.Options{Hop: "test", SegmentBytes: 8 << 10}, nil)
	const n = 20000
	payload := func(i uint64) []byte {
		return fmt.Appendf(nil, "%08d%s", i, bytes.Repeat([]byte{byte('a' + i%26)}, int(20+i%200)))
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := uint64(1); i <= n; i++ {
			if _, err := l.Append(ctx, payload(i)); err != nil {
				t.Error(err)
				return
			}
		}
	})
	check := func(e wal.Entry) bool {
		if want := payload(e.Index); !bytes.Equal(e.Data, want) {
			t.Errorf("entry %d: %.12q..., want %.12q...", e.Index, e.Data, want)
			return false
		}
		return true
	}
	c1, err := l.Cursor(1)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := l.Cursor(1)
	if err != nil {
		t.Fatal(err)
	}
	var read2 atomic.Uint64 // the last entry c2 has read
	wg.Go(func() {
		for i := uint64(1); i <= n; i++ {
			e, err := c2.Next(ctx)
			if err != nil || e.Index != i {
				t.Errorf("Next: %d, %v; want entry %d", e.Index, err, i)
				return
			}
			if !check(e) {
				return
			}
			read2.Store(i)
		}
	})
	var es []wal.Entry
	for next := uint64(1); next <= n; {
		es, err = c1.NextBatchShared(ctx, es[:0], 64)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Index != next || !check(e) {
				t.Fatalf("entry %d read as %d", next, e.Index)
			}
			next++
		}
		// Released entries are truncated once both cursors are past them.
		if err := l.Release(min(next-1, read2.Load())); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

// TestTruncateUnderSteadyLoad: released segments are removed while appends
// keep coming from many callers. The writer goroutine, once it leads the
// commits, stays leading while each group commit finds more appends
// queued, and it used to take the releaser's truncations only when the
// queue emptied: under steady load, never, and the disk filled with
// released segments. The fsync here takes 2 ms (as on a network disk), so
// that appends always queue behind it.
func TestTruncateUnderSteadyLoad(t *testing.T) {
	l := openLog(t, t.TempDir(), wal.Options{Hop: "test", SegmentBytes: 64 << 10, MarkInterval: 10 * time.Millisecond, NoPreallocate: true}, nil)
	defer l.Close()
	l.SetSync(func() error { time.Sleep(2 * time.Millisecond); return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	data := make([]byte, 1024)
	for range 32 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := l.Append(context.Background(), data); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
			if err := l.Release(l.LastIndex()); err != nil {
				t.Error(err)
				return
			}
		}
	})
	most := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
		time.Sleep(100 * time.Millisecond)
		if time.Until(end) < time.Second { // past the first second
			most = max(most, len(l.SegmentStarts()))
		}
	}
	cancel()
	wg.Wait()
	t.Logf("at most %d segments of 64 KiB in the second second; %d entries appended", most, l.LastIndex())
	if most > 10 {
		t.Fatalf("%d segments on disk under load, all but the last few released", most)
	}
}

// TestForEach: ForEach visits every entry still on disk, released ones
// included, in order, and stops at fn's first error.
func TestForEach(t *testing.T) {
	l := openLog(t, t.TempDir(), wal.Options{Hop: "test", SegmentBytes: 4096}, nil)
	if err := l.ForEach(func(wal.Entry) error { t.Fatal("an entry in an empty log"); return nil }); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 5000 { // more than one batch of the cursor
		if _, err := l.Append(ctx, fmt.Appendf(nil, "e%d", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Release(10); err != nil {
		t.Fatal(err)
	}
	first := l.FirstIndex()
	next := first
	err := l.ForEach(func(e wal.Entry) error {
		if e.Index != next || string(e.Data) != fmt.Sprintf("e%d", e.Index) {
			t.Fatalf("entry %d %q, want %d", e.Index, e.Data, next)
		}
		next++
		return nil
	})
	if err != nil || next != 5001 {
		t.Fatalf("ForEach from %d ended before %d: %v", first, next, err)
	}
	stop := errors.New("stop")
	n := 0
	err = l.ForEach(func(wal.Entry) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 3 {
		t.Fatalf("ForEach after fn's error: %v, %d calls", err, n)
	}
}

// TestReleasedSegmentsGoAtOpen: segments that the durable release mark
// released are removed once the log is opened again, without waiting for
// a later release. The mark of the last life was written at its Close
// (MarkInterval keeps it from being written earlier), after its writer
// had stopped, so nothing removed them then. Before, they stayed until a
// release beyond the mark, which on a disk they had filled never came.
func TestReleasedSegmentsGoAtOpen(t *testing.T) {
	dir := t.TempDir()
	opts := wal.Options{Hop: "test", SegmentBytes: 4096, MarkInterval: time.Hour}
	l, err := wal.Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if _, err := l.Append(context.Background(), fmt.Appendf(nil, "entry-%d-%0100d", i, i)); err != nil {
			t.Fatal(err)
		}
	}
	last := l.LastIndex()
	if err := l.Release(last); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	before := len(segmentFiles(t, dir))
	l, err = wal.Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Released() != last {
		t.Fatalf("released %d after reopening, want %d", l.Released(), last)
	}
	wal.WaitFor(t, "the released segments removed", func() bool { return len(segmentFiles(t, dir)) == 1 })
	t.Logf("%d segment files before reopening, 1 after", before)
	if before < 4 {
		t.Fatalf("only %d segment files were left by the first life: the test shows nothing", before)
	}
}
