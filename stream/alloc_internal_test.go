package stream

import (
	"context"
	"testing"

	"github.com/ingest-io/ingest/wire"
)

type discardHandler struct{}

func (discardHandler) Records(context.Context, *Batch) error { return nil }
func (discardHandler) Lost(Gap)                              {}

// The Follower's hot path, a stream message taken and handed over,
// allocates per message (decoding it) and never per record: a message of
// 256 records costs no more allocations than one of a single record.
func TestNoAllocationPerRecord(t *testing.T) {
	allocs := func(n int) float64 {
		f, err := New(Endpoints{Stream: "tcp://127.0.0.1:1"}, Options{Consumer: "feed"}, discardHandler{}, Metrics{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		const runs = 200
		msgs := make([][][]byte, runs+1)
		recs := make([][]byte, n)
		for i := range msgs {
			for j := range recs {
				recs[j] = wire.AppendRecord(nil, &wire.Record{Origin: "fe-1.0001", Index: uint64(i*n + j + 1), Data: []byte(`{"n":1}`)})
			}
			msgs[i] = [][]byte{wire.Append(nil, &wire.Stream{Middletier: "mt-0", First: uint64(i*n + 1), Records: recs})}
		}
		ctx := context.Background()
		i := 0
		return testing.AllocsPerRun(runs, func() {
			if err := f.onStream(ctx, msgs[i]); err != nil {
				t.Fatal(err)
			}
			if err := f.flush(ctx); err != nil {
				t.Fatal(err)
			}
			i++
		})
	}
	one, many := allocs(1), allocs(256)
	t.Logf("allocations per stream message: %v with 1 record, %v with 256", one, many)
	if many > one {
		t.Fatalf("a message of 256 records costs %v allocations, one of 1 record %v: something allocates per record", many, one)
	}
}
