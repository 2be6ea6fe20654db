package wal_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/wal"
)

// The corruption tests build a log of 120 entries of 100 bytes. Each is stored
// as a 1-byte length, an 8-byte frame header and the payload: 109 bytes. A
// 4096-byte segment is closed after the entry that takes it to 4096 bytes or
// more, so segments hold 38 entries and start at 1, 39, 77 and 115.
const (
	corruptEntries = 120
	storedEntry    = 109
	perSegment     = 38
)

// The damage below is placed by the layout of segments that grow as they
// are written; TestPreallocatedDamage has the same for preallocated ones.
var corruptOpts = wal.Options{Hop: "test", SegmentBytes: 4096, NoPreallocate: true}

func corruptPayload(i int) []byte {
	return bytes.Repeat([]byte{byte(i)}, 100)
}

func buildLog(t *testing.T) (dir string, segs []string) {
	t.Helper()
	dir = t.TempDir()
	l, err := wal.Open(dir, corruptOpts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= corruptEntries; i++ {
		if _, err := l.Append(context.Background(), corruptPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs = segmentPaths(t, dir)
	if len(segs) != 4 {
		t.Fatalf("%d segments, want 4", len(segs))
	}
	return dir, segs
}

func mutate(t *testing.T, path string, f func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, f(b), 0o640); err != nil {
		t.Fatal(err)
	}
}

func flip(off int) func([]byte) []byte {
	return func(b []byte) []byte { b[off] ^= 0x40; return b }
}

// damageCase is one row of a table of damage done to a closed log.
type damageCase struct {
	name   string
	damage func(t *testing.T, dir string, segs []string)
	repair bool // open with Options.RepairTruncated
	want   damageWant
}

// damageWant is what opening a damaged log must give.
type damageWant struct {
	last     uint64 // the last index after a successful open
	repairs  float64
	dropped  float64 // ingest_wal_dropped_entries_total
	newID    bool    // the repair gave the log a new identity
	released uint64
	// for a refused open
	segment string
	offset  int64
	index   uint64
}

// openDamaged opens the damaged log in dir and checks the outcome against
// w: a *CorruptionError at w's segment, offset and index (it returns nil),
// or an open log with w's last index, release mark and repairs.
func openDamaged(t *testing.T, dir string, opts wal.Options, w damageWant) *wal.Log {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := wal.Open(dir, opts, reg, nil)
	if w.segment != "" {
		var ce *wal.CorruptionError
		if !errors.As(err, &ce) {
			if l != nil {
				l.Close()
			}
			t.Fatalf("open: %v, want a *CorruptionError", err)
		}
		if ce.Segment != w.segment || ce.Offset != w.offset || ce.Index != w.index {
			t.Fatalf("corruption at segment %s offset %d index %d, want %s %d %d (%v)",
				ce.Segment, ce.Offset, ce.Index, w.segment, w.offset, w.index, err)
		}
		return nil
	}
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	if got := metricValue(t, reg, "ingest_wal_repairs_total", "test"); got != w.repairs {
		t.Errorf("repairs %v, want %v", got, w.repairs)
	}
	if got := metricValue(t, reg, "ingest_wal_dropped_entries_total", "test"); got != w.dropped {
		t.Errorf("dropped entries %v, want %v", got, w.dropped)
	}
	if l.LastIndex() != w.last || l.Released() != w.released {
		t.Fatalf("last %d released %d, want %d %d", l.LastIndex(), l.Released(), w.last, w.released)
	}
	return l
}

func TestCorruption(t *testing.T) {
	type want = damageWant
	tests := []damageCase{
		{
			name: "torn last entry",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:len(b)-40] })
			},
			want: want{last: corruptEntries - 1, repairs: 1, dropped: 1},
		},
		{
			name: "torn length of last entry",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:len(b)-storedEntry+1] })
			},
			want: want{last: corruptEntries - 1, repairs: 1, dropped: 1},
		},
		{
			// Free space, as in a preallocated segment: nothing to repair,
			// and the appends below overwrite the zeros.
			name: "zeros appended to the last segment",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return append(b, make([]byte, 4096)...) })
			},
			want: want{last: corruptEntries},
		},
		{
			// What a power loss can leave after the last acknowledged
			// entry: a later page of an unacknowledged write, zeros
			// before it.
			name: "bytes after zeros appended to the last segment",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return append(append(b, make([]byte, 4096)...), 1) })
			},
			want: want{last: corruptEntries, repairs: 1, dropped: 1},
		},
		{
			name: "flipped byte in the last entry",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { b[len(b)-5] ^= 1; return b })
			},
			want: want{last: corruptEntries - 1, repairs: 1, dropped: 1},
		},
		{
			// Zeros after a segment's last entry are its free space: a
			// preallocated segment looks just so.
			name: "zeros appended to an earlier segment",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[1], func(b []byte) []byte { return append(b, make([]byte, 4096)...) })
			},
			want: want{last: corruptEntries},
		},
		{
			name: "bytes after zeros appended to an earlier segment",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[1], func(b []byte) []byte { return append(append(b, make([]byte, 4096)...), 1) })
			},
			want: want{segment: "00000000000000000039", offset: perSegment * storedEntry, index: 77},
		},
		{
			name: "flipped byte mid-log in the last segment",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], flip(2*storedEntry+50)) // entry 117
			},
			want: want{segment: "00000000000000000115", offset: 2 * storedEntry, index: 117},
		},
		{
			name: "flipped length byte mid-log",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], flip(1*storedEntry+2)) // frame length of entry 116
			},
			want: want{segment: "00000000000000000115", offset: storedEntry, index: 116},
		},
		{
			name: "flipped byte in an earlier segment",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[0], flip(10*storedEntry+20)) // entry 11
			},
			want: want{segment: "00000000000000000001", offset: 10 * storedEntry, index: 11},
		},
		{
			name: "missing segment",
			damage: func(t *testing.T, dir string, segs []string) {
				if err := os.Remove(segs[2]); err != nil {
					t.Fatal(err)
				}
			},
			want: want{segment: "00000000000000000077", offset: -1, index: 77},
		},
		{
			name: "missing first segment",
			damage: func(t *testing.T, dir string, segs []string) {
				if err := os.Remove(segs[0]); err != nil {
					t.Fatal(err)
				}
			},
			want: want{segment: "00000000000000000001", offset: -1, index: 1},
		},
		{
			name: "damaged release file",
			damage: func(t *testing.T, dir string, segs []string) {
				writeReleaseMark(t, dir, 50)
				mutate(t, filepath.Join(dir, "released"), flip(6))
			},
			want: want{last: corruptEntries, repairs: 1, released: 0},
		},
		{
			name: "short release file",
			damage: func(t *testing.T, dir string, segs []string) {
				writeReleaseMark(t, dir, 50)
				mutate(t, filepath.Join(dir, "released"), func(b []byte) []byte { return b[:3] })
			},
			want: want{last: corruptEntries, repairs: 1, released: 0},
		},
		{
			name: "release mark beyond the last entry",
			damage: func(t *testing.T, dir string, segs []string) {
				writeReleaseMark(t, dir, 50)
				// Leave only the first segment: the mark says more was written.
				for _, s := range segs[1:] {
					os.Remove(s)
				}
				mutate(t, segs[0], func(b []byte) []byte { return b[:20*storedEntry] })
			},
			want: want{segment: "00000000000000000001", offset: -1, index: 21},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, segs := buildLog(t)
			tt.damage(t, dir, segs)
			l := openDamaged(t, dir, corruptOpts, tt.want)
			if l == nil {
				return
			}
			es := readAll(t, l, 0)
			for i, e := range es {
				if e.Index != uint64(i+1) || !bytes.Equal(e.Data, corruptPayload(i+1)) {
					t.Fatalf("entry %d damaged after repair", e.Index)
				}
			}
			// The repaired log takes appends at the next index, and reopens
			// with nothing more to repair.
			idx, err := l.Append(context.Background(), []byte("next"))
			if err != nil || idx != tt.want.last+1 {
				t.Fatalf("append after repair: %d %v", idx, err)
			}
			l.Close()
			reg2 := prometheus.NewRegistry()
			l2, err := wal.Open(dir, corruptOpts, reg2, nil)
			if err != nil {
				t.Fatalf("reopen after repair: %v", err)
			}
			defer l2.Close()
			if got := metricValue(t, reg2, "ingest_wal_repairs_total", "test"); got != 0 {
				t.Fatalf("second open repaired %v times", got)
			}
			if l2.LastIndex() != tt.want.last+1 {
				t.Fatalf("last %d after reopen", l2.LastIndex())
			}
		})
	}
}

