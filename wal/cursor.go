package wal

import (
	"context"
	"errors"
	"fmt"

	twal "github.com/tidwall/wal"
)

// Cursor reads a Log forward from an index. Reads of one Log are serialised
// inside it, so cursors may be used from several goroutines, one goroutine
// per cursor.
type Cursor struct {
	l    *Log
	next uint64
}

// Cursor returns a cursor whose first entry is from; from 0 means the first
// unreleased entry.
func (l *Log) Cursor(from uint64) (*Cursor, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if from == 0 {
		from = l.released + 1
	}
	if from < l.first {
		return nil, fmt.Errorf("wal: cursor at %d, first entry %d: %w", from, l.first, ErrCompacted)
	}
	return &Cursor{l: l, next: from}, nil
}

// Next returns the next entry, waiting until it is committed or ctx ends.
func (c *Cursor) Next(ctx context.Context) (Entry, error) {
	es, err := c.NextBatch(ctx, nil, 1)
	if err != nil {
		return Entry{}, err
	}
	return es[0], nil
}

// NextBatch appends to dst up to max committed entries, waiting only until
// the first one is committed or ctx ends.
func (c *Cursor) NextBatch(ctx context.Context, dst []Entry, max int) ([]Entry, error) {
	l := c.l
	for {
		l.mu.Lock()
		last, notify, closed, failed := l.last, l.notify, l.closed, l.err
		l.mu.Unlock()
		if closed {
			return dst, ErrClosed
		}
		if c.next <= last {
			for n := 0; n < max && c.next <= last; n++ {
				data, err := l.read(c.next)
				if err != nil {
					return dst, err
				}
				dst = append(dst, Entry{Index: c.next, Data: data})
				c.next++
			}
			return dst, nil
		}
		if failed != nil {
			// Nothing more will be committed until the log is reopened.
			return dst, failed
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return dst, ctx.Err()
		case <-l.quit:
			return dst, ErrClosed
		}
	}
}

// read returns a verified copy of the payload at index.
func (l *Log) read(index uint64) ([]byte, error) {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	stored, err := l.w.Read(index)
	switch {
	case errors.Is(err, twal.ErrNotFound):
		return nil, fmt.Errorf("wal: read %d: %w", index, ErrCompacted)
	case errors.Is(err, twal.ErrClosed):
		return nil, ErrClosed
	case err != nil:
		return nil, fmt.Errorf("wal: read %d: %w", index, err)
	}
	payload, err := decodeFrame(stored)
	if err != nil {
		return nil, &CorruptionError{Segment: l.segmentOf(index), Offset: -1, Index: index, Err: err}
	}
	return append([]byte(nil), payload...), nil
}

// segmentOf names the segment file that holds index.
func (l *Log) segmentOf(index uint64) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return segmentName(l.segmentStartLocked(index))
}

// segmentStartLocked returns the first index of the segment that holds
// index (the first segment's, for an index before it). The caller holds mu.
func (l *Log) segmentStartLocked(index uint64) uint64 {
	s := l.segStarts[0]
	for _, start := range l.segStarts {
		if start > index {
			break
		}
		s = start
	}
	return s
}
