package varint

import (
	"encoding/binary"
	"testing"
)

func TestLen(t *testing.T) {
	for _, x := range []uint64{0, 1, 0x7f, 0x80, 0x3fff, 0x4000, 1<<21 - 1, 1 << 21, 1<<35 - 1, 1 << 35, 1<<56 - 1, 1 << 56, 1<<63 - 1, 1 << 63, ^uint64(0)} {
		if got, want := Len(x), len(binary.AppendUvarint(nil, x)); got != want {
			t.Errorf("Len(%#x) = %d, want %d", x, got, want)
		}
	}
}

func FuzzLen(f *testing.F) {
	f.Add(uint64(300))
	f.Fuzz(func(t *testing.T, x uint64) {
		if got, want := Len(x), len(binary.AppendUvarint(nil, x)); got != want {
			t.Fatalf("Len(%#x) = %d, want %d", x, got, want)
		}
	})
}
