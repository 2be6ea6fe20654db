package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/ingest-io/ingest/internal/varint"
)

// A codec runs the fields of a body one way: it sizes them (counting the
// bytes they take, so that the output grows once), writes them, or reads
// them back strictly. Every message, command and record states its fields
// once, in a method that takes a codec and hands it on, so that what is
// written and what is read cannot disagree. Each field method takes a
// pointer to the field: it reads the field when sizing or writing and
// sets it when reading, and what the format promises (a version, a range,
// a name's length) is checked when reading only.
//
// A message's fields take a codec and return it, by value, so that
// running them through the Message interface allocates nothing but the
// output; a record's and a command's, called directly, take a pointer.
// When reading, the first error sticks: every read after it sets
// the zero value, so that a body reads all its fields and its caller looks
// at err once, at the end.
type codec struct {
	b    []byte // written so far, or left to read
	n    int    // counted so far, when sizing
	mode mode
	err  error // the first error, when reading
}

type mode uint8

const (
	sizing mode = iota
	writing
	reading
)

var (
	errShort      = errors.New("body ends early")
	errNonMinimal = errors.New("non-minimal varint")
)

// fail records err unless an earlier error is recorded, and stops reading.
func (c *codec) fail(err error) {
	if c.err == nil {
		c.err = err
	}
	c.b = nil
}

func (c *codec) failf(format string, args ...any) {
	if c.err == nil {
		c.fail(fmt.Errorf(format, args...))
	}
}

// check fails with msg unless ok, when reading.
func (c *codec) check(ok bool, msg string) {
	if !ok && c.mode == reading && c.err == nil {
		c.fail(errors.New(msg))
	}
}

// end fails if bytes are left.
func (c *codec) end() {
	if len(c.b) != 0 {
		c.failf("%d trailing bytes", len(c.b))
	}
}

// put writes or sizes b.
func (c *codec) put(b []byte) {
	if c.mode == sizing {
		c.n += len(b)
		return
	}
	c.b = append(c.b, b...)
}

// take reads n bytes, or fails short.
func (c *codec) take(n uint64) []byte {
	if n > uint64(len(c.b)) {
		c.fail(errShort)
		return nil
	}
	b := c.b[:n:n]
	c.b = c.b[n:]
	return b
}

func (c *codec) byte(p *byte) {
	switch {
	case c.mode == sizing:
		c.n++
	case c.mode == writing:
		c.b = append(c.b, *p)
	case len(c.b) == 0:
		c.fail(errShort)
		*p = 0
	default:
		*p = c.b[0]
		c.b = c.b[1:]
	}
}

func (c *codec) bool(p *bool) {
	b := byte(0)
	if *p {
		b = 1
	}
	c.byte(&b)
	if c.mode == reading {
		if b > 1 {
			c.failf("boolean %d", b)
		}
		*p = b == 1
	}
}

// version writes v, the version of what, or reads it and fails unless it
// is v. A version above v fails with ErrVersion: a newer engine wrote it.
// One below is no newer engine's (every format read so is at its first
// version): damage, failed as any other, so that a storage writer, which
// waits at a record of a newer format, skips it.
func (c *codec) version(what string, v byte) {
	got := v
	c.byte(&got)
	switch {
	case got == v || c.err != nil:
	case got > v:
		c.fail(fmt.Errorf("%w: %s version %d", ErrVersion, what, got))
	default:
		c.failf("%s version %d", what, got)
	}
}

// op is an operation byte of what, from lo to hi.
func (c *codec) op(p *uint8, what string, lo, hi uint8) {
	if c.byte(p); c.mode == reading && (*p < lo || *p > hi) {
		c.failf("%s op %d", what, *p)
	}
}

// state is a command state from lo to StateCancelled.
func (c *codec) state(p *CommandState, lo CommandState) {
	if c.byte((*byte)(p)); c.mode == reading && (*p < lo || *p > StateCancelled) {
		c.failf("state %d", uint8(*p))
	}
}

func (c *codec) uvarint(p *uint64) {
	if c.mode == reading {
		*p = c.readUvarint()
		return
	}
	c.putUvarint(*p)
}

// putUvarint writes or sizes v.
func (c *codec) putUvarint(v uint64) {
	if c.mode == sizing {
		c.n += varint.Len(v)
		return
	}
	c.b = binary.AppendUvarint(c.b, v)
}

func (c *codec) readUvarint() uint64 {
	v, n := binary.Uvarint(c.b)
	switch {
	case n <= 0:
		c.fail(errShort)
		return 0
	case n != varint.Len(v):
		c.fail(errNonMinimal)
		return 0
	}
	c.b = c.b[n:]
	return v
}

// int64 is a uvarint that must fit an int64: a time or a start.
func (c *codec) int64(p *int64) {
	if c.mode != reading {
		c.putUvarint(uint64(*p))
		return
	}
	v := c.readUvarint()
	if v > 1<<63-1 {
		c.fail(errors.New("integer out of range"))
		v = 0
	}
	*p = int64(v)
}

// millis is a duration of what in whole milliseconds, from lo to hi.
func (c *codec) millis(p *time.Duration, what string, lo, hi time.Duration) {
	if c.mode != reading {
		c.putUvarint(uint64(*p / time.Millisecond))
		return
	}
	ms := c.readUvarint()
	if ms < uint64(lo/time.Millisecond) || ms > uint64(hi/time.Millisecond) {
		c.failf("%s %d ms", what, ms)
		ms = 0
	}
	*p = time.Duration(ms) * time.Millisecond
}

// count is the length n of a list whose every item takes at least minItem
// bytes; reading, it is refused if the body is too short to hold them.
func (c *codec) count(n *int, minItem int) {
	if c.mode != reading {
		c.putUvarint(uint64(*n))
		return
	}
	v := c.readUvarint()
	if v > uint64(len(c.b)/minItem) {
		c.fail(errShort)
		v = 0
	}
	*n = int(v)
}

// rest is the rest of the body, with no length.
func (c *codec) rest(p *[]byte) {
	if c.mode != reading {
		c.put(*p)
		return
	}
	*p, c.b = c.b, nil
}

func (c *codec) bytes(p *[]byte) {
	if c.mode != reading {
		c.putUvarint(uint64(len(*p)))
		c.put(*p)
		return
	}
	*p = c.take(c.readUvarint())
}

func (c *codec) name(p *string) { c.nameKnown(p, "") }

// nameKnown is name, but when reading it sets known itself, not a copy,
// when the name is spelled as known is.
func (c *codec) nameKnown(p *string, known string) {
	if c.mode != reading {
		c.putUvarint(uint64(len(*p)))
		if c.mode == sizing {
			c.n += len(*p)
		} else {
			c.b = append(c.b, *p...)
		}
		return
	}
	b := c.take(c.readUvarint())
	switch {
	case len(b) > MaxNameLen:
		c.failf("name of %d bytes", len(b))
		*p = ""
	case string(b) == known:
		*p = known
	default:
		*p = string(b)
	}
}

func (c *codec) nonEmptyName(p *string) {
	c.name(p)
	c.check(*p != "", "empty name")
}

func (c *codec) list(p *[][]byte) {
	n := len(*p)
	c.count(&n, 1) // every item takes at least its length byte
	if c.mode == reading {
		*p = make([][]byte, n)
	}
	for i := range *p {
		c.bytes(&(*p)[i])
	}
}
