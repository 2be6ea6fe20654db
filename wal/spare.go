package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Segment files are preallocated: each new segment is a file of zeros
// written and fsynced ahead of need, renamed into place when the log moves
// to a new segment, and then overwritten in place. Appending to a file
// changes its size, so every fsync of it must also commit the file system's
// journal; overwriting blocks that are already written changes no metadata,
// so the fdatasync that covers each group commit flushes the data alone.
// On ext4 that halved the time of the sync every acknowledgement waits for
// and cut its tail under other writers (docs/benchmarks.md, "WAL").
//
// A spare goroutine keeps one such file ready, so that the zeros are never
// written on the way to an acknowledgement. If none is ready when a segment
// starts (a burst that uses segments faster than they are prepared, or a
// disk too full to prepare one), the segment is created as a sparse file of
// the same size instead: made aside, given its size without writing it,
// fsynced and renamed into place. Its blocks are then allocated as entries
// are written, and fdatasync commits them with the data, as for a file that
// grows; but its size is the full size from the moment it has its name, so
// that a last segment shorter than that is damage, never what a crash left
// (sizemark.go). Either way the bytes after a segment's last entry are
// zeros, and a zero byte where an entry would start ends the segment
// (entries are never empty: every one has a frame header).
const (
	spareName     = "segment.spare"      // a complete file of zeros, fsynced
	spareTmpName  = "segment.spare.tmp"  // being written
	sparseTmpName = "segment.sparse.tmp" // a sparse segment file being made
	spareChunk    = 256 << 10            // written and flushed a chunk at a time
)

// zeroChunk is what a spare segment is written from, a chunk at a time; it
// is never written to, so every preparation shares it instead of
// allocating its own.
var zeroChunk [spareChunk]byte

// errSpareClosed ends a preparation cut short by Close.
var errSpareClosed = errors.New("wal: log closed while preparing a spare segment")

// spare prepares preallocated segment files in a directory.
type spare struct {
	dir     string
	size    int64
	lg      *slog.Logger
	noSpace prometheus.Counter // counts preparations a full disk cut short; may be nil

	mu     sync.Mutex
	ready  bool  // spareName is complete
	failed error // the last preparation's failure, logged once

	want chan struct{} // capacity 1: prepare another
	quit chan struct{}
	done chan struct{}
}

// newSpare starts preparing spare segment files of size bytes in dir. With
// now, it prepares the first before it returns.
func newSpare(dir string, size int64, lg *slog.Logger, noSpace prometheus.Counter, now bool) *spare {
	s := &spare{dir: dir, size: size, lg: lg, noSpace: noSpace, want: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{})}
	if now {
		s.prepared(s.prepare())
	} else {
		s.want <- struct{}{}
	}
	go s.run()
	return s
}

func (s *spare) run() {
	defer close(s.done)
	for {
		select {
		case <-s.want:
		case <-s.quit:
			return
		}
		s.mu.Lock()
		ready := s.ready
		s.mu.Unlock()
		if ready {
			continue
		}
		s.prepared(s.prepare())
	}
}

// prepared records the outcome of a preparation.
func (s *spare) prepared(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready = err == nil
	if errors.Is(err, errSpareClosed) {
		return
	}
	if err != nil && s.failed == nil && s.lg != nil {
		s.lg.Warn("wal: cannot preallocate the next segment; segments are started sparse",
			"dir", s.dir, "err", err)
	}
	s.failed = err
	if isNoSpace(err) && s.noSpace != nil {
		s.noSpace.Inc()
	}
}

// prepare makes spareName a complete, durable file of zeros: it keeps one
// left by an earlier run if it is that, and writes a new one otherwise.
func (s *spare) prepare() error {
	path := filepath.Join(s.dir, spareName)
	if ok, err := allZeros(path, s.size); err != nil || ok {
		return err
	}
	tmp := filepath.Join(s.dir, spareTmpName)
	err := s.write(tmp)
	if err != nil {
		// A spare that a full disk cut short holds room that appends need.
		os.Remove(tmp)
		return err
	}
	// No fsync of the directory: the rename into a segment's name is made
	// durable by the one that follows a new segment (Log.commit).
	return os.Rename(tmp, path)
}

// write writes tmp as a complete, durable file of zeros.
func (s *spare) write(tmp string) error {
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	zeros := zeroChunk[:min(spareChunk, s.size)]
	for off := int64(0); off < s.size; {
		n := min(int64(len(zeros)), s.size-off)
		if _, err := f.Write(zeros[:n]); err != nil {
			f.Close()
			return err
		}
		off += n
		// A chunk at a time, so that no one flush of the zeros holds the
		// disk for long in front of an acknowledgement's sync.
		if err := datasync(f); err != nil {
			f.Close()
			return err
		}
		select {
		case <-s.quit:
			f.Close()
			return errSpareClosed
		default:
		}
	}
	if err := f.Sync(); err != nil { // the size, with its metadata
		f.Close()
		return err
	}
	return f.Close()
}

// allZeros reports whether path is a file of size zeros. A missing file is
// not an error.
func allZeros(path string, size int64) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() != size {
		return false, err
	}
	buf := make([]byte, spareChunk)
	for {
		n, err := f.Read(buf)
		if !isZero(buf[:n]) {
			return false, nil
		}
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// isZero reports whether b holds only zeros, comparing a page at a time.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeroPage [4096]byte

// create returns the file for a new segment at path, open for writing at
// offset 0: the spare renamed into place if one is ready, else a sparse
// file of the same size; and whether it is the spare. It asks for the next
// spare either way. A nil spare (preallocation turned off) creates an empty
// file.
func (s *spare) create(path string) (f *os.File, preallocated bool, err error) {
	if s == nil {
		f, err = createEmpty(path)
		return f, false, err
	}
	defer func() {
		select {
		case s.want <- struct{}{}:
		default:
		}
	}()
	// The lock is held across the rename, so that the spare goroutine
	// never sees ready false while the spare file is still there: it would
	// take that file for a spare of its own.
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		f, err = s.createSparse(path)
		return f, false, err
	}
	s.ready = false
	err = os.Rename(filepath.Join(s.dir, spareName), path)
	if errors.Is(err, os.ErrNotExist) {
		// Removed behind the log's back: do without.
		if s.lg != nil {
			s.lg.Warn("wal: the spare segment file is gone; this segment is started sparse", "dir", s.dir)
		}
		f, err = s.createSparse(path)
		return f, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("preallocated segment: %w", err)
	}
	f, err = os.OpenFile(path, os.O_WRONLY, 0)
	return f, true, err
}

// createSparse makes the file of a new segment at path as a sparse file of
// the spare's size: created aside, sized without being written, fsynced and
// renamed into place, so that the segment's name never stands for a file
// shorter than that. The caller fsyncs the directory before anything in it
// is acknowledged.
func (s *spare) createSparse(path string) (*os.File, error) {
	tmp := filepath.Join(s.dir, sparseTmpName)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("sparse segment: %w", err)
	}
	err = f.Truncate(s.size)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("sparse segment: %w", err)
	}
	return f, nil
}

// createEmpty creates an empty segment file at path.
func createEmpty(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
}

// close stops the goroutine, waiting for a preparation under way to stop.
// A nil spare has nothing to stop.
func (s *spare) close() {
	if s == nil {
		return
	}
	close(s.quit)
	<-s.done
}
