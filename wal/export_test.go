package wal

import "testing"

// SetSync replaces the fsync of the tail segment, for fault tests. It must be
// called before the first append.
func (l *Log) SetSync(f func() error) { l.sync = f }

// SegmentStarts returns the first indexes of the segments as the log tracks them.
func (l *Log) SegmentStarts() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint64(nil), l.segStarts...)
}

// WriteRelease makes upTo the durable release mark in dir, as a log's
// Release does, without a log: no segment is truncated behind it.
var WriteRelease = writeRelease

// Datasync is fdatasync where the system has it, for benchmarks.
var Datasync = datasync

// WaitFor waits up to 10 s for cond, failing the test if it never holds.
func WaitFor(t testing.TB, what string, cond func() bool) { waitFor(t, what, cond) }
