package wal_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/tmpfs"
	"github.com/ingest-io/ingest/wal"
)

func noSpacePayload(w, i int) []byte {
	return []byte(fmt.Sprintf("w%02d-%06d|%s", w, i, strings.Repeat("p", 180)))
}

// TestNoSpaceIsBackpressure fills the file system under a log while
// appenders keep appending, then frees it. While it is full, appends fail
// with ErrNoSpace and the log does not fail; once room is back they succeed
// again by themselves. Every append that returned an index is in the log
// once, in order, and no refused one is: a write that met ENOSPC is undone,
// in memory and on disk.
func TestNoSpaceIsBackpressure(t *testing.T) {
	for _, prealloc := range []bool{true, false} {
		t.Run(fmt.Sprintf("prealloc=%v", prealloc), func(t *testing.T) {
			dir := filepath.Join(tmpfs.Mount(t, 1<<20), "wal")
			opts := wal.Options{Hop: "test", SegmentBytes: 16 << 10, NoSpaceRetry: 20 * time.Millisecond, NoPreallocate: !prealloc}
			reg := prometheus.NewRegistry()
			l := openLog(t, dir, opts, reg)

			// The appenders take a token for each new payload (a refused
			// one is sent again on the same token), so that the log itself
			// does not fill the file system again once the filler is
			// gone: the appends after it have its room.
			const writers = 6
			var (
				mu      sync.Mutex
				acked   = map[string]uint64{} // payload -> index
				refused int
				tokens  atomic.Int64
				stop    = make(chan struct{})
				wg      sync.WaitGroup
			)
			for w := range writers {
				wg.Go(func() {
					for i, held := 0, false; ; {
						select {
						case <-stop:
							return
						default:
						}
						if !held {
							if tokens.Add(-1) < 0 {
								tokens.Add(1)
								time.Sleep(time.Millisecond)
								continue
							}
							held = true
						}
						p := noSpacePayload(w, i)
						room := l.Room()
						idx, err := l.Append(context.Background(), p)
						switch {
						case err == nil:
							mu.Lock()
							acked[string(p)] = idx
							mu.Unlock()
							i++ // the next one; a refused one is sent again, as a device would
							held = false
						case errors.Is(err, wal.ErrNoSpace):
							mu.Lock()
							refused++
							mu.Unlock()
							// Room wakes it once the log takes appends
							// again (NoSpaceRetry), to try again.
							select {
							case <-room:
							case <-stop:
								return
							}
						default:
							t.Errorf("append: %v", err)
							return
						}
					}
				})
			}
			count := func() (int, int) {
				mu.Lock()
				defer mu.Unlock()
				return len(acked), refused
			}
			tokens.Store(300)
			wal.WaitFor(t, "appends", func() bool { n, _ := count(); return n == 300 })
			filler := tmpfs.Fill(t, filepath.Dir(dir))
			// Full: the appenders go on until refused (the log's segments
			// may have room the disk no longer has), then take no new
			// payload.
			tokens.Store(1 << 40)
			wal.WaitFor(t, "appends refused for lack of room", func() bool { _, r := count(); return r > 50 })
			tokens.Store(0)
			if err := l.Err(); err != nil {
				t.Fatalf("log failed on a full disk: %v", err)
			}
			if got := metricValue(t, reg, "ingest_wal_no_space", "test"); got != 1 {
				t.Fatalf("ingest_wal_no_space %v while appends are refused", got)
			}
			if got := metricValue(t, reg, "ingest_wal_no_space_total", "test"); got == 0 {
				t.Fatal("no failed write counted")
			}
			// A spare that the full disk cut short does not keep the room it took.
			if prealloc {
				wal.WaitFor(t, "no half-written spare", func() bool {
					_, err := os.Stat(filepath.Join(dir, "segment.spare.tmp"))
					return os.IsNotExist(err)
				})
			}
			n0, _ := count()
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			tokens.Add(500)
			wal.WaitFor(t, "appends taken again", func() bool { n, _ := count(); return n >= n0+500 })
			close(stop)
			wg.Wait()
			wal.WaitFor(t, "the no-space gauge cleared", func() bool {
				return metricValue(t, reg, "ingest_wal_no_space", "test") == 0
			})
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			reg2 := prometheus.NewRegistry()
			l2 := openLog(t, dir, opts, reg2)
			if got := metricValue(t, reg2, "ingest_wal_repairs_total", "test"); got != 0 {
				t.Fatalf("%v repairs after a clean close", got)
			}
			es := readAll(t, l2, 0)
			n, r := count()
			t.Logf("%d appends acknowledged, %d refused for lack of room; %d entries in the log", n, r, len(es))
			if len(es) != n {
				t.Fatalf("%d entries in the log, %d acknowledged", len(es), n)
			}
			next := map[int]int{}
			for i, e := range es {
				idx, ok := acked[string(e.Data)]
				if !ok || idx != e.Index || e.Index != uint64(i+1) {
					t.Fatalf("entry %d (%.10s) was not acknowledged at that index (%d, %v)", e.Index, e.Data, idx, ok)
				}
				var w, seq int
				fmt.Sscanf(string(e.Data), "w%02d-%06d", &w, &seq)
				if seq != next[w] {
					t.Fatalf("entry %d: writer %d's %d, want its %d", e.Index, w, seq, next[w])
				}
				next[w]++
			}
		})
	}
}

