package wal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func plPayload(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 300) }

func plStored(i int) []byte {
	f := appendFrame(nil, plPayload(i))
	return append(binary.AppendUvarint(nil, uint64(len(f))), f...)
}

// buildAcked makes a log whose first (preallocated) segment holds 10
// acknowledged entries and returns the segment's path and where they end.
func buildAcked(t *testing.T, opts Options) (dir, seg string, end int) {
	dir = t.TempDir()
	l, err := Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		if idx, err := l.Append(context.Background(), plPayload(i)); err != nil || idx != uint64(i) {
			t.Fatal(idx, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	seg = filepath.Join(dir, segmentName(1))
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("segment 1 size %d (preallocated %d)", fi.Size(), opts.SegmentBytes+opts.SegmentBytes/16)
	return dir, seg, 10 * len(plStored(1))
}

// powerLoss writes the bytes of one unacknowledged group commit (entries
// 11..60, ~15 KB) after the acknowledged ones, then puts back what a power
// loss that lost the 4 KiB page [lost, lost+4096) leaves: that page's old
// contents (the acked bytes, zeros after them).
func powerLoss(t *testing.T, seg string, end, lost int) {
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	var w []byte
	for i := 11; i <= 60; i++ {
		w = append(w, plStored(i)...)
	}
	if end+len(w) > len(b) {
		t.Fatalf("segment too small: %d", len(b))
	}
	copy(b[end:], w)
	from := max(lost, end) // bytes before end are acked and were already durable
	clear(b[from : lost+4096])
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

// A power loss during the fdatasync of an unacknowledged group commit keeps
// an arbitrary subset of its pages. Open must come back with entries 1..10.
func TestPowerLossLostPage(t *testing.T) {
	opts := Options{Hop: "test", SegmentBytes: 1 << 20}
	for _, tc := range []struct {
		name string
		page int // which page (of 4096) the power loss kept from the disk
	}{
		{"page holding the acked end lost, later pages kept", 0},
		{"first page kept, second lost, later kept", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, seg, end := buildAcked(t, opts)
			powerLoss(t, seg, end, (end/4096+tc.page)*4096)
			l, err := Open(dir, opts, nil, nil)
			if err != nil {
				var ce *CorruptionError
				t.Fatalf("open after a power loss refused (corruption error: %v): %v", errors.As(err, &ce), err)
			}
			defer l.Close()
			// Entries 1-10 were acknowledged; those of the lost commit that
			// lie wholly in pages the disk kept before the lost one may stay.
			if l.LastIndex() < 10 {
				t.Fatalf("last %d after the power loss, want at least 10", l.LastIndex())
			}
			c, err := l.Cursor(1)
			if err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= int(l.LastIndex()); i++ {
				e, err := c.Next(context.Background())
				if err != nil || !bytes.Equal(e.Data, plPayload(i)) {
					t.Fatalf("entry %d after the power loss: %v", i, err)
				}
			}
		})
	}
}

// A spare file removed behind the log's back while it is ready: the next
// segment is created empty and the log goes on.
func TestSpareFileRemoved(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Hop: "test", SegmentBytes: 4096}
	l := openInternal(t, dir, opts)
	waitFor(t, "a spare segment", func() bool { return spareReady(l) })
	if err := os.Remove(filepath.Join(dir, spareName)); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 60; i++ {
		if _, err := l.Append(context.Background(), plPayload(i)); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	if n := len(l.SegmentStarts()); n < 3 {
		t.Fatalf("%d segments, want the log to have moved on twice", n)
	}
	waitFor(t, "a new spare segment", func() bool { return spareReady(l) })
}

// spareReady reports whether l has a spare segment ready.
func spareReady(l *Log) bool {
	l.spare.mu.Lock()
	defer l.spare.mu.Unlock()
	return l.spare.ready
}

// Releasing every entry while the tail is a fresh (empty) preallocated
// segment removes the segments before it and leaves the tail as it is
// (tidwall/wal's truncate-all branch would rewrite it through a .START file
// and throw its preallocation away).
func TestReleaseAllKeepsPreallocatedTail(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Hop: "test", SegmentBytes: 4096}
	l := openInternal(t, dir, opts)
	ctx := context.Background()
	var last uint64
	for {
		// Every segment starts on a spare.
		waitFor(t, "a spare segment", func() bool { return spareReady(l) })
		idx, err := l.Append(ctx, plPayload(1))
		if err != nil {
			t.Fatal(err)
		}
		last = idx
		st := l.SegmentStarts()
		if st[len(st)-1] == last+1 {
			break
		}
	}
	st := l.SegmentStarts()
	tail := filepath.Join(dir, segmentName(st[len(st)-1]))
	fi, err := os.Stat(tail)
	if want := int64(opts.SegmentBytes + opts.SegmentBytes/16); err != nil || fi.Size() != want {
		t.Fatalf("tail %s: %v, %d bytes, want a preallocated %d", filepath.Base(tail), err, fi.Size(), want)
	}
	if err := l.Release(last); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "truncation", func() bool { return l.FirstIndex() == last+1 })
	fi2, err := os.Stat(tail)
	if err != nil {
		t.Fatal(err)
	}
	if fi2.Size() != fi.Size() || !os.SameFile(fi, fi2) {
		t.Fatalf("tail rewritten by truncation: size %d -> %d", fi.Size(), fi2.Size())
	}
}

// waitFor waits up to 10 s for cond, failing the test if it never holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
