package wal

// Tests of the ingest engine's patch (README.ingest.md): the tail segment's
// buffers are sized once per segment, and nothing else changes.

import (
	"bytes"
	"fmt"
	"runtime"
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