// TestReleaseMarkNoSpace: a release mark that cannot be written for lack of
// room fails nothing. Appends go on into the room the segments already
// have, the old mark stays, and the mark is written by itself once there is
// room again.
func TestReleaseMarkNoSpace(t *testing.T) {
	dir := filepath.Join(tmpfs.Mount(t, 1<<20), "wal")
	opts := wal.Options{Hop: "test", SegmentBytes: 64 << 10, NoSpaceRetry: 20 * time.Millisecond}
	reg := prometheus.NewRegistry()
	l := openLog(t, dir, opts, reg)
	ctx := context.Background()
	for i := range 10 {
		if _, err := l.Append(ctx, noSpacePayload(0, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Release(5); err != nil {
		t.Fatal(err)
	}
	waitSpareSized(t, dir, int64(opts.SegmentBytes+opts.SegmentBytes/16))
	filler := tmpfs.Fill(t, filepath.Dir(dir))
	if err := l.Release(10); err != nil {
		t.Fatal(err)
	}
	wal.WaitFor(t, "the mark refused for lack of room", func() bool {
		return metricValue(t, reg, "ingest_wal_no_space", "test") == 1
	})
	// The preallocated tail still has room: appends are acknowledged.
	for i := 10; i < 40; i++ {
		if _, err := l.Append(ctx, noSpacePayload(0, i)); err != nil {
			t.Fatalf("append %d with the mark unwritten: %v", i, err)
		}
	}
	if err := l.Err(); err != nil {
		t.Fatalf("log failed: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	wal.WaitFor(t, "the mark written again", func() bool {
		return metricValue(t, reg, "ingest_wal_no_space", "test") == 0
	})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2 := openLog(t, dir, opts, nil)
	if l2.Released() != 10 || l2.LastIndex() != 40 {
		t.Fatalf("released %d, last %d after reopening; want 10, 40", l2.Released(), l2.LastIndex())
	}
}

// waitSpareSized waits until a spare segment of size bytes is ready in dir.
func waitSpareSized(t *testing.T, dir string, size int64) {
	t.Helper()
	wal.WaitFor(t, "a spare segment", func() bool {
		fi, err := os.Stat(filepath.Join(dir, "segment.spare"))
		return err == nil && fi.Size() == size
	})
}

// TestSelfFilledDiskRecovers: the log fills its file system itself (its
// bound is above the volume's size, as when the next hop is down for
// long); then everything is released. The release mark, which needs a
// block, is written in the room the reserve kept, the released segments
// are removed, and appends are taken again, with no file removed by hand.
// Before, the mark could not be written, so nothing was ever removed: the
// log refused appends for good, across restarts.
func TestSelfFilledDiskRecovers(t *testing.T) {
	dir := filepath.Join(tmpfs.Mount(t, 1<<20), "wal")
	opts := wal.Options{Hop: "test", SegmentBytes: 16 << 10, NoSpaceRetry: 20 * time.Millisecond, MarkInterval: 10 * time.Millisecond}
	reg := prometheus.NewRegistry()
	l := openLog(t, dir, opts, reg)
	if _, err := os.Stat(filepath.Join(dir, "reserve")); err != nil {
		t.Fatalf("no reserve kept: %v", err)
	}
	ctx := context.Background()
	t.Logf("%d entries appended before the disk was full", fillBySelf(t, l))
	if err := l.Release(l.LastIndex()); err != nil {
		t.Fatal(err)
	}
	wal.WaitFor(t, "the released segments removed", func() bool { return l.FirstIndex() > 1 })
	wal.WaitFor(t, "appends taken again", func() bool {
		_, err := l.Append(ctx, noSpacePayload(1, 0))
		return err == nil
	})
	if got := metricValue(t, reg, "ingest_wal_reserve_spent_total", "test"); got != 1 {
		t.Fatalf("ingest_wal_reserve_spent_total %v, want 1", got)
	}
	wal.WaitFor(t, "a new reserve once the truncation made room", func() bool {
		fi, err := os.Stat(filepath.Join(dir, "reserve"))
		return err == nil && fi.Size() == 256<<10
	})
	wal.WaitFor(t, "the no-space gauge cleared", func() bool {
		return metricValue(t, reg, "ingest_wal_no_space", "test") == 0
	})
}

// TestReserveHeldForTheMark: the room the reserve kept is the release
// mark's. Once spent, appends are refused without writing until the
// truncation it leads to, though the no-space pause has long passed;
// otherwise appends would take it, the mark would find no room again, and
// the log would be stuck as before with no reserve left. Here the reserve
// is spent as the middletier spends it (SpendReserve before its release).
func TestReserveHeldForTheMark(t *testing.T) {
	dir := filepath.Join(tmpfs.Mount(t, 1<<20), "wal")
	opts := wal.Options{Hop: "test", SegmentBytes: 16 << 10, NoSpaceRetry: 5 * time.Millisecond, MarkInterval: 10 * time.Millisecond}
	l := openLog(t, dir, opts, nil)
	ctx := context.Background()
	fillBySelf(t, l)
	last := l.LastIndex()
	if l.SpendReserve(last, t.TempDir()) {
		t.Fatal("the reserve was spent for a directory on another file system")
	}
	if !l.SpendReserve(last, dir) {
		t.Fatal("the reserve was not spent for a release that frees segments")
	}
	for i := range 100 { // 100 × 200 bytes and more: room the reserve kept
		time.Sleep(2 * time.Millisecond) // past the no-space pause
		if _, err := l.Append(ctx, noSpacePayload(1, i)); !errors.Is(err, wal.ErrNoSpace) {
			t.Fatalf("append %d while the reserve's room waits for the mark: %v, want ErrNoSpace", i, err)
		}
	}
	if err := l.Release(last); err != nil {
		t.Fatal(err)
	}
	wal.WaitFor(t, "the released segments removed", func() bool { return l.FirstIndex() > 1 })
	wal.WaitFor(t, "appends taken again", func() bool {
		_, err := l.Append(ctx, noSpacePayload(2, 0))
		return err == nil
	})
}

// fillBySelf appends to l until its file system is full (50 appends
// refused with ErrNoSpace), and returns how many it took.
func fillBySelf(t *testing.T, l *wal.Log) int {
	t.Helper()
	n := 0
	for refused := 0; refused < 50; {
		_, err := l.Append(context.Background(), noSpacePayload(0, n))
		switch {
		case err == nil:
			n++
		case errors.Is(err, wal.ErrNoSpace):
			refused++
			time.Sleep(5 * time.Millisecond)
		default:
			t.Fatal(err)
		}
	}
	return n
}
