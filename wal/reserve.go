package wal

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/fileutil"
)

// The reserve is a file of zeros the log keeps in its directory for a disk
// it has filled itself. The release mark is written aside and renamed into
// place (release.go), which takes a block; on a file system full of the
// log's own entries that write fails, so the released segments are never
// removed and the disk never empties: a restart only repeats it. When a
// mark that would let a whole segment go cannot be written for lack of
// room, the log removes the reserve and writes the mark in the room it
// kept (and a tier whose own state must be durable before its release does
// the same, through SpendReserve). A truncation that has made room makes a
// new reserve.
const (
	reserveName  = "reserve" // written aside as reserve.tmp
	reserveBytes = 256 << 10
)

// reserve keeps the reserve file of one log's directory.
type reserve struct {
	dir   string
	lg    *slog.Logger
	spent prometheus.Counter

	mu   sync.Mutex
	have bool
}

// newReserve finds dir's reserve, or makes one if there is room.
func newReserve(dir string, lg *slog.Logger, spent prometheus.Counter) *reserve {
	r := &reserve{dir: dir, lg: lg, spent: spent}
	if fi, err := os.Stat(filepath.Join(dir, reserveName)); err == nil && fi.Size() == reserveBytes {
		r.have = true
	} else {
		r.ensure()
	}
	return r
}

// ensure makes the reserve unless it is there. A disk without room for it
// leaves none, and nothing half written: a later truncation tries again.
func (r *reserve) ensure() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.have {
		return
	}
	err := fileutil.StageFile(r.dir, reserveName, zeroChunk[:reserveBytes])
	if err == nil {
		err = fileutil.SyncDir(r.dir)
	}
	if err != nil {
		if !isNoSpace(err) && r.lg != nil {
			r.lg.Warn("wal: cannot keep a reserve for a full disk", "dir", r.dir, "err", err)
		}
		return
	}
	r.have = true
}

// spend removes the reserve, if the log has it, and reports whether it did.
func (r *reserve) spend() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.have {
		return false
	}
	err := os.Remove(filepath.Join(r.dir, reserveName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		if r.lg != nil {
			r.lg.Warn("wal: cannot remove the reserve", "dir", r.dir, "err", err)
		}
		return false
	}
	r.have = false
	r.spent.Inc()
	if r.lg != nil {
		r.lg.Warn("wal: disk full; the reserve was spent so that released segments can be removed", "dir", r.dir)
	}
	return true
}

// SpendReserve removes the room the log keeps in reserve for a full disk,
// if it has it and a Release up to upTo would let at least one whole
// segment go, and reports whether it did. A tier whose own state must be
// durable before it releases calls it when that state cannot be written
// for lack of room, with the state's directory (dir): the reserve is
// spent only if dir is on the log's file system, where the room helps.
// The tier then writes its state again at once. The log makes a new
// reserve once a truncation has made room.
//
// From then until the truncation, appends are refused with ErrNoSpace
// without writing: the room is the mark's, and an append that took it
// would leave the log where it was, with no reserve.
func (l *Log) SpendReserve(upTo uint64, dir string) bool {
	if !sameFileSystem(dir, l.dir) {
		return false
	}
	// Under writeMu, so that no commit that passed its look at the hold
	// writes into the room between the spend and the hold.
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.freesSegmentLocked(upTo) || !l.res.spend() {
		return false
	}
	l.reserveHeld = true
	l.showNoSpaceLocked()
	return true
}

// errReserveHeld refuses appends while the room the reserve kept waits for
// the release mark (SpendReserve).
var errReserveHeld = fmt.Errorf("%w: the room kept in reserve is held for the release mark", ErrNoSpace)