// writeReleaseMark leaves a durable release mark at upTo in the closed log
// in dir. It writes the mark alone: through a log, Release truncates
// released segments in the background, and a Close can find that done or
// not, so the segments the damage is placed by could be gone.
func writeReleaseMark(t *testing.T, dir string, upTo uint64) {
	t.Helper()
	if err := wal.WriteRelease(dir, upTo); err != nil {
		t.Fatal(err)
	}
}

// Damage that appears after the log was opened is found when the entry is
// read, and is an error, never data.
func TestCorruptionFoundOnRead(t *testing.T) {
	dir, segs := buildLog(t)
	l := openLog(t, dir, corruptOpts, nil)
	mutate(t, segs[0], flip(3*storedEntry+30)) // entry 4, in a segment not yet cached
	c, err := l.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	var ce *wal.CorruptionError
	for i := 1; i <= 4; i++ {
		e, err := c.Next(context.Background())
		if i < 4 {
			if err != nil || e.Index != uint64(i) {
				t.Fatalf("entry %d: %v", i, err)
			}
			continue
		}
		if !errors.As(err, &ce) || ce.Index != 4 || ce.Segment != "00000000000000000001" {
			t.Fatalf("reading damaged entry 4: %v", err)
		}
	}
}

// A truncation that died half-way is finished when the log is opened.
func TestInterruptedTruncation(t *testing.T) {
	dir, segs := buildLog(t)
	writeReleaseMark(t, dir, 60)
	// What tidwall/wal leaves when it dies after writing the START file
	// (the rest of segment 39 from entry 61) and removing one old segment.
	b, err := os.ReadFile(segs[1])
	if err != nil {
		t.Fatal(err)
	}
	start := filepath.Join(dir, "00000000000000000061.START")
	if err := os.WriteFile(start, b[(61-39)*storedEntry:], 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "00000000000000000099.START.TEMP"), []byte("partial"), 0o640); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, dir, corruptOpts, nil)
	if l.FirstIndex() != 61 || l.LastIndex() != corruptEntries {
		t.Fatalf("first %d last %d", l.FirstIndex(), l.LastIndex())
	}
	es := readAll(t, l, 0)
	if len(es) != corruptEntries-60 || !bytes.Equal(es[0].Data, corruptPayload(61)) {
		t.Fatalf("read %d entries", len(es))
	}
	if got := segmentFiles(t, dir); got[0] != 61 || len(got) != 3 {
		t.Fatalf("segments after recovery: %v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "00000000000000000099.START.TEMP")); !os.IsNotExist(err) {
		t.Fatalf("leftover temporary file kept: %v", err)
	}
}

