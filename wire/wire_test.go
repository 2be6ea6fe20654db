package wire

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/ingest-io/ingest/internal/decodetest"
)

func samples() []Message {
	return []Message{
		&Batch{Origin: "fe-1.00ab", Acked: 16, First: 17, Entries: [][]byte{[]byte("a"), {}, bytes.Repeat([]byte{7}, 300)}},
		&Ack{Origin: "fe-1.00ab", UpTo: 1 << 40},
		&Busy{Origin: "fe-1", UpTo: 3, RetryAfter: 250 * time.Millisecond},
		&Resend{Origin: "fe-1", From: 9},
		&Stream{Middletier: "mt-0", First: 1, Records: [][]byte{[]byte("r")}},
		&Fetch{Consumer: "storage", From: 99, Max: 1000},
		&FetchReply{Middletier: "mt-0", Oldest: 5, Last: 10, First: 9, Records: [][]byte{[]byte("x"), []byte("y")}},
		&FetchReply{Middletier: "mt-0", Oldest: 1, Last: 0, First: 1, Records: [][]byte{}},
		&Commit{Consumer: "storage", Seq: 42},
		&CommitAck{Consumer: "storage", Seq: 42},
		&Submit{Req: 7, Device: "dev-1", Name: "reboot", Payload: []byte(`{"delay":3}`), TTLMS: 60000, Key: "k1"},
		&Query{Req: 8, Op: QueryList, Device: "dev-1", CID: "", State: StateQueued},
		&Reply{Req: 8, Code: "", Commands: []Command{sampleCommand(), {ID: "c2", Device: "d", Name: "n", Payload: []byte{}, State: StateQueued, Result: []byte{}}}},
		&Reply{Req: 9, Code: CodeNotFound, Commands: []Command{}},
		&Presence{Frontend: "fe-1", Full: true, Devices: []Place{{Device: "a", Since: 1 << 62, Present: true}, {Device: "b", Since: 5}}},
		&Deliver{Commands: []Command{sampleCommand()}},
		&Result{Device: "dev-1", CID: "c1", Status: "ok", Payload: []byte(`{"x":1}`)},
		&Lease{Group: "writers", Member: "storage-0-1a2b", Req: 300, Slot: 2, Op: LeaseHold},
		&Lease{Group: "writers", Member: "m", Req: 1, Op: LeaseLeave},
		&LeaseReply{Middletier: "mt-0", Group: "writers", Member: "m", Req: 300, Holder: "m", Writers: 2, TTL: 5 * time.Second, Revoked: true},
		&LeaseReply{Middletier: "mt-1", Group: "writers", Member: "m", Req: 1, Holder: "", Writers: 0, TTL: time.Millisecond},
	}
}

func sampleCommand() Command {
	return Command{ID: "c1", Device: "dev-1", Name: "set", Payload: []byte(`{"interval":5}`), Key: "k",
		State: StateAcknowledged, Created: 1, Expires: 2, Sent: 3, Done: 4, Status: "ok", Result: []byte(`{}`)}
}

// The shortest command the encoder writes, thirteen bytes (a one-letter
// id, device and name, the rest empty or zero), decodes in a list: the
// list's count is held to one command for every thirteen bytes left, not
// sixteen, which refused a Deliver or a Reply of such commands.
func TestShortestCommandsInAList(t *testing.T) {
	c := Command{ID: "c", Device: "d", Name: "n", State: StateQueued}
	if n := len(AppendCommand(nil, &c)); n != 16 {
		t.Fatalf("a command with one-letter names takes %d bytes, want 16", n)
	}
	c = Command{State: StateQueued, Payload: []byte{}, Result: []byte{}}
	if n := len(AppendCommand(nil, &c)); n != 13 {
		t.Fatalf("the shortest command takes %d bytes, want 13", n)
	}
	for _, m := range []Message{&Deliver{Commands: []Command{c, c, c}}, &Reply{Req: 1, Commands: []Command{c}}} {
		b := Append(nil, m)
		got, err := Decode(b)
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Errorf("%s of the shortest commands: decoded %+v, %v", m.Kind(), got, err)
		}
	}
}

