package wal

// Tests of the ingest engine's patch (README.ingest.md): the tail segment's
// buffers are sized once per segment, and nothing else changes.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
)

// TestIngestPatchAllocation writes 32 segments' worth of 300-byte entries
// and checks the bytes allocated per byte written. Upstream's growth by
// append allocates about five; one buffer per segment, one.
func TestIngestPatchAllocation(t *testing.T) {
	const segment = 1 << 20
	l, err := Open(t.TempDir(), &Options{NoSync: true, SegmentSize: segment, LogFormat: Binary,
		SegmentCacheSize: 2, NoCopy: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := bytes.Repeat([]byte("x"), 300)
	var b Batch
	index := uint64(1)
	write := func(n int) {
		for i := 0; i < n; i += 16 {
			b.Clear()
			for j := 0; j < 16; j++ {
				b.Write(index, data)
				index++
			}
			if err := l.WriteBatch(&b); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(1024) // the batch's own buffers reach their size
	perSegment := segment / (len(data) + 2)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	write(32 * perSegment)
	runtime.ReadMemStats(&after)
	written := float64(32 * perSegment * (len(data) + 2))
	ratio := float64(after.TotalAlloc-before.TotalAlloc) / written
	t.Logf("%.2f bytes allocated per byte written", ratio)
	if ratio > 1.5 {
		t.Errorf("%.2f bytes allocated per byte written, want at most 1.5 (one buffer per segment)", ratio)
	}
}

// TestIngestPatchEntries writes entries of sizes from 1 byte to twice the
// segment size across many segments, reopens the log, and reads every one
// back.
func TestIngestPatchEntries(t *testing.T) {
	const segment = 4096
	dir := t.TempDir()
	opts := &Options{NoSync: true, SegmentSize: segment, LogFormat: Binary, SegmentCacheSize: 2}
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{1, 7, 300, segment/16 - 3, segment / 2, segment - 1, segment, segment + 1, 2 * segment}
	entry := func(i uint64) []byte {
		n := sizes[int(i)%len(sizes)]
		return bytes.Repeat([]byte{byte(i)}, n)
	}
	const n = 400
	var b Batch
	for i := uint64(1); i <= n; {
		b.Clear()
		for j := 0; j < int(i%5)+1 && i <= n; j++ {
			b.Write(i, entry(i))
			i++
		}
		if err := l.WriteBatch(&b); err != nil {
			t.Fatal(err)
		}
	}
	check := func(l *Log, when string) {
		for i := uint64(1); i <= n; i++ {
			got, err := l.Read(i)
			if err != nil {
				t.Fatalf("%s: read %d: %v", when, i, err)
			}
			if !bytes.Equal(got, entry(i)) {
				t.Fatalf("%s: entry %d: %d bytes, want %d", when, i, len(got), len(entry(i)))
			}
		}
	}
	check(l, "before reopening")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	check(l, "after reopening")
	// Appends after a reopen go to the loaded tail segment's buffer.
	for i := uint64(n + 1); i <= n+50; i++ {
		if err := l.Write(i, entry(i)); err != nil {
			t.Fatal(fmt.Errorf("write %d after reopening: %w", i, err))
		}
	}
	for i := uint64(n + 1); i <= n+50; i++ {
		if got, err := l.Read(i); err != nil || !bytes.Equal(got, entry(i)) {
			t.Fatalf("entry %d after reopening: %d bytes, %v", i, len(got), err)
		}
	}
}

// TestIngestPatchPreallocated: with CreateSegment making files of zeros
// longer than a segment, entries are written in place, read back after
// reopening, and appended after reopening where the last one ends; empty
// entries are refused; truncating at a segment's first index removes the
// segments before it and leaves the rest untouched.
func TestIngestPatchPreallocated(t *testing.T) {
	const segment = 4096
	dir := t.TempDir()
	var created []string
	opts := &Options{SegmentSize: segment, LogFormat: Binary, SegmentCacheSize: 2,
		CreateSegment: func(path string) (*os.File, error) {
			created = append(created, path)
			if err := os.WriteFile(path, make([]byte, 2*segment), 0o640); err != nil {
				return nil, err
			}
			return os.OpenFile(path, os.O_WRONLY, 0)
		},
		SyncFile: func(f *os.File) error { return f.Sync() },
	}
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	entry := func(i uint64) []byte { return bytes.Repeat([]byte{byte(i) | 1}, 100+int(i%7)) }
	const n = 200
	for i := uint64(1); i <= n; i++ {
		if err := l.Write(i, entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Write(n+1, nil); err != ErrEmptyEntry {
		t.Fatalf("empty entry: %v, want ErrEmptyEntry", err)
	}
	if len(created) < 4 {
		t.Fatalf("%d segments created, want at least 4", len(created))
	}
	for _, p := range created {
		if fi, err := os.Stat(p); err != nil || fi.Size() != 2*segment {
			t.Fatalf("%s: %v, %d bytes, want %d: written in place", filepath.Base(p), err, fi.Size(), 2*segment)
		}
	}
	l.Close()

	l, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if last, _ := l.LastIndex(); last != n {
		t.Fatalf("last index %d after reopening, want %d", last, n)
	}
	if err := l.Write(n+1, entry(n+1)); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= n+1; i++ {
		if got, err := l.Read(i); err != nil || !bytes.Equal(got, entry(i)) {
			t.Fatalf("entry %d: %d bytes, %v", i, len(got), err)
		}
	}
	tail := created[len(created)-1]
	before, err := os.Stat(tail)
	if err != nil || before.Size() != 2*segment {
		t.Fatalf("tail after appending past a reopen: %v, %d bytes", err, before.Size())
	}

	// Truncate at the start of the third segment: the two before it go, and
	// no file is rewritten.
	segs, _ := filepath.Glob(filepath.Join(dir, "0*"))
	third, err := strconv.ParseUint(filepath.Base(segs[2]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	third2 := filepath.Join(dir, segmentName(third))
	thirdBefore, err := os.Stat(third2)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.TruncateFront(third); err != nil {
		t.Fatal(err)
	}
	if first, _ := l.FirstIndex(); first != third {
		t.Fatalf("first index %d, want %d", first, third)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "0*"))
	if len(names) != len(created)-2 || names[0] != third2 {
		t.Fatalf("segments after truncating at %d: %v", third, names)
	}
	if fi, err := os.Stat(third2); err != nil || !os.SameFile(fi, thirdBefore) || fi.Size() != 2*segment {
		t.Fatalf("segment %d was rewritten by the truncation", third)
	}
	if fi, err := os.Stat(tail); err != nil || !os.SameFile(fi, before) {
		t.Fatalf("the tail was rewritten by the truncation")
	}
	for i := third; i <= n+1; i++ {
		if got, err := l.Read(i); err != nil || !bytes.Equal(got, entry(i)) {
			t.Fatalf("entry %d after truncating: %d bytes, %v", i, len(got), err)
		}
	}
	if err := l.Write(n+2, entry(n+2)); err != nil {
		t.Fatal(err)
	}
}

// TestIngestPatchReuse writes 32 segments of 300-byte entries with
// ReuseBuffers, calling ReuseEvicted after each write as the engine does
// after a write that starts a segment, and checks the bytes allocated per
// byte written: a segment that takes the buffers of one evicted from the
// cache allocates none of its own. Reads see the entries written all
// along: the last one, from the tail's buffer, and one a segment back, from
// the cache, after each write; old ones,
// which load their segments into the cache and evict others, every 64
// writes; and every one at the end.
func TestIngestPatchReuse(t *testing.T) {
	const segment = 1 << 20
	for _, reuse := range []bool{true, false} {
		l, err := Open(t.TempDir(), &Options{NoSync: true, SegmentSize: segment, LogFormat: Binary,
			SegmentCacheSize: 2, NoCopy: true, ReuseBuffers: true})
		if err != nil {
			t.Fatal(err)
		}
		// entry returns entry i's 300 bytes in a buffer of its own (want,
		// for reads) or shared (put, for writes, which copy it).
		var want, put [300]byte
		entry := func(buf *[300]byte, i uint64) []byte {
			for j := 0; j < 294; j++ {
				buf[j] = byte('a' + i%26)
			}
			strconv.AppendUint(buf[294:294], i%1e6+1e5, 10)
			return buf[:]
		}
		var b Batch
		index := uint64(1)
		perSegment := segment / (300 + 2)
		write := func(n int, old bool) {
			for i := 0; i < n; i += 16 {
				b.Clear()
				for j := 0; j < 16; j++ {
					b.Write(index, entry(&put, index))
					index++
				}
				if err := l.WriteBatch(&b); err != nil {
					t.Fatal(err)
				}
				if reuse {
					l.ReuseEvicted()
				}
				at := []uint64{index - 1}
				if index > uint64(perSegment) {
					at = append(at, index-uint64(perSegment)) // the segment before, in the cache
				}
				if old && i%(64*16) == 0 {
					at = append(at, index/2, index/3)
				}
				for _, at := range at {
					got, err := l.Read(at)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, entry(&want, at)) {
						t.Fatalf("reuse %v: entry %d reads %.20q..., want %.20q...", reuse, at, got, want)
					}
				}
			}
		}
		write(4*perSegment, true) // segments to evict
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		write(32*perSegment, false)
		runtime.ReadMemStats(&after)
		write(4*perSegment, true)
		written := float64(32 * perSegment * (300 + 2))
		ratio := float64(after.TotalAlloc-before.TotalAlloc) / written
		t.Logf("reuse %v: %.2f bytes allocated per byte written", reuse, ratio)
		if reuse && ratio > 0.05 {
			t.Errorf("with ReuseEvicted: %.2f bytes allocated per byte written, want at most 0.05", ratio)
		}
		if !reuse && ratio < 1 {
			t.Errorf("without ReuseEvicted: %.2f bytes allocated per byte written, want a segment's buffers for each segment", ratio)
		}
		for i := uint64(1); i < index; i++ {
			got, err := l.Read(i)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, entry(&want, i)) {
				t.Fatalf("reuse %v: entry %d reads %.20q..., want %.20q...", reuse, i, got, want)
			}
		}
		l.Close()
	}
}

// TestIngestPatchReuseOverwrites shows what ReuseEvicted's caller guards
// against, and that the buffers are reused: a NoCopy slice read from a
// segment, kept while the segment leaves the cache and ReuseEvicted runs,
// reads a new segment's bytes once that segment takes the buffer. Without
// ReuseEvicted it keeps its bytes.
func TestIngestPatchReuseOverwrites(t *testing.T) {
	const segment = 64 << 10
	for _, reuse := range []bool{true, false} {
		l, err := Open(t.TempDir(), &Options{NoSync: true, SegmentSize: segment, LogFormat: Binary,
			SegmentCacheSize: 1, NoCopy: true, ReuseBuffers: true})
		if err != nil {
			t.Fatal(err)
		}
		old := bytes.Repeat([]byte("o"), 1000)
		index := uint64(1)
		write := func(data []byte, n int) {
			for i := 0; i < n; i++ {
				if err := l.Write(index, data); err != nil {
					t.Fatal(err)
				}
				index++
			}
		}
		write(old, 2*segment/1000) // two segments; the first in the cache
		kept, err := l.Read(1)
		if err != nil {
			t.Fatal(err)
		}
		write(old, segment/1000) // the first leaves the cache
		if reuse {
			l.ReuseEvicted()
		}
		write(bytes.Repeat([]byte("n"), 1000), 2*segment/1000) // a new segment takes the spare
		changed := !bytes.Equal(kept, old)
		if changed != reuse {
			t.Errorf("ReuseEvicted %v: the kept slice changed %v", reuse, changed)
		}
		l.Close()
	}
}
