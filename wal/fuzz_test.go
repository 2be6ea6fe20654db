package wal

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func FuzzFrame(f *testing.F) {
	f.Add([]byte{})
	f.Add(appendFrame(nil, []byte("hello")))
	f.Add(appendFrame(nil, nil))
	f.Add(make([]byte, 12))
	f.Fuzz(func(t *testing.T, b []byte) {
		payload, err := decodeFrame(b)
		if err != nil {
			return
		}
		if re := appendFrame(nil, payload); !bytes.Equal(re, b) {
			t.Fatalf("frame decoded to %q re-encodes differently", payload)
		}
	})
}

func FuzzIdentity(f *testing.F) {
	fuzzMark(f, "identity", encodeID, decodeID, nil, encodeID(1), []byte("WLID"))
}

func FuzzRelease(f *testing.F) {
	fuzzMark(f, "release mark", encodeRelease, decodeRelease, nil,
		encodeRelease(0), encodeRelease(1<<40), []byte("WREL"))
}

func FuzzSizeMark(f *testing.F) {
	fuzzMark(f, "size mark", encodeSizeMark, decodeSizeMark, func(size int64) bool { return size > 0 },
		encodeSizeMark(4352), encodeSizeMark(1), []byte("WSEG"))
}

// reopenFuzzed closes l and opens the log in dir again, without the repair
// option: what Open accepted once it must accept again.
func reopenFuzzed(t *testing.T, l *Log, dir string) *Log {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := Open(dir, Options{SegmentBytes: 4096}, nil, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	return l
}

// fuzzMark fuzzes the decoder of one of the log's small files: whatever
// it accepts is valid (when valid is given) and re-encodes to the same
// bytes.
func fuzzMark[V any](f *testing.F, what string, encode func(V) []byte, decode func([]byte) (V, error), valid func(V) bool, seeds ...[]byte) {
	for _, b := range seeds {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decode(b)
		if err != nil {
			return
		}
		if valid != nil && !valid(v) || !bytes.Equal(encode(v), b) {
			t.Fatalf("%s %v re-encodes differently", what, v)
		}
	})
}

// FuzzOpenMarked is FuzzOpen for a log with a size mark, so that its last
// segment's size is checked, opened with or without the repair option:
// Open fails, or the log reads back verified, takes appends, and reopens
// without the repair option.
func FuzzOpenMarked(f *testing.F) {
	var good []byte
	for _, p := range []string{"one", "two", "three"} {
		fr := appendFrame(nil, []byte(p))
		good = append(append(good, byte(len(fr))), fr...)
	}
	full := append(append([]byte(nil), good...), make([]byte, 4352-len(good))...)
	f.Add(full, false)
	f.Add(full, true)
	f.Add(good, false)
	f.Add(good, true)
	f.Add(good[:len(good)-3], true)
	f.Add([]byte(nil), true)
	f.Fuzz(func(t *testing.T, seg []byte, repair bool) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), seg, 0o640); err != nil {
			t.Fatal(err)
		}
		if err := writeSizeMark(dir, 4352); err != nil {
			t.Fatal(err)
		}
		l, err := Open(dir, Options{SegmentBytes: 4096, RepairTruncated: repair}, nil, nil)
		if err != nil {
			var ce *CorruptionError
			if len(seg) < 4352 && !repair && !errors.As(err, &ce) {
				t.Fatalf("short segment refused with %v, want a *CorruptionError", err)
			}
			return
		}
		if len(seg) < 4352 && !repair {
			l.Close()
			t.Fatalf("a segment of %d bytes, created with 4352, opened without the repair option", len(seg))
		}
		entries := readEverything(t, l)
		if _, err := l.Append(context.Background(), []byte("next")); err != nil {
			t.Fatalf("append after open: %v", err)
		}
		l = reopenFuzzed(t, l, dir)
		defer l.Close()
		if again := readEverything(t, l); len(again) != len(entries)+1 {
			t.Fatalf("reopen read %d entries, want %d", len(again), len(entries)+1)
		}
	})
}

// FuzzOpen opens a log whose segments hold arbitrary bytes. Open either fails
// with an error or yields a log whose every entry reads back verified, that
// takes appends at the next index, and that reopens the same with nothing
// more to repair.
func FuzzOpen(f *testing.F) {
	var good []byte
	for _, p := range []string{"one", "two", "three"} {
		fr := appendFrame(nil, []byte(p))
		good = append(append(good, byte(len(fr))), fr...)
	}
	f.Add(good, []byte(nil))
	f.Add(good[:len(good)-3], []byte(nil))
	f.Add(append(good, make([]byte, 64)...), []byte(nil))
	f.Add(good, good)
	f.Add(make([]byte, 4096), []byte(nil))
	f.Fuzz(func(t *testing.T, seg1, seg2 []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), seg1, 0o640); err != nil {
			t.Fatal(err)
		}
		if seg2 != nil {
			n := uint64(1)
			for p := 0; p < len(seg1); {
				_, m, err := nextEntry(seg1[p:])
				if err != nil {
					break
				}
				p += m
				n++
			}
			if err := os.WriteFile(filepath.Join(dir, segmentName(n)), seg2, 0o640); err != nil {
				t.Fatal(err)
			}
		}
		l, err := Open(dir, Options{SegmentBytes: 4096}, nil, nil)
		if err != nil {
			return
		}
		entries := readEverything(t, l)
		idx, err := l.Append(context.Background(), []byte("next"))
		if err != nil || idx != l.first+uint64(len(entries)) {
			t.Fatalf("append after open: %d %v (first %d, %d entries)", idx, err, l.first, len(entries))
		}
		l = reopenFuzzed(t, l, dir)
		defer l.Close()
		again := readEverything(t, l)
		if len(again) != len(entries)+1 {
			t.Fatalf("reopen read %d entries, want %d", len(again), len(entries)+1)
		}
		for i, e := range entries {
			if !bytes.Equal(e.Data, again[i].Data) || e.Index != again[i].Index {
				t.Fatalf("entry %d changed across reopen", e.Index)
			}
		}
	})
}

func readEverything(t *testing.T, l *Log) []Entry {
	c, err := l.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	var out []Entry
	for c.next <= l.LastIndex() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err = c.NextBatch(ctx, out, 100)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("read: %v", err)
		}
	}
	return out
}