func TestCommand(t *testing.T) {
	c := sampleCommand()
	b := AppendCommand(nil, &c)
	got, err := DecodeCommand(b)
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("decoded %+v, %v; want %+v", got, err, c)
	}
	for n := range len(b) {
		if _, err := DecodeCommand(b[:n]); !errors.Is(err, ErrInvalid) {
			t.Fatalf("truncated to %d accepted", n)
		}
	}
	if _, err := DecodeCommand(append(b, 0)); !errors.Is(err, ErrInvalid) {
		t.Fatal("trailing byte accepted")
	}
	for _, s := range []CommandState{StateQueued, StateSent, StateAcknowledged, StateFailed, StateExpired, StateCancelled} {
		if p, ok := ParseCommandState(s.String()); !ok || p != s {
			t.Fatalf("state %v does not parse back", s)
		}
	}
	if _, ok := ParseCommandState("state(0)"); ok {
		t.Fatal("unknown state parsed")
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range samples() {
		b := Append([]byte("prefix"), m)[len("prefix"):]
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", m.Kind(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%s: decoded %+v, want %+v", m.Kind(), got, m)
		}
		// Every single-byte change is caught.
		for i := range b {
			c := bytes.Clone(b)
			c[i] ^= 0x01
			if _, err := Decode(c); !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: flipped byte %d accepted", m.Kind(), i)
			}
		}
		// So is every truncation.
		for n := range len(b) {
			if _, err := Decode(b[:n]); !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: truncated to %d accepted", m.Kind(), n)
			}
		}
	}
}

// reframe recomputes the checksum of a hand-made body, to reach the body
// checks behind it.
func reframe(kind Kind, body []byte) []byte {
	return Append(nil, rawBody{kind, body})
}

type rawBody struct {
	k    Kind
	body []byte
}

func (r rawBody) Kind() Kind { return r.k }
func (r rawBody) fields(c codec) codec {
	c.rest(&r.body)
	return c
}

func TestInvalid(t *testing.T) {
	long := bytes.Repeat([]byte("n"), MaxNameLen+1)
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte{0x00}, Append(nil, &Ack{Origin: "a", UpTo: 1})[1:]...)},
		{"unknown kind", reframe(99, nil)},
		{"trailing bytes", reframe(KindAck, []byte{1, 'a', 1, 0})},
		{"non-minimal varint", reframe(KindAck, []byte{1, 'a', 0x81, 0x00})},
		{"name too long", reframe(KindAck, append(append([]byte{0x80, 0x02}, long...), 1))},
		{"length past the end", reframe(KindBatch, []byte{1, 'a', 0, 1, 1, 9, 'x'})},
		{"count past the end", reframe(KindBatch, []byte{1, 'a', 0, 1, 100})},
		{"empty batch", reframe(KindBatch, []byte{1, 'a', 0, 1, 0})},
		{"batch from index 0", reframe(KindBatch, []byte{1, 'a', 0, 0, 1, 1, 'x'})},
		{"batch below its own ack mark", reframe(KindBatch, []byte{1, 'a', 5, 5, 1, 1, 'x'})},
		{"resend from index 0", reframe(KindResend, []byte{1, 'a', 0})},
		{"retry after over an hour", reframe(KindBusy, []byte{1, 'a', 1, 0xff, 0xff, 0xff, 0xff, 0x0f})},
		{"lease of another version", reframe(KindLease, []byte{2, 1, 'g', 1, 'm', 1, 0, 1})},
		{"lease of no group", reframe(KindLease, []byte{1, 0, 1, 'm', 1, 0, 1})},
		{"lease of no member", reframe(KindLease, []byte{1, 1, 'g', 0, 1, 0, 1})},
		{"lease op 0", reframe(KindLease, []byte{1, 1, 'g', 1, 'm', 1, 0, 0})},
		{"lease op 4", reframe(KindLease, []byte{1, 1, 'g', 1, 'm', 1, 0, 4})},
		{"lease reply of no middletier", reframe(KindLeaseReply, []byte{1, 0, 1, 'g', 1, 'm', 1, 0, 0, 1, 0})},
		{"lease reply ttl 0", reframe(KindLeaseReply, []byte{1, 2, 'm', 't', 1, 'g', 1, 'm', 1, 0, 0, 0, 0})},
		{"lease reply ttl over an hour", reframe(KindLeaseReply, []byte{1, 2, 'm', 't', 1, 'g', 1, 'm', 1, 0, 0, 0x81, 0xee, 0xdb, 0x01, 0})},
		{"lease reply boolean 2", reframe(KindLeaseReply, []byte{1, 2, 'm', 't', 1, 'g', 1, 'm', 1, 0, 0, 1, 2})},
		{"lease revoked from another", reframe(KindLeaseReply, []byte{1, 2, 'm', 't', 1, 'g', 1, 'm', 1, 1, 'o', 0, 1, 1})},
	}
	for _, tt := range tests {
		if m, err := Decode(tt.b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: decoded %+v, err %v", tt.name, m, err)
		}
	}
}

