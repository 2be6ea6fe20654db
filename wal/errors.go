package wal

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by operations on a closed Log.
	ErrClosed = errors.New("wal: closed")
	// ErrFull is returned at once by Append when the unreleased entries have
	// reached the Log's bound. Nothing was written; the caller should turn it
	// into backpressure and try again once consumers have released entries.
	ErrFull = errors.New("wal: full")
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
)

// CorruptionError reports damaged data that is not a torn tail: damage
// followed by intact entries, a damaged entry in a segment that is not the
// last, or a gap between segments. The log refuses to open (or, found while
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
