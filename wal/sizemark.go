package wal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ingest-io/ingest/internal/fileutil"
)

// The size mark records that every segment file of the log is created at
// its full size, and what that size is: the spare renamed into place, or a
// sparse file of that size made aside and renamed into place. With the mark
// present, a last segment shorter than the size it records cannot be what
// a crash left: Open refuses it unless Options.RepairTruncated is set.
// Without it (a log from an engine that let segments grow, or one run with
// Options.NoPreallocate) short segments are normal and nothing is checked.
//
//	[0:4]   magic "WSEG"
//	[4:12]  segment file size, little-endian uint64
//	[12:16] CRC32C of bytes [0:12]
const sizeMarkFile = "segment-size"

var (
	sizeMarkMagic      = [4]byte{'W', 'S', 'E', 'G'}
	errSizeMarkDamaged = errors.New("segment size mark damaged")
)

func encodeSizeMark(size int64) []byte { return encodeMark(sizeMarkMagic, uint64(size)) }

func decodeSizeMark(b []byte) (int64, error) {
	size, err := decodeMark(sizeMarkMagic, b, errSizeMarkDamaged)
	if err == nil && (size == 0 || size > 1<<40) {
		return 0, errSizeMarkDamaged
	}
	return int64(size), err
}

// readSizeMark returns the segment size recorded in dir; ok is false when
// there is none. A damaged mark is errSizeMarkDamaged.
func readSizeMark(dir string) (size int64, ok bool, err error) {
	return readMark(dir, sizeMarkFile, "segment size mark", decodeSizeMark)
}

// writeSizeMark makes size the durable segment size mark of dir.
func writeSizeMark(dir string, size int64) error {
	if err := fileutil.WriteFileDurable(dir, sizeMarkFile, encodeSizeMark(size)); err != nil {
		return fmt.Errorf("write segment size mark: %w", err)
	}
	return nil
}

// removeSizeMark removes the size mark, durably, before any segment that
// grows as it is written is created.
func removeSizeMark(dir string) error {
	err := os.Remove(filepath.Join(dir, sizeMarkFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = fileutil.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("remove segment size mark: %w", err)
	}
	return nil
}

// extendFile grows the file at path to size bytes (holes, which read as
// zeros) if it is shorter, and makes the new size durable.
func extendFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() < size {
		err = f.Truncate(size)
		if err == nil {
			err = datasync(f)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// zeroAfter overwrites with zeros whatever is not zero in the file at path
// from offset off on, a 4 KiB block at a time and only in blocks that hold
// something, and makes it durable. The file keeps its size; blocks it
// rewrites are already allocated (they hold data), so it needs no room on a
// full disk. It reports how many bytes from off to the last non-zero one
// there were.
func zeroAfter(path string, off int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	n, err := zeroFileAfter(f, off)
	if err == nil && n > 0 {
		err = datasync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

func zeroFileAfter(f *os.File, off int64) (extent int64, err error) {
	const block = 4096
	buf := make([]byte, 64<<10)
	start := off - off%block // reads are block-aligned
	for {
		n, rerr := f.ReadAt(buf, start)
		for b := 0; b < n; b += block {
			lo, hi := start+int64(b), start+int64(min(b+block, n))
			lo = max(lo, off)
			if lo >= hi {
				continue
			}
			chunk := buf[lo-start : hi-start]
			if isZero(chunk) {
				continue
			}
			last := len(chunk) - 1
			for chunk[last] == 0 {
				last--
			}
			extent = lo + int64(last) + 1 - off
			if _, err := f.WriteAt(zeroPage[:len(chunk)], lo); err != nil {
				return extent, err
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return extent, nil
			}
			return extent, rerr
		}
		start += int64(n)
	}
}

// markSegmentSize brings the size mark in line with opts once the scan has
// verified the log: with preallocation, the last segment is extended to the
// size new segments are created with (a log from an engine that let
// segments grow, or one whose segment size was raised) before the mark
// says so; without it, the mark goes before any segment can grow.
func markSegmentSize(dir string, opts Options, res *scanResult, marked int64, hasMark bool) error {
	if opts.NoPreallocate {
		if hasMark {
			return removeSizeMark(dir)
		}
		return nil
	}
	size := opts.segmentFileBytes()
	if n := len(res.segs); n > 0 {
		if err := extendFile(filepath.Join(dir, res.segs[n-1].name), size); err != nil {
			return fmt.Errorf("extend last segment: %w", err)
		}
	}
	if hasMark && marked == size {
		return nil
	}
	return writeSizeMark(dir, size)
}
