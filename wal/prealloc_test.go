package wal_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/wal"
)

// preallocOpts: the defaults, so segments are preallocated.
var preallocOpts = wal.Options{Hop: "test", SegmentBytes: 4096}

const preallocSize = 4096 + 4096/16 // a preallocated segment file

// waitSpare waits until the next preallocated segment is ready in dir.
func waitSpare(t *testing.T, dir string) {
	t.Helper()
	waitFor(t, "a spare segment", func() bool {
		fi, err := os.Stat(filepath.Join(dir, "segment.spare"))
		return err == nil && fi.Size() == preallocSize
	})
}

// appendPrealloc appends entries from..to, each after a spare segment is
// ready, so every segment the log moves to is a preallocated one.
func appendPrealloc(t *testing.T, l *wal.Log, dir string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		waitSpare(t, dir)
		if idx, err := l.Append(context.Background(), corruptPayload(i)); err != nil || idx != uint64(i) {
			t.Fatalf("append %d: %d %v", i, idx, err)
		}
	}
}

// buildPreallocated writes the log buildLog does, in preallocated segments.
func buildPreallocated(t *testing.T) (dir string, segs []string) {
	t.Helper()
	dir = t.TempDir()
	l := openLog(t, dir, preallocOpts, nil)
	appendPrealloc(t, l, dir, 1, corruptEntries)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs = segmentPaths(t, dir)
	if len(segs) != 4 {
		t.Fatalf("%d segments, want 4", len(segs))
	}
	// Every segment, a new log's first too, is a preallocated file,
	// written in place.
	for _, s := range segs {
		if fi, err := os.Stat(s); err != nil || fi.Size() != preallocSize {
			t.Fatalf("segment %s: %v, %v bytes, want %d", filepath.Base(s), err, fi.Size(), preallocSize)
		}
	}
	return dir, segs
}

// TestPreallocatedSegments: entries are written in place into preallocated
// segment files, read back after reopening, and appended after reopening
// in the same file without growing it.
func TestPreallocatedSegments(t *testing.T) {
	dir, segs := buildPreallocated(t)
	tail := segs[len(segs)-1]

	reg := prometheus.NewRegistry()
	l := openLog(t, dir, preallocOpts, reg)
	if got := metricValue(t, reg, "ingest_wal_repairs_total", "test"); got != 0 {
		t.Fatalf("%v repairs of an intact preallocated log", got)
	}
	if l.LastIndex() != corruptEntries {
		t.Fatalf("last %d, want %d", l.LastIndex(), corruptEntries)
	}
	// Two more entries fit in the tail segment: they go into its zeros.
	appendPrealloc(t, l, dir, corruptEntries+1, corruptEntries+2)
	if fi, err := os.Stat(tail); err != nil || fi.Size() != preallocSize {
		t.Fatalf("tail segment after appending: %v, %v bytes, want %d", err, fi.Size(), preallocSize)
	}
	l.Close()

	l = openLog(t, dir, preallocOpts, nil)
	defer l.Close()
	es := readAll(t, l, 0)
	if len(es) != corruptEntries+2 {
		t.Fatalf("read %d entries, want %d", len(es), corruptEntries+2)
	}
	for i, e := range es {
		if e.Index != uint64(i+1) || !bytes.Equal(e.Data, corruptPayload(i+1)) {
			t.Fatalf("entry %d damaged", e.Index)
		}
	}
}