func TestRecord(t *testing.T) {
	r := Record{Origin: "fe-1.00ab", Index: 12345, Data: []byte(`{"t":1}`)}
	b := AppendRecord(nil, &r)
	got, err := DecodeRecord(b)
	if err != nil || got.Origin != r.Origin || got.Index != r.Index || !bytes.Equal(got.Data, r.Data) {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {2}, {1}, {1, 1, 'a'}, {1, 1, 'a', 0}} {
		if _, err := DecodeRecord(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("record %v accepted", bad)
		}
	}
	// ErrVersion says a newer engine wrote the record (a storage writer
	// waits there for its upgrade); a version below the one this build
	// writes is no engine's: damage, to be skipped as any other.
	newer := append([]byte{recordVersion + 1}, b[1:]...)
	if _, err := DecodeRecord(newer); !errors.Is(err, ErrVersion) || !errors.Is(err, ErrInvalid) {
		t.Errorf("a record of version %d: %v, want ErrVersion", newer[0], err)
	}
	old := append([]byte{0}, b[1:]...)
	if _, err := DecodeRecord(old); !errors.Is(err, ErrInvalid) || errors.Is(err, ErrVersion) {
		t.Errorf("a record of version 0: %v, want ErrInvalid and not ErrVersion", err)
	}
}

// A record whose origin is spelled as the known one gets that string, not
// a copy, and decodes with no allocation; any other origin gets its own,
// and what it decodes is DecodeRecord's.
func TestDecodeRecordKnown(t *testing.T) {
	known := strings.Clone("fe-1.00ab")
	b := AppendRecord(nil, &Record{Origin: "fe-1.00ab", Index: 7, Data: []byte(`{}`)})
	r, err := DecodeRecordKnown(b, known)
	if err != nil || r.Origin != known || unsafe.StringData(r.Origin) != unsafe.StringData(known) {
		t.Fatalf("decoded %+v, %v: want the known origin itself", r, err)
	}
	if n := testing.AllocsPerRun(100, func() { r, err = DecodeRecordKnown(b, known) }); n != 0 {
		t.Errorf("%v allocations a decode with the known origin, want 0", n)
	}
	for _, other := range []string{"", "fe-1.00a", "fe-1.00ac", "fe-1.00abc"} {
		r, err := DecodeRecordKnown(b, other)
		want, werr := DecodeRecord(b)
		if err != nil || werr != nil || r.Origin != want.Origin || r.Index != want.Index || !bytes.Equal(r.Data, want.Data) {
			t.Errorf("known %q: decoded %+v, %v; DecodeRecord %+v, %v", other, r, err, want, werr)
		}
	}
	if _, err := DecodeRecordKnown([]byte{1, 1, 'a'}, "a"); !errors.Is(err, ErrInvalid) {
		t.Errorf("a record with no index accepted with a known origin: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, m := range samples() {
		f.Add(Append(nil, m))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := decodetest.Accepted(t, b, Decode, ErrInvalid)
		if !ok {
			return
		}
		if re := Append(nil, m); !bytes.Equal(re, b) {
			t.Fatalf("%s decoded from %x re-encodes as %x", m.Kind(), b, re)
		}
	})
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(AppendRecord(nil, &Record{Origin: "a", Index: 1, Data: []byte("x")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		k, kerr := DecodeRecordKnown(b, "a")
		if (err == nil) != (kerr == nil) || k.Origin != r.Origin || k.Index != r.Index || !bytes.Equal(k.Data, r.Data) {
			t.Fatalf("with a known origin: %+v, %v; without: %+v, %v", k, kerr, r, err)
		}
		if err != nil {
			return
		}
		if re := AppendRecord(nil, &r); !bytes.Equal(re, b) {
			t.Fatalf("record re-encodes differently")
		}
	})
}

func BenchmarkAppendBatch(b *testing.B) {
	entries := make([][]byte, 64)
	for i := range entries {
		entries[i] = make([]byte, 200)
	}
	m := &Batch{Origin: "fe-1.0123456789abcdef", First: 1, Entries: entries}
	buf := make([]byte, 0, 64<<10)
	b.ReportAllocs()
	for b.Loop() {
		buf = Append(buf[:0], m)
	}
}

func FuzzDecodeCommand(f *testing.F) {
	c := sampleCommand()
	f.Add(AppendCommand(nil, &c))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, ok := decodetest.Accepted(t, b, DecodeCommand, ErrInvalid)
		if !ok {
			return
		}
		if re := AppendCommand(nil, &c); !bytes.Equal(re, b) {
			t.Fatalf("command re-encodes differently")
		}
	})
}
