package loadgen

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// appendServerFrame appends an unmasked server frame, as a server writes
// it; the fuzz target checks decodeFrame against it.
func appendServerFrame(dst []byte, fin bool, op byte, p []byte) []byte {
	h0 := op
	if fin {
		h0 |= 0x80
	}
	dst = append(dst, h0)
	switch n := len(p); {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xffff:
		dst = append(dst, 126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, p...)
}

func TestDecodeFrame(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		n    int // 0: incomplete
		err  bool
	}{
		{"ack", appendServerFrame(nil, true, opText, []byte(`{"type":"ack","seq":1}`)), 24, false},
		{"empty", nil, 0, false},
		{"header only", []byte{0x81}, 0, false},
		{"short payload", []byte{0x81, 3, 'a'}, 0, false},
		{"16-bit length", appendServerFrame(nil, true, opText, make([]byte, 300)), 304, false},
		{"16-bit length, cut", appendServerFrame(nil, true, opText, make([]byte, 300))[:3], 0, false},
		{"64-bit length", appendServerFrame(nil, true, opText, make([]byte, 70000)), 70010, false},
		{"64-bit length, cut", appendServerFrame(nil, true, opText, make([]byte, 70000))[:9], 0, false},
		{"ping", appendServerFrame(nil, true, opPing, []byte("x")), 3, false},
		{"close", appendServerFrame(nil, true, opClose, closePayload(1001)), 4, false},
		{"fragment", appendServerFrame(nil, false, opText, []byte("ab")), 4, false},
		{"masked", []byte{0x81, 0x80 | 1, 1, 2, 3, 4, 'x'}, 0, true},
		{"reserved bit", []byte{0x81 | 0x40, 1, 'x'}, 0, true},
		{"unknown opcode", []byte{0x83, 1, 'x'}, 0, true},
		{"fragmented ping", []byte{0x09, 1, 'x'}, 0, true},
		{"long ping", appendServerFrame(nil, true, opPing, make([]byte, 126)), 0, true},
		{"16-bit length of 5", []byte{0x81, 126, 0, 5, 1, 2, 3, 4, 5}, 0, true},
		{"64-bit length of 5", []byte{0x81, 127, 0, 0, 0, 0, 0, 0, 0, 5}, 0, true},
		{"over the limit", []byte{0x81, 127, 0, 0, 0, 0, 0x10, 0, 0, 1}, 0, true},
		{"length past int64", []byte{0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, n, err := decodeFrame(tc.b, maxServerFrame)
			if n != tc.n || (err != nil) != tc.err {
				t.Fatalf("decodeFrame = %d, %v; want %d, error %v", n, err, tc.n, tc.err)
			}
		})
	}
}

// FuzzDecodeFrame: decodeFrame never panics, never takes more than it was
// given, and what it decodes is exactly what a server would have written
// for that frame; a close frame's code is the one in its payload. (The
// replies in text frames are protocol.DecodeServerFrame's, which has its
// own fuzz target.)
func FuzzDecodeFrame(f *testing.F) {
	f.Add(appendServerFrame(nil, true, opText, []byte(`{"type":"ack","seq":12,"ids":[1,2]}`)))
	f.Add(appendServerFrame(nil, true, opText, []byte(`{"type":"error","code":"too_large","seq":3,"message":"x"}`)))
	f.Add(appendServerFrame(nil, true, opClose, append(closePayload(1013), "overloaded"...)))
	f.Add(appendServerFrame(nil, true, opPing, nil))
	f.Add(appendServerFrame(nil, false, opText, make([]byte, 200)))
	f.Add(appendServerFrame(appendServerFrame(nil, true, opText, []byte(`{"type":"ack","seq":1}`)), true, opText, []byte(`{"type":"ack","seq":2}`)))
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			fr, n, err := decodeFrame(b, 1<<16)
			if err != nil || n == 0 {
				return
			}
			if n > len(b) {
				t.Fatalf("took %d of %d bytes", n, len(b))
			}
			if re := appendServerFrame(nil, fr.fin, fr.op, fr.payload); !bytes.Equal(re, b[:n]) {
				t.Fatalf("decoded % x as %+v, which encodes as % x", b[:n], fr, re)
			}
			switch fr.op {
			case opClose:
				if code, _, err := parseClose(fr.payload); err == nil && len(fr.payload) >= 2 && code != int(binary.BigEndian.Uint16(fr.payload)) {
					t.Fatalf("close code %d from % x", code, fr.payload)
				}
			case opText:
				parseReply(fr.payload)
			}
			b = b[n:]
		}
	})
}
