package testkit

import (
	"context"
	"testing"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/wal"
)

// WALEnvelopes opens the frontend WAL in dir (its server stopped) and
// decodes every envelope it holds and has not released, in WAL order.
func WALEnvelopes(t testing.TB, dir string) []envelope.Envelope {
	t.Helper()
	l, err := wal.Open(dir, wal.Options{Hop: "check"}, nil, nil)
	if err != nil {
		t.Fatalf("reopen wal: %v", err)
	}
	defer l.Close()
	cur, err := l.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]envelope.Envelope, 0, l.LastIndex()-l.Released())
	for range l.LastIndex() - l.Released() {
		e, err := cur.Next(context.Background())
		if err != nil {
			t.Fatalf("read wal: %v", err)
		}
		env, err := envelope.Decode(e.Data)
		if err != nil {
			t.Fatalf("entry %d: %v", e.Index, err)
		}
		out = append(out, env)
	}
	return out
}

// OpenWAL opens the WAL in dir with opts, closed when the test ends.
func OpenWAL(t testing.TB, dir string, opts wal.Options) *wal.Log {
	t.Helper()
	l, err := wal.Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
