package wal

import (
	"errors"
	"fmt"
	"time"

	"github.com/ingest-io/ingest/internal/defaults"
)

// Options configure a Log. The zero value of a field means its default.
type Options struct {
	// Hop names the tier that owns the log ("frontend", "middletier"). It is
	// the value of the hop label on every metric of the log.
	Hop string
	// SegmentBytes is the size at which a segment file is closed and a new
	// one started. Released entries are removed a whole segment at a time,
	// so up to one segment of them stays on disk. Default 4 MiB.
	SegmentBytes int
	// MaxBytes bounds the payload bytes of unreleased entries. An Append that
	// would pass it returns ErrFull. Default 1 GiB.
	MaxBytes int64
	// MaxEntries bounds the number of unreleased entries. Default 0: no bound
	// beyond MaxBytes.
	MaxEntries int64
	// MaxBatchBytes bounds the payload bytes that one group commit writes
	// with one fsync. Default 8 MiB.
	MaxBatchBytes int
	// NoPreallocate turns off the preallocation of segment files (see
	// spare.go): each segment then starts empty and grows as it is
	// written, and every sync must commit its new size too. For
	// comparisons and for file systems where writing a file of zeros
	// ahead is no cheaper than growing one.
	NoPreallocate bool
	// RepairTruncated opens a log whose last segment is shorter than the
	// size it was created with, which no crash can leave (segments are
	// created at their full size; see doc.go, "Integrity"): someone or
	// something cut the file, and acknowledged entries may have gone with
	// it. Without it, Open refuses such a log with a *CorruptionError
	// naming the segment. With it, Open keeps the whole entries the segment
	// still holds, logs and counts what it drops, and draws a new log
	// identity, so that consumers cannot take entries appended from then on
	// for repeats of lost ones that had the same indexes.
	RepairTruncated bool
	// NoSpaceRetry is how long the log refuses appends with ErrNoSpace,
	// without writing, after a write failed for lack of room; the next
	// group commit after it tries the disk again. Default 1s.
	NoSpaceRetry time.Duration
	// MarkInterval is the least time between two writes of the release
	// mark (a file written aside, fsynced and renamed, and the directory
	// fsynced: three syncs). Releases within it share one write, made
	// when it has passed since the last; Close writes the last mark at
	// once. A crash repeats at most what was released within it, and
	// released segments are removed up to that much later. Default 1s.
	MarkInterval time.Duration
	// CommitInterval is the least time between the starts of two group
	// commits. An append that comes sooner after the last commit began
	// waits for the rest of it, and goes out with whatever else came
	// meanwhile: one write and one fsync for all of them. It bounds the
	// fsyncs a second under load (many appends that each wait for their
	// own, such as thousands of devices' single messages) and costs an
	// append up to that much latency, plus the thread's timer slack by
	// which the wait may overrun (1 ms in the engine's serving tiers:
	// INGEST_TIMER_SLACK); an append that comes later is committed at
	// once. Default 0: every commit starts as soon as the one before has
	// ended.
	CommitInterval time.Duration
}

// DefaultOptions returns the options a zero Options stands for.
func DefaultOptions() Options {
	return Options{
		SegmentBytes:  4 << 20,
		MaxBytes:      1 << 30,
		MaxBatchBytes: 8 << 20,
		NoSpaceRetry:  time.Second,
		MarkInterval:  time.Second,
	}
}

// withDefaults validates o and returns a copy with defaults filled in.
func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.SegmentBytes < 0 || o.MaxBytes < 0 || o.MaxEntries < 0 || o.MaxBatchBytes < 0 || o.NoSpaceRetry < 0 || o.MarkInterval < 0 || o.CommitInterval < 0 {
		return o, errors.New("wal: options must not be negative")
	}
	defaults.Fill(&o, d)
	if o.SegmentBytes < 4096 {
		return o, fmt.Errorf("wal: segment size %d below 4096 bytes", o.SegmentBytes)
	}
	return o, nil
}

// segmentFileBytes is the size segment files are created with when they are
// preallocated: a segment ends after the entry that takes it to
// SegmentBytes, so a sixteenth more leaves room for that entry.
func (o Options) segmentFileBytes() int64 {
	return int64(o.SegmentBytes + o.SegmentBytes/16)
}
