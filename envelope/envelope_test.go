package envelope

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/ingest-io/ingest/internal/decodetest"
)

func sample() *Envelope {
	return &Envelope{
		Frontend:      "fe-1",
		Device:        "sensor-42",
		Received:      1_700_000_000_123_456_789,
		DeviceTime:    1_700_000_000_000_000_000,
		HasDeviceTime: true,
		Payload:       []byte(`{"id":7,"temp":21.5}`),
	}
}

func TestRoundTrip(t *testing.T) {
	cases := map[string]*Envelope{
		"full":          sample(),
		"no device ts":  {Frontend: "f", Device: "d", Received: -1, Payload: []byte(`{}`)},
		"empty payload": {Frontend: "f", Device: "d", Received: 0},
		"long ids": {Frontend: strings.Repeat("f", MaxIDBytes), Device: strings.Repeat("d", MaxIDBytes),
			Received: 1, Payload: bytes.Repeat([]byte("x"), 70000)},
		"negative device ts": {Frontend: "f", Device: "d", DeviceTime: -5, HasDeviceTime: true, Payload: []byte(`{"a":1}`)},
		"topic":              {Frontend: "f", Device: "d", Received: 3, Topic: "telemetry/gps", Payload: []byte(`{"a":1}`)},
		"topic and ts": {Frontend: "f", Device: "d", DeviceTime: 9, HasDeviceTime: true,
			Topic: strings.Repeat("t", MaxTopicBytes), Payload: []byte(`{}`)},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			b := AppendEncode([]byte("prefix"), in)
			b = b[len("prefix"):]
			if len(b) != Size(in) {
				t.Fatalf("encoded %d bytes, Size says %d", len(b), Size(in))
			}
			out, err := Decode(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if out.Frontend != in.Frontend || out.Device != in.Device || out.Received != in.Received ||
				out.HasDeviceTime != in.HasDeviceTime || out.DeviceTime != in.DeviceTime || out.Topic != in.Topic ||
				!bytes.Equal(out.Payload, in.Payload) {
				t.Fatalf("round trip: got %+v, want %+v", out, in)
			}
		})
	}
}

// TestVersion1 decodes a version 1 record as written before version 2
// existed (the bytes are spelled out), and checks that an envelope without
// a topic is still written as exactly those bytes: a version 1 reader reads
// it.
func TestVersion1(t *testing.T) {
	v1 := []byte{
		1, 1, // version 1, device time present
		4, 'f', 'e', '-', '1',
		9, 's', 'e', 'n', 's', 'o', 'r', '-', '4', '2',
		0x15, 0xcd, 0x85, 0x3d, 0xfe, 0x9c, 0x97, 0x17, // 1_700_000_000_123_456_789
		0x00, 0x00, 0x2a, 0x36, 0xfe, 0x9c, 0x97, 0x17, // 1_700_000_000_000_000_000
		20, '{', '"', 'i', 'd', '"', ':', '7', ',', '"', 't', 'e', 'm', 'p', '"', ':', '2', '1', '.', '5', '}',
		0, 0, 0, 0,
	}
	v1 = reseal(v1)
	e, err := Decode(v1)
	if err != nil {
		t.Fatalf("decode version 1: %v", err)
	}
	want := sample()
	if e.Frontend != want.Frontend || e.Device != want.Device || e.Received != want.Received ||
		!e.HasDeviceTime || e.DeviceTime != want.DeviceTime || e.Topic != "" || !bytes.Equal(e.Payload, want.Payload) {
		t.Fatalf("version 1 decoded as %+v, want %+v", e, want)
	}
	if got := AppendEncode(nil, want); !bytes.Equal(got, v1) {
		t.Fatalf("an envelope without a topic encodes as\n%x, want the version 1 bytes\n%x", got, v1)
	}
	withTopic := *want
	withTopic.Topic = "gps"
	if b := AppendEncode(nil, &withTopic); b[0] != 2 || b[1] != flagDeviceTime|flagTopic {
		t.Fatalf("an envelope with a topic starts %x, want version 2 with both flags", b[:2])
	}
}

// reseal recomputes the checksum after a test has edited the body on purpose, so
// that the decoder's structural checks are reached.
func reseal(b []byte) []byte {
	body := b[:len(b)-4]
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(body, castagnoli))
	return b
}

