package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ingest-io/ingest/internal/varint"
)

// encoder writes the fields of a body in order, or, when sizing, only
// counts the bytes it would write: every message, command and record
// states its fields once, and its encoders run them twice, to grow their
// output once. It passes by value (encode takes one and returns it), so
// that encoding allocates nothing but the output.
type encoder struct {
	b      []byte
	n      int
	sizing bool
}

// appendSized appends what fields writes to dst, growing dst once.
func appendSized(dst []byte, fields func(encoder) encoder) []byte {
	n := fields(encoder{sizing: true}).n
	return fields(encoder{b: slices.Grow(dst, n)}).b
}

func (e *encoder) byte(v byte) {
	if e.sizing {
		e.n++
		return
	}
	e.b = append(e.b, v)
}

func (e *encoder) bool(v bool) {
	if v {
		e.byte(1)
	} else {
		e.byte(0)
	}
}

func (e *encoder) uvarint(v uint64) {
	if e.sizing {
		e.n += varint.Len(v)
		return
	}
	e.b = binary.AppendUvarint(e.b, v)
}

// millis writes d in whole milliseconds.
func (e *encoder) millis(d time.Duration) { e.uvarint(uint64(d / time.Millisecond)) }

// raw writes b as it is, with no length: the rest of a record.
func (e *encoder) raw(b []byte) {
	if e.sizing {
		e.n += len(b)
		return
	}
	e.b = append(e.b, b...)
}

func (e *encoder) bytes(b []byte) {
	e.uvarint(uint64(len(b)))
	e.raw(b)
}

func (e *encoder) string(s string) {
	e.uvarint(uint64(len(s)))
	if e.sizing {
		e.n += len(s)
		return
	}
	e.b = append(e.b, s...)
}

func (e *encoder) list(items [][]byte) {
	e.uvarint(uint64(len(items)))
	for _, it := range items {
		e.bytes(it)
	}
}

// decoder reads the fields of a body strictly. The first error sticks:
// every read after it returns the zero value, so that a decodeBody reads
// all its fields and looks at err once, at the end.
type decoder struct {
	b   []byte
	err error
}

var (
	errShort      = errors.New("body ends early")
	errNonMinimal = errors.New("non-minimal varint")
)

// fail records err unless an earlier error is recorded, and stops reading.
func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *decoder) failf(format string, args ...any) {
	if d.err == nil {
		d.fail(fmt.Errorf(format, args...))
	}
}

// check fails with msg unless ok.
func (d *decoder) check(ok bool, msg string) {
	if !ok && d.err == nil {
		d.fail(errors.New(msg))
	}
}

// end fails if bytes are left.
func (d *decoder) end() {
	if len(d.b) != 0 {
		d.failf("%d trailing bytes", len(d.b))
	}
}

func (d *decoder) byte() byte {
	if len(d.b) == 0 {
		d.fail(errShort)
		return 0
	}
	b := d.b[0]
	d.b = d.b[1:]
	return b
}

func (d *decoder) bool() bool {
	b := d.byte()
	if b > 1 {
		d.failf("boolean %d", b)
	}
	return b == 1
}

// version reads the version byte of what, which must be want.
func (d *decoder) version(what string, want byte) {
	if v := d.byte(); v != want {
		d.failf("%s version %d", what, v)
	}
}

// op reads an operation byte of what, from lo to hi.
func (d *decoder) op(what string, lo, hi uint8) uint8 {
	op := d.byte()
	if op < lo || op > hi {
		d.failf("%s op %d", what, op)
	}
	return op
}

// state reads a command state from lo to StateCancelled.
func (d *decoder) state(lo CommandState) CommandState {
	s := CommandState(d.byte())
	if s < lo || s > StateCancelled {
		d.failf("state %d", uint8(s))
	}
	return s
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	switch {
	case n <= 0:
		d.fail(errShort)
		return 0
	case n != varint.Len(v):
		d.fail(errNonMinimal)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// int64 reads a uvarint that must fit an int64: a time or a start.
func (d *decoder) int64() int64 {
	v := d.uvarint()
	if v > 1<<63-1 {
		d.fail(errors.New("integer out of range"))
		return 0
	}
	return int64(v)
}

// millis reads a duration of what in whole milliseconds, from lo to hi.
func (d *decoder) millis(what string, lo, hi time.Duration) time.Duration {
	ms := d.uvarint()
	if ms < uint64(lo/time.Millisecond) || ms > uint64(hi/time.Millisecond) {
		d.failf("%s %d ms", what, ms)
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

// count reads the length of a list whose every item takes at least
// minItem bytes.
func (d *decoder) count(minItem int) int {
	n := d.uvarint()
	if n > uint64(len(d.b)/minItem) {
		d.fail(errShort)
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail(errShort)
		return nil
	}
	b := d.b[:n:n]
	d.b = d.b[n:]
	return b
}

func (d *decoder) name() string { return d.nameKnown("") }

// nameKnown is name, but known itself when the name is spelled as known
// is (no copy).
func (d *decoder) nameKnown(known string) string {
	b := d.bytes()
	if len(b) > MaxNameLen {
		d.failf("name of %d bytes", len(b))
		return ""
	}
	if string(b) == known {
		return known
	}
	return string(b)
}

func (d *decoder) nonEmptyName() string {
	s := d.name()
	if s == "" {
		d.check(false, "empty name")
	}
	return s
}

func (d *decoder) list() [][]byte {
	items := make([][]byte, d.count(1)) // every item takes at least its length byte
	for i := range items {
		items[i] = d.bytes()
	}
	return items
}