// TestPreallocatedDamage is TestCorruption's table for preallocated
// segments: the zeros after the last entry are free space, and damage is
// found around them as it is elsewhere.
func TestPreallocatedDamage(t *testing.T) {
	tailEnd := (corruptEntries - 3*perSegment) * storedEntry // last entry's end in the tail
	segEnd := perSegment * storedEntry                       // the same in an earlier segment
	set := func(off int, v byte) func([]byte) []byte {
		return func(b []byte) []byte { b[off] = v; return b }
	}
	zero := func(from, to int) func([]byte) []byte {
		return func(b []byte) []byte { clear(b[from:to]); return b }
	}
	type want = damageWant
	tests := []damageCase{
		{
			// A torn write into the zeros: the entry's start, and zeros.
			name: "torn last entry",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], zero(tailEnd-20, tailEnd))
			},
			want: want{last: corruptEntries - 1, repairs: 1, dropped: 1},
		},
		{
			// A later page of an unacknowledged write, after a power loss.
			name: "bytes in the last segment's free space",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], set(tailEnd+1000, 1))
			},
			want: want{last: corruptEntries, repairs: 1, dropped: 1},
		},
		{
			// A power loss kept the blocks of entry 119 from the disk and
			// not those of entry 120, both written by one unacknowledged
			// write: the gap is zeros, and both entries go.
			name: "unacknowledged entry past a gap of zeros",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], zero(tailEnd-2*storedEntry, tailEnd-storedEntry))
			},
			want: want{last: corruptEntries - 2, repairs: 1, dropped: 2},
		},
		{
			// Entries 115 and 116 acknowledged, 117 to 120 written by one
			// write whose first sector (bytes 0-511) a power loss kept from
			// the disk: it reads as 115, 116 and the zeros it held before.
			// Entry 120, in the next sector, is intact; 117 to 120 go.
			name: "unacknowledged entries past a lost sector",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], zero(2*storedEntry, 512))
			},
			// Entries wholly inside the lost sector cannot be told
			// apart: the count is the damaged one and 120.
			want: want{last: corruptEntries - 4, repairs: 1, dropped: 2},
		},
		{
			// Zeros that no lost sector explains (they end before the
			// sector does) in front of an intact entry: damage to entries
			// that may have been acknowledged.
			name: "entry past a damaged one",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], zero(tailEnd-2*storedEntry+10, tailEnd-2*storedEntry+50))
			},
			want: want{segment: "00000000000000000115", offset: int64(tailEnd - 2*storedEntry), index: 119},
		},
		{
			name: "bytes in an earlier segment's free space",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[1], set(segEnd+100, 1))
			},
			want: want{segment: "00000000000000000039", offset: int64(segEnd), index: 77},
		},
		{
			// Zeros where an earlier segment's last entry was: it reads
			// as free space, and the next segment starts past a gap.
			name: "last entry of an earlier segment zeroed",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[1], zero(segEnd-storedEntry, segEnd))
			},
			want: want{segment: "00000000000000000076", offset: -1, index: 76},
		},
		{
			// No crash leaves a segment shorter than it was created:
			// the entries it held are gone, how many cannot be known.
			name: "last segment truncated to 0 bytes",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:0] })
			},
			want: want{segment: "00000000000000000115", offset: 0, index: 115},
		},
		{
			// Half of its six entries: 115 to 117 are left.
			name: "last segment truncated to half of its entries",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:tailEnd/2] })
			},
			want: want{segment: "00000000000000000115", offset: 3 * storedEntry, index: 118},
		},
		{
			name: "last segment truncated inside an entry",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:tailEnd/2+50] })
			},
			want: want{segment: "00000000000000000115", offset: 3 * storedEntry, index: 118},
		},
		{
			// Every entry still there, but the file is short: nothing
			// says that nothing followed them.
			name: "last segment truncated after its entries",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:tailEnd] })
			},
			want: want{segment: "00000000000000000115", offset: int64(tailEnd), index: corruptEntries + 1},
		},
		{
			name: "last segment truncated to 0 bytes, repaired",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:0] })
			},
			repair: true,
			want:   want{last: 114, repairs: 1, newID: true},
		},
		{
			name: "last segment truncated to half of its entries, repaired",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:tailEnd/2] })
			},
			repair: true,
			want:   want{last: 117, repairs: 1, newID: true},
		},
		{
			// The partial entry is dropped and counted.
			name: "last segment truncated inside an entry, repaired",
			damage: func(t *testing.T, dir string, segs []string) {
				mutate(t, segs[3], func(b []byte) []byte { return b[:tailEnd/2+50] })
			},
			repair: true,
			want:   want{last: 117, repairs: 1, dropped: 1, newID: true},
		},
		{
			// The release mark passed entries the truncation took: the
			// repair moves it back to the last entry kept.
			name: "last segment truncated below the release mark, repaired",
			damage: func(t *testing.T, dir string, segs []string) {
				writeReleaseMark(t, dir, 119)
				mutate(t, segs[3], func(b []byte) []byte { return b[:tailEnd/2+50] })
			},
			repair: true,
			want:   want{last: 117, repairs: 1, dropped: 1, newID: true, released: 117},
		},
		{
			// The repair option changes nothing for a sound log.
			name:   "repair option on an intact log",
			damage: func(t *testing.T, dir string, segs []string) {},
			repair: true,
			want:   want{last: corruptEntries},
		},
		{
			// A spare left by a run that died writing it, and one with a
			// stray byte: neither is used as it is.
			name: "damaged spare segments",
			damage: func(t *testing.T, dir string, segs []string) {
				spare := make([]byte, preallocSize)
				spare[preallocSize-10] = 1 // in what would be free space
				if err := os.WriteFile(filepath.Join(dir, "segment.spare"), spare, 0o640); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "segment.spare.tmp"), spare[:100], 0o640); err != nil {
					t.Fatal(err)
				}
			},
			want: want{last: corruptEntries},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, segs := buildPreallocated(t)
			id := readID(t, dir)
			tt.damage(t, dir, segs)
			opts := preallocOpts
			opts.RepairTruncated = tt.repair
			l := openDamaged(t, dir, opts, tt.want)
			if l == nil {
				return
			}
			if newID := l.ID() != id; newID != tt.want.newID {
				t.Fatalf("new identity %v, want %v", newID, tt.want.newID)
			}
			// Enough appends to move to two new segments, each on a
			// spare: the spares written after the damage are sound.
			last := int(tt.want.last)
			appendPrealloc(t, l, dir, last+1, last+2*perSegment)
			l.Close()
			// Without the repair option: a repaired log is sound.
			reg2 := prometheus.NewRegistry()
			l2, err := wal.Open(dir, preallocOpts, reg2, nil)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer l2.Close()
			if got := metricValue(t, reg2, "ingest_wal_repairs_total", "test"); got != 0 {
				t.Fatalf("second open repaired %v times", got)
			}
			// Every entry after the release mark (0 but where a row
			// moves it).
			es := readAll(t, l2, 0)
			rel := int(tt.want.released)
			if len(es) != last+2*perSegment-rel {
				t.Fatalf("read %d entries, want %d", len(es), last+2*perSegment-rel)
			}
			for i, e := range es {
				if e.Index != uint64(rel+i+1) || !bytes.Equal(e.Data, corruptPayload(rel+i+1)) {
					t.Fatalf("entry %d damaged", e.Index)
				}
			}
		})
	}
}