func TestDecodeErrors(t *testing.T) {
	good := AppendEncode(nil, sample())
	mut := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrInvalid},
		{"short", good[:10], ErrInvalid},
		{"flipped payload byte", mut(func(b []byte) []byte { b[len(b)-6] ^= 1; return b }), ErrChecksum},
		{"flipped checksum", mut(func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }), ErrChecksum},
		{"zeros", make([]byte, 64), ErrChecksum},
		{"version 3", mut(func(b []byte) []byte { b[0] = 3; return reseal(b) }), ErrVersion},
		{"version 3 is newer", mut(func(b []byte) []byte { b[0] = 3; return reseal(b) }), ErrNewer},
		{"version 0", mut(func(b []byte) []byte { b[0] = 0; return reseal(b) }), ErrVersion},
		{"version 2 without a topic", mut(func(b []byte) []byte { b[0] = 2; return reseal(b) }), ErrInvalid},
		{"topic flag in version 1", mut(func(b []byte) []byte { b[1] |= flagTopic; return reseal(b) }), ErrInvalid},
		{"empty topic", func() []byte {
			b := []byte{2, flagTopic, 1, 'f', 1, 'd'}
			b = binary.LittleEndian.AppendUint64(b, 1)
			b = append(b, 0, 0, 0, 0, 0, 0)
			return reseal(b)
		}(), ErrInvalid},
		{"unknown flag", mut(func(b []byte) []byte { b[1] |= 0x80; return reseal(b) }), ErrInvalid},
		{"zero frontend id", mut(func(b []byte) []byte { b[2] = 0; return reseal(b) }), ErrInvalid},
		{"frontend id past end", mut(func(b []byte) []byte { b[2] = 0x7f; return reseal(b) }), ErrInvalid},
		{"trailing byte", mut(func(b []byte) []byte {
			b = append(b[:len(b)-4], 'x', 0, 0, 0, 0)
			return reseal(b)
		}), ErrTrailing},
		{"truncated payload", mut(func(b []byte) []byte {
			b = append(b[:len(b)-6], 0, 0, 0, 0)
			return reseal(b)
		}), ErrInvalid},
		{"non-minimal varint", func() []byte {
			b := []byte{Version, 0, 0x81, 0x00, 'f', 1, 'd'}
			b = binary.LittleEndian.AppendUint64(b, 1)
			b = append(b, 0, 0, 0, 0, 0)
			return reseal(b)
		}(), ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode: got %v, want %v", err, tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			// Version 0 is no newer engine's: a storage writer, which
			// waits at a newer record, skips it.
			if tc.name == "version 0" && errors.Is(err, ErrNewer) {
				t.Fatalf("error %v of version 0 wraps ErrNewer", err)
			}
		})
	}
}

func TestAppendEncodeAllocatesNothing(t *testing.T) {
	e := sample()
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(1000, func() {
		buf = AppendEncode(buf[:0], e)
	})
	if allocs != 0 {
		t.Fatalf("AppendEncode allocated %v times per call", allocs)
	}
}

func TestCheckID(t *testing.T) {
	if CheckID("") == nil || CheckID(strings.Repeat("x", MaxIDBytes+1)) == nil {
		t.Fatal("CheckID accepted an out-of-range id")
	}
	if err := CheckID("dev-1"); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(AppendEncode(nil, sample()))
	f.Add(AppendEncode(nil, &Envelope{Frontend: "f", Device: "d"}))
	f.Add(AppendEncode(nil, &Envelope{Frontend: "f", Device: "d", Topic: "a/b", Payload: []byte(`{}`)}))
	f.Add([]byte{})
	f.Add(make([]byte, 30))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, ok := decodetest.Accepted(t, b, Decode, ErrInvalid)
		if !ok {
			return
		}
		// Anything accepted is exactly the encoding of what it decoded to.
		if again := AppendEncode(nil, &e); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, again)
		}
		e2, err := Decode(AppendEncode(nil, &e))
		if err != nil || e2.Device != e.Device || e2.Topic != e.Topic || !bytes.Equal(e2.Payload, e.Payload) {
			t.Fatalf("decode(encode(x)) failed: %v", err)
		}
	})
}

func BenchmarkAppendEncode(b *testing.B) {
	e := sample()
	e.Payload = bytes.Repeat([]byte("x"), 200)
	buf := make([]byte, 0, 512)
	b.SetBytes(int64(Size(e)))
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEncode(buf[:0], e)
	}
}

func BenchmarkDecode(b *testing.B) {
	e := sample()
	e.Payload = bytes.Repeat([]byte("x"), 200)
	buf := AppendEncode(nil, e)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(buf); err != nil {
			b.Fatal(err)
		}
	}
}