// TestTruncatedSegment: a last segment shorter than it was created is
// refused, or repaired on request and counted, whatever the options it is
// opened with; the size mark says what segments were created with, and
// follows the options.
func TestTruncatedSegment(t *testing.T) {
	tailEnd := (corruptEntries - 3*perSegment) * storedEntry
	noPre := preallocOpts
	noPre.NoPreallocate = true
	repairNoPre := noPre
	repairNoPre.RepairTruncated = true
	half := func(t *testing.T, seg string) {
		mutate(t, seg, func(b []byte) []byte { return b[:tailEnd/2+50] })
	}
	tests := []struct {
		name  string
		build func(t *testing.T) (string, []string)
		// before is done to the log, then it is truncated, then opened
		// with open and checked against want.
		before func(t *testing.T, dir string)
		open   wal.Options
		want   damageWant
	}{
		{
			name:  "preallocated, opened without preallocation",
			build: buildPreallocated,
			open:  noPre,
			want:  damageWant{segment: "00000000000000000115", offset: 3 * storedEntry, index: 118},
		},
		{
			name:  "preallocated, repaired without preallocation",
			build: buildPreallocated,
			open:  repairNoPre,
			want:  damageWant{last: 117, repairs: 1, dropped: 1},
		},
		{
			// A log whose segments grew is given the mark when it is
			// opened with preallocation, its last segment extended to
			// the full size first: from then on it is checked.
			name:  "grown segments, opened with preallocation once",
			build: buildLog,
			before: func(t *testing.T, dir string) {
				l := openLog(t, dir, preallocOpts, nil)
				l.Close()
			},
			open: preallocOpts,
			want: damageWant{segment: "00000000000000000115", offset: 3 * storedEntry, index: 118},
		},
		{
			// Opened without preallocation, a log loses its mark: its
			// segments may grow from then on, and are not checked.
			name:  "preallocated, opened without preallocation once",
			build: buildPreallocated,
			before: func(t *testing.T, dir string) {
				l := openLog(t, dir, noPre, nil)
				l.Close()
			},
			open: preallocOpts,
			want: damageWant{last: 117, repairs: 1, dropped: 1},
		},
		{
			// A damaged mark checks nothing this once.
			name:  "damaged size mark",
			build: buildPreallocated,
			before: func(t *testing.T, dir string) {
				mutate(t, filepath.Join(dir, "segment-size"), flip(5))
			},
			open: preallocOpts,
			want: damageWant{last: 117, repairs: 1, dropped: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, segs := tt.build(t)
			if tt.before != nil {
				tt.before(t, dir)
			}
			half(t, segs[3])
			l := openDamaged(t, dir, tt.open, tt.want)
			if l == nil {
				return
			}
			es := readAll(t, l, 0)
			if len(es) != int(tt.want.last) {
				t.Fatalf("read %d entries, want %d", len(es), tt.want.last)
			}
			for i, e := range es {
				if e.Index != uint64(i+1) || !bytes.Equal(e.Data, corruptPayload(i+1)) {
					t.Fatalf("entry %d damaged", e.Index)
				}
			}
		})
	}
}
