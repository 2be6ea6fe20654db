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
	buf  []byte // holds the payloads of NextBatchShared's last call
}

// maxSharedBuf bounds the buffer a cursor keeps between calls of
// NextBatchShared: a larger one, left by a batch of large entries, is
// let go.
const maxSharedBuf = 1 << 20

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

// ForEach calls fn with every entry from the first still on disk to the
// last committed when it is called, in order, and returns the first error
// of a read or of fn. Each entry's Data is its own. It is how a component
// rebuilds its state from its log at start.
func (l *Log) ForEach(fn func(Entry) error) error {
	first, last := l.FirstIndex(), l.LastIndex()
	if first > last {
		return nil
	}
	c, err := l.Cursor(first)
	if err != nil {
		return err
	}
	var es []Entry
	for next := first; next <= last; {
		if es, err = c.NextBatch(context.Background(), es[:0], 4096); err != nil {
			return err
		}
		for _, e := range es {
			if err := fn(e); err != nil {
				return err
			}
			next = e.Index + 1
		}
	}
	return nil
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
// the first one is committed or ctx ends. Each entry's Data is its own.
func (c *Cursor) NextBatch(ctx context.Context, dst []Entry, max int) ([]Entry, error) {
	return c.nextBatch(ctx, dst, max, false)
}

// NextBatchShared is NextBatch for a caller done with the entries by its
// next call: their Data share a buffer of the cursor's, which the next
// call of NextBatchShared overwrites. It spares an allocation per entry.
func (c *Cursor) NextBatchShared(ctx context.Context, dst []Entry, max int) ([]Entry, error) {
	return c.nextBatch(ctx, dst, max, true)
}

func (c *Cursor) nextBatch(ctx context.Context, dst []Entry, max int, shared bool) ([]Entry, error) {
	l := c.l
	for {
		l.mu.Lock()
		last, notify, closed, failed := l.last, l.notify, l.closed, l.err
		l.mu.Unlock()
		if closed {
			return dst, ErrClosed
		}
		if c.next <= last {
			if shared {
				if cap(c.buf) > maxSharedBuf {
					c.buf = nil
				}
				c.buf = c.buf[:0]
			}
			for n := 0; n < max && c.next <= last; n++ {
				var (
					data []byte
					err  error
				)
				if shared {
					start := len(c.buf)
					c.buf, err = l.readAppend(c.buf, c.next)
					data = c.buf[start:len(c.buf):len(c.buf)]
				} else {
					data, err = l.readAppend(nil, c.next)
				}
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

// readAppend appends a verified copy of the payload at index to buf.
func (l *Log) readAppend(buf []byte, index uint64) ([]byte, error) {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	stored, err := l.w.Read(index)
	switch {
	case errors.Is(err, twal.ErrNotFound):
		return buf, fmt.Errorf("wal: read %d: %w", index, ErrCompacted)
	case errors.Is(err, twal.ErrClosed):
		return buf, ErrClosed
	case err != nil:
		return buf, fmt.Errorf("wal: read %d: %w", index, err)
	}
	payload, err := decodeFrame(stored)
	if err != nil {
		return buf, &CorruptionError{Segment: l.segmentOf(index), Offset: -1, Index: index, Err: err}
	}
	return append(buf, payload...), nil
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
