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
