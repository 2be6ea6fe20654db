package wal

import (
	"errors"
	"fmt"
	"syscall"
)

var (
	// ErrClosed is returned by operations on a closed Log.
	ErrClosed = errors.New("wal: closed")
	// ErrFull is returned at once by Append when the unreleased entries have
	// reached the Log's bound. Nothing was written; the caller should turn it
	// into backpressure and try again once consumers have released entries.
	ErrFull = errors.New("wal: full")
	// ErrNoSpace is returned by Append when the file system holding the log
	// has no room for the entries (ENOSPC, or EDQUOT: a quota is used up).
	// Nothing was written: the log is as it was before the append, and it
	// keeps taking appends once there is room again. Like ErrFull, the
	// caller should turn it into backpressure. After a failed write the log
	// refuses appends at once, without writing, for Options.NoSpaceRetry,
	// then lets the next group commit try again.
	ErrNoSpace = errors.New("wal: no space left on device")
	// ErrTooLarge is returned by Append for an entry that could never fit
	// under the Log's bound.
	ErrTooLarge = errors.New("wal: entry too large")
	// ErrCompacted is returned for an index that has been released and
	// truncated away.
	ErrCompacted = errors.New("wal: index compacted")
	// ErrEmptyBatch is returned by AppendBatch for a batch with no entries.
	ErrEmptyBatch = errors.New("wal: empty batch")
	// errMissingSegment describes a gap in the sequence of segments.
	errMissingSegment = errors.New("missing segment")
	// ErrTruncated is what a *CorruptionError wraps for a last segment
	// shorter than the size it was created with, the one damage that
	// Options.RepairTruncated repairs.
	ErrTruncated = errors.New("segment truncated")
)

// isNoSpace reports whether err says the file system is out of room: a
// full disk, or a disk quota used up.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// CorruptionError reports damaged data that is not a torn tail: damage
// followed by intact entries, a damaged entry in a segment that is not the
// last, a gap between segments, or a last segment shorter than the size it
// was created with (errors.Is(err, ErrTruncated) names that case, and
// Options.RepairTruncated opens such a log). The log refuses to open (or, found while
// reading, to return the entry) rather than skip or return damaged data.
type CorruptionError struct {
	// Segment is the name of the segment file, inside the log's directory.
	Segment string
	// Offset is the byte offset of the damage inside Segment, or -1 where it
	// is not known (damage found while reading a cached entry).
	Offset int64
	// Index is the index of the first entry affected.
	Index uint64
	// Err says what is wrong.
	Err error
}

func (e *CorruptionError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("wal: corrupt entry %d in segment %s: %v", e.Index, e.Segment, e.Err)
	}
	return fmt.Sprintf("wal: corrupt entry %d in segment %s at offset %d: %v", e.Index, e.Segment, e.Offset, e.Err)
}

func (e *CorruptionError) Unwrap() error { return e.Err }
