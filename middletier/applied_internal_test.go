package middletier

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// TestAppliedNeverAheadOfMarks: a state snapshot (keepState takes applied
// and the marks under mu) never holds an applied that its marks do not
// cover, or a state written from it would say that the marks account for
// records they do not. A goroutine takes snapshots while 3,000 one-entry
// batches are appended. Before, appendGroup raised applied in one critical
// section and the marks in a later one; a few hundred of some 90 million
// snapshots fell between them.
func TestAppliedNeverAheadOfMarks(t *testing.T) {
	dir := t.TempDir()
	l, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{Hop: "t", NoPreallocate: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r, err := New(Options{ID: "mt", StateDir: dir, IngestAddr: "tcp://127.0.0.1:0", ConsumerAddr: "tcp://127.0.0.1:0", StreamAddr: "tcp://127.0.0.1:0"}, l, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var stop atomic.Bool
	var seen, bad atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			r.mu.Lock()
			a, h := r.applied, r.highest["o"]
			r.mu.Unlock()
			seen.Add(1)
			if a > h { // record a is origin index a: one entry per batch, from 1
				bad.Add(1)
			}
		}
	}()
	for i := uint64(1); i <= 3000; i++ {
		r.appendGroup(context.Background(), []inbound{{identity: []byte("x"), b: &wire.Batch{Origin: "o", First: i, Entries: [][]byte{[]byte("e")}}}})
	}
	stop.Store(true)
	<-done
	t.Logf("%d snapshots, %d with applied ahead of the marks", seen.Load(), bad.Load())
	if bad.Load() > 0 {
		t.Fatalf("%d snapshots had applied ahead of the marks: a state written then says its marks cover records they do not", bad.Load())
	}
}