// TestSegmentsMetric: ingest_wal_segments_total counts the segments a log
// starts, preallocated or grown.
func TestSegmentsMetric(t *testing.T) {
	for _, prealloc := range []bool{true, false} {
		t.Run(fmt.Sprintf("prealloc=%v", prealloc), func(t *testing.T) {
			dir := t.TempDir()
			reg := prometheus.NewRegistry()
			opts := preallocOpts
			opts.NoPreallocate = !prealloc
			l := openLog(t, dir, opts, reg)
			defer l.Close()
			if prealloc {
				appendPrealloc(t, l, dir, 1, 3*perSegment)
			} else {
				for i := 1; i <= 3*perSegment; i++ {
					if _, err := l.Append(context.Background(), corruptPayload(i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			// The first segment and three more (the last entry fills the
			// third and starts the fourth).
			segs := float64(len(segmentFiles(t, dir)))
			if segs != 4 {
				t.Fatalf("%v segments, want 4", segs)
			}
			pre, grown := segmentsMetric(t, reg, "true"), segmentsMetric(t, reg, "false")
			if prealloc && (pre != segs || grown != 0) || !prealloc && (pre != 0 || grown != segs) {
				t.Fatalf("segments: %v preallocated, %v grown; want %v of one kind", pre, grown, segs)
			}
		})
	}
}

// readID returns the identity of the closed log in dir.
func readID(t *testing.T, dir string) uint64 {
	t.Helper()
	l, err := wal.Open(dir, wal.Options{Hop: "test", SegmentBytes: 4096}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.ID()
}

func segmentsMetric(t *testing.T, reg *prometheus.Registry, preallocated string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ingest_wal_segments_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "preallocated" && lp.GetValue() == preallocated {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no ingest_wal_segments_total{preallocated=%q}", preallocated)
	return 0
}
