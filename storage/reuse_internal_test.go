package storage

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/stream"
	"github.com/ingest-io/ingest/wire"
)

// keepingSink keeps a copy of the fields of every point it is given, and,
// like the limiter, deletes all but one field of each in place.
type keepingSink struct{ got []map[string]float64 }

func (k *keepingSink) Write(_ context.Context, points []Point) error {
	for _, p := range points {
		k.got = append(k.got, maps.Clone(p.Numbers))
		for name := range p.Numbers {
			if name != "n" {
				delete(p.Numbers, name)
			}
		}
	}
	return nil
}

func (k *keepingSink) Close() error { return nil }

// The storage writer makes each batch's points in the last batch's,
// reusing their maps of fields, but not a map a message of more than 64
// fields grew, even after the sink (as the limiter does) deleted fields of
// it: the sink sees each message's own fields.
func TestHandlerReusesSmallMapsOnly(t *testing.T) {
	sink := &keepingSink{}
	m, err := newWriterMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &handler{s: &Writer{opts: DefaultOptions(), sink: sink, lg: slog.New(slog.DiscardHandler), m: m}}
	payload := func(i, fields int) string {
		var b strings.Builder
		fmt.Fprintf(&b, `{"n":%d`, i)
		for f := 1; f < fields; f++ {
			fmt.Fprintf(&b, `,"f%d":%d`, f, f)
		}
		return b.String() + "}"
	}
	index := uint64(0)
	batch := func(fields ...int) {
		var recs [][]byte
		for _, n := range fields {
			index++
			env := envelope.Envelope{Frontend: "fe", Device: "d", Received: int64(index), Payload: []byte(payload(int(index), n))}
			recs = append(recs, wire.AppendRecord(nil, &wire.Record{Origin: "fe", Index: index, Data: envelope.AppendEncode(nil, &env)}))
		}
		if err := h.Records(context.Background(), &stream.Batch{Middletier: "mt", First: index, Records: recs}); err != nil {
			t.Fatal(err)
		}
	}
	mapOf := func(i int) uintptr { return reflect.ValueOf(h.points[:cap(h.points)][i].Numbers).Pointer() }
	batch(3, 3, 3)
	small := mapOf(0)
	batch(3, 1000, 3)
	if mapOf(0) != small {
		t.Errorf("a small message's map was not reused")
	}
	if mapOf(1) != 0 {
		t.Errorf("the map a 1,000-field message grew is kept for reuse")
	}
	batch(3, 3, 3)
	want := []int{3, 3, 3, 3, 1000, 3, 3, 3, 3}
	for i, n := range want {
		if len(sink.got[i]) != n || sink.got[i]["n"] != float64(i+1) {
			t.Fatalf("point %d: %d fields, n=%v; want %d fields, n=%d", i, len(sink.got[i]), sink.got[i]["n"], n, i+1)
		}
	}
}
