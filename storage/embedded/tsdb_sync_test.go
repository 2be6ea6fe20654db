package embedded

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/tsdb/wlog"

	"github.com/ingest-io/ingest/storage"
)

func syncTestPoints(dev string, at time.Time) []storage.Point {
	return []storage.Point{{Device: dev, Time: at, Numbers: map[string]float64{"temp": 21.5}}}
}

func syncRounds(t *testing.T, s *TSDB) uint64 {
	t.Helper()
	var m dto.Metric
	if err := s.m.syncTime.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// Writes whose commits return while a sync is running wait for the next
// sync, and that one sync covers them all (group commit).
func TestTSDBWritesShareSyncs(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := make(chan struct{})
	var once sync.Once
	s.sync.fsync = func(f *os.File) error {
		once.Do(func() { <-release }) // the first sync stalls in its first fsync
		return f.Sync()
	}
	const waiters = 8
	at := time.Now().Add(-time.Minute)
	errs := make(chan error, waiters+1)
	go func() { errs <- s.Write(context.Background(), syncTestPoints("first", at)) }()
	waitInSync(t, 1)
	for i := range waiters {
		go func() { errs <- s.Write(context.Background(), syncTestPoints("dev-"+string(rune('a'+i)), at)) }()
	}
	waitInSync(t, waiters+1)
	close(release)
	for range waiters + 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := syncRounds(t, s); got != 2 {
		t.Errorf("%d writes took %d syncs, want 2: the stalled one, and one for the %d that committed during it", waiters+1, got, waiters)
	}
}

// waitInSync waits until n goroutines are in logSync.sync.
func waitInSync(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		if strings.Count(string(buf[:runtime.Stack(buf, true)]), "embedded.(*logSync).sync(") >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d goroutines in logSync.sync", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A failed fsync fails the write and every later one: the OS may have
// dropped the pages it could not write, so a later fsync that succeeds
// proves nothing.
func TestTSDBSyncFailureIsSticky(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := Open(Options{Dir: t.TempDir()}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := time.Now().Add(-time.Minute)
	if err := s.Write(context.Background(), syncTestPoints("a", at)); err != nil {
		t.Fatal(err)
	}
	failed := func() float64 {
		t.Helper()
		n, err := testutil.GatherAndCount(reg, "ingest_storage_tsdb_failed")
		if err != nil || n != 1 {
			t.Fatalf("ingest_storage_tsdb_failed: %d series, %v", n, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "ingest_storage_tsdb_failed" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	if s.Failed() != nil || failed() != 0 {
		t.Fatalf("healthy TSDB: Failed %v, gauge %v", s.Failed(), failed())
	}
	boom := errors.New("injected fsync failure")
	s.sync.fsync = func(*os.File) error { return boom }
	err = s.Write(context.Background(), syncTestPoints("b", at))
	var ke *storage.KindError
	if !errors.Is(err, boom) || !errors.As(err, &ke) || ke.Kind != "sync" {
		t.Fatalf("write with a failing fsync: %v (%#v), want the failure, kind sync", err, ke)
	}
	s.sync.fsync = (*os.File).Sync
	if err := s.Write(context.Background(), syncTestPoints("c", at)); !errors.Is(err, boom) {
		t.Fatalf("write after a failed fsync: %v, want the failure again", err)
	}
	if !errors.Is(s.Failed(), boom) || failed() != 1 {
		t.Fatalf("after a failed fsync: Failed %v, gauge %v; want the failure and 1", s.Failed(), failed())
	}
}

// A sync fsyncs the segment it synced last if it was written since, and
// every one after it, and the directory when one was created; segments removed by WAL truncation
// (their data is in a checkpoint, fsynced) are passed over.
func TestSegLogSyncFollowsSegments(t *testing.T) {
	dir := t.TempDir()
	var synced []string
	fsync := func(f *os.File) error {
		synced = append(synced, filepath.Base(f.Name()))
		return f.Sync()
	}
	create := func(i int) {
		if err := os.WriteFile(wlog.SegmentName(dir, i), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	appendTo := func(i int) {
		f, err := os.OpenFile(wlog.SegmentName(dir, i), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write([]byte("y")); err != nil {
			t.Fatal(err)
		}
	}
	l := &segLog{dir: dir, seg: -1}
	defer func() { l.f.Close() }()
	step := func(wantCreated bool, want ...string) {
		t.Helper()
		synced = nil
		created, err := l.sync(fsync)
		if err != nil {
			t.Fatal(err)
		}
		if created != wantCreated || !slices.Equal(synced, want) {
			t.Fatalf("sync: created %v, fsynced %q; want %v, %q", created, synced, wantCreated, want)
		}
	}
	step(false) // no segment yet
	create(0)
	step(true, "00000000")
	step(false) // not written since: passed over
	appendTo(0)
	step(false, "00000000")
	create(1)
	create(2)
	create(3)
	// WAL truncation removes the oldest segments, here the one held too.
	for _, i := range []int{0, 1} {
		if err := os.Remove(wlog.SegmentName(dir, i)); err != nil {
			t.Fatal(err)
		}
	}
	step(true, "00000002", "00000003")
	if err := os.Remove(wlog.SegmentName(dir, 2)); err != nil {
		t.Fatal(err)
	}
	step(false)
	appendTo(3)
	step(false, "00000003")
	create(4)
	step(true, "00000004")
	appendTo(4)
	create(5)
	step(true, "00000004", "00000005")
}

// The write-behind log's failed-writes counter, registered through a
// wrapping registerer as tsdb.Open does, is kept as the metric it collected
// once and read live on every commit; the TSDB has one.
func TestWBLWritesFailedRead(t *testing.T) {
	m := &tsdbMetrics{}
	if got := m.wblWritesFailed(); got != 0 {
		t.Fatalf("no counter read as %v, want 0", got)
	}
	reg := prometheus.NewRegistry()
	wrapped := prometheus.WrapRegistererWithPrefix("prometheus_tsdb_out_of_order_wbl_", watchRegisterer{reg: reg, m: m})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "writes_failed_total"})
	wrapped.MustRegister(c)
	c.Add(2)
	if got := m.wblWritesFailed(); got != 2 {
		t.Fatalf("counter read as %v, want 2", got)
	}
	c.Inc()
	if got := m.wblWritesFailed(); got != 3 {
		t.Fatalf("counter read as %v after one more, want 3", got)
	}
	if got := testutil.ToFloat64(c); got != 3 {
		t.Fatalf("registry has %v", got)
	}

	s, err := Open(Options{Dir: t.TempDir(), OutOfOrderWindow: time.Hour}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.m.wblFailed == nil {
		t.Fatal("the TSDB registered no write-behind log failed-writes counter that Write could read")
	}
}
