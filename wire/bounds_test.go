package wire

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math"
	"testing"
)

// docs/wire.md: entries[i] is at index first+i, records[i] at sequence
// first+i; indexes and sequences start at 1. A message whose last index
// does not fit a uint64 names entries at index 0 and below its first.
func TestDecodeRefusesIndexOverflow(t *testing.T) {
	two := [][]byte{[]byte("a"), []byte("b")}
	for name, m := range map[string]Message{
		"batch":              &Batch{Origin: "fe.0123", Acked: math.MaxUint64 - 1, First: math.MaxUint64, Entries: two},
		"stream":             &Stream{Middletier: "mt", First: math.MaxUint64, Records: two},
		"fetch_reply":        &FetchReply{Middletier: "mt", Oldest: 1, Last: math.MaxUint64, First: math.MaxUint64, Records: two},
		"fetch_reply_first0": &FetchReply{Middletier: "mt", Oldest: 0, Last: 1, First: 0, Records: two},
	} {
		if _, err := Decode(Append(nil, m)); err == nil {
			t.Errorf("%s: accepted %+v: its records run past sequence 2^64-1 (or start at 0)", name, m)
		}
	}
}

// docs/wire.md: "Names (origin, middletier, consumer) are 1 to 255 bytes."
func TestDecodeRefusesEmptyNames(t *testing.T) {
	for name, m := range map[string]Message{
		"batch":  &Batch{Origin: "", First: 1, Entries: [][]byte{[]byte("x")}},
		"ack":    &Ack{Origin: "", UpTo: 1},
		"stream": &Stream{Middletier: "", First: 1, Records: [][]byte{[]byte("x")}},
		"fetch":  &Fetch{Consumer: "", From: 1, Max: 1},
		"commit": &Commit{Consumer: "", Seq: 5},
	} {
		if _, err := Decode(Append(nil, m)); err == nil {
			t.Errorf("%s with an empty name accepted", name)
		}
	}
}

// FuzzDecodeBody fuzzes bodies behind a valid header and checksum, which
// FuzzDecode almost never gets past: every body that decodes re-encodes
// to itself.
func FuzzDecodeBody(f *testing.F) {
	for _, m := range samples() {
		b := Append(nil, m)
		f.Add(b[2], b[headerLen:len(b)-trailerLen])
	}
	f.Fuzz(func(t *testing.T, kind byte, body []byte) {
		b := append([]byte{magic, version, kind}, body...)
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
		m, err := Decode(b)
		if err != nil {
			return
		}
		if re := Append(nil, m); !bytes.Equal(re, b) {
			t.Fatalf("%s re-encodes differently", m.Kind())
		}
	})
}
