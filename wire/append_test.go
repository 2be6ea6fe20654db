package wire

import "testing"

// BenchmarkAppendFresh encodes into no buffer, as a sender that hands each
// message's bytes away does: Append grows its output once.
func BenchmarkAppendFresh(b *testing.B) {
	entries := make([][]byte, 64)
	for i := range entries {
		entries[i] = make([]byte, 200)
	}
	c := sampleCommand()
	for _, bm := range []struct {
		name string
		m    Message
	}{
		{"batch", &Batch{Origin: "fe-1.0123456789abcdef", First: 1, Entries: entries}},
		{"ack", &Ack{Origin: "fe-1.0123456789abcdef", UpTo: 1 << 30}},
		{"deliver", &Deliver{Commands: []Command{c, c, c, c}}},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = Append(nil, bm.m)
			}
		})
	}
}

// BenchmarkDecode decodes what a consumer of a stream reads: a message of
// 64 records, and each record in it.
func BenchmarkDecode(b *testing.B) {
	recs := make([][]byte, 64)
	for i := range recs {
		recs[i] = AppendRecord(nil, &Record{Origin: "fe-1.0123456789abcdef", Index: uint64(i + 1), Data: make([]byte, 200)})
	}
	msg := Append(nil, &Stream{Middletier: "mt-1", First: 1, Records: recs})
	b.Run("stream", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Decode(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("record", func(b *testing.B) {
		b.ReportAllocs()
		known := ""
		for b.Loop() {
			r, err := DecodeRecordKnown(recs[0], known)
			if err != nil {
				b.Fatal(err)
			}
			known = r.Origin
		}
	})
}
