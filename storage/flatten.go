package storage

import (
	"hash/maphash"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/ingest-io/ingest/protocol"
)

// flattenOnePass is Flatten's fast path: one scan of the payload, no
// intermediate map of values, each field's name built in one buffer. It
// takes the messages devices send (objects of numbers, strings, booleans,
// nested objects and arrays, names and strings without escapes) and reports
// false for anything where it could differ from decoding into a map: a
// syntax error, an escape, text that is not UTF-8, a member named twice in
// one object, two paths that flatten to one name, deep nesting. Flatten
// then decodes the payload the general way; FuzzFlattenOnePass holds the
// two to the same points.
func flattenOnePass(payload []byte, p *Point) bool {
	buf := nameBufs.Get().(*[]byte)
	f := flattener{b: payload, p: p, name: (*buf)[:0]}
	defer func() {
		if cap(f.name) <= maxPooledName {
			*buf = f.name[:0]
			nameBufs.Put(buf)
		}
	}()
	f.ws()
	if f.i >= len(f.b) || f.b[f.i] != '{' {
		return false
	}
	resetFields(p, 8, 2)
	if !f.object(0) {
		return false
	}
	f.ws()
	return f.i == len(f.b)
}

// nameBufs hold the buffers the one-pass path builds names in: one on
// its stack would move to the heap, for the recursive scan stores into it
// through a pointer. A buffer grown past maxPooledName is let go.
var nameBufs = sync.Pool{New: func() any { b := make([]byte, 0, 64); return &b }}

const maxPooledName = 1024

// fieldNames interns the names the one-pass path gives fields: the
// messages of a fleet name the same fields over and over, and a name found
// here is not allocated again. A direct-mapped table of fixed size (a name
// takes the place of the one in its slot), for names up to
// maxInternedName bytes: at most about 360 KiB whatever the devices send.
// Safe for concurrent use; it changes no point, only which copy of a name
// a point's map holds.
var (
	fieldNames     [4096]atomic.Pointer[string]
	fieldNamesSeed = maphash.MakeSeed()
)

const maxInternedName = 64

func fieldName(b []byte) string {
	if len(b) > maxInternedName {
		return string(b)
	}
	slot := &fieldNames[maphash.Bytes(fieldNamesSeed, b)&uint64(len(fieldNames)-1)]
	if s := slot.Load(); s != nil && *s == string(b) {
		return *s
	}
	s := string(b)
	slot.Store(&s)
	return s
}

// maxOnePassDepth and maxOnePassMembers bound what the one-pass path takes:
// deeper payloads, and objects with more members (whose repeats it checks
// pair by pair), go the general way.
const (
	maxOnePassDepth   = 32
	maxOnePassMembers = 64
)

type flattener struct {
	b    []byte
	i    int
	name []byte // the path of the value being scanned: "gps.lat"
	p    *Point
	// discard: the value being scanned is not recorded (a reserved member).
	discard bool
}

func (f *flattener) ws() {
	for f.i < len(f.b) {
		switch f.b[f.i] {
		case ' ', '\t', '\n', '\r':
			f.i++
		default:
			return
		}
	}
}

// object scans an object at f.i ('{'); the path of its members is f.name.
func (f *flattener) object(depth int) bool {
	if depth > maxOnePassDepth {
		return false
	}
	f.i++ // '{'
	var keys [maxOnePassMembers][2]int32
	n := 0
	base := len(f.name)
	f.ws()
	if f.i < len(f.b) && f.b[f.i] == '}' {
		f.i++
		return true
	}
	for {
		if f.i >= len(f.b) || f.b[f.i] != '"' {
			return false
		}
		ka, kb, ok := f.str()
		if !ok || n == maxOnePassMembers {
			return false
		}
		key := f.b[ka:kb]
		for _, k := range keys[:n] {
			if string(f.b[k[0]:k[1]]) == string(key) {
				return false
			}
		}
		keys[n] = [2]int32{int32(ka), int32(kb)}
		n++
		f.ws()
		if f.i >= len(f.b) || f.b[f.i] != ':' {
			return false
		}
		f.i++
		f.ws()
		if depth == 0 && protocol.Reserved(string(key)) {
			if !f.skip(depth) {
				return false
			}
		} else {
			if depth > 0 {
				f.name = append(f.name, '.')
			}
			f.name = append(f.name, key...)
			if !f.value(depth) {
				return false
			}
			f.name = f.name[:base]
		}
		if more, ok := f.next('}'); !more {
			return ok
		}
	}
}

// array scans an array at f.i ('['); its elements are named f.name.0,
// f.name.1...
func (f *flattener) array(depth int) bool {
	if depth > maxOnePassDepth {
		return false
	}
	f.i++ // '['
	base := len(f.name)
	f.ws()
	if f.i < len(f.b) && f.b[f.i] == ']' {
		f.i++
		return true
	}
	for n := 0; ; n++ {
		f.name = strconv.AppendInt(append(f.name, '.'), int64(n), 10)
		if !f.value(depth) {
			return false
		}
		f.name = f.name[:base]
		if more, ok := f.next(']'); !more {
			return ok
		}
	}
}

// next scans what follows a member or an element: a ',' and the space
// after it (more) or close, which ends the object or array (!more, ok);
// anything else is !ok.
func (f *flattener) next(close byte) (more, ok bool) {
	f.ws()
	if f.i >= len(f.b) {
		return false, false
	}
	switch f.b[f.i] {
	case ',':
		f.i++
		f.ws()
		return true, true
	case close:
		f.i++
		return false, true
	}
	return false, false
}

// value scans the value at f.i, a member or element of depth depth, and
// records its leaves under f.name.
func (f *flattener) value(depth int) bool {
	if f.i >= len(f.b) {
		return false
	}
	switch c := f.b[f.i]; {
	case c == '{':
		return f.object(depth + 1)
	case c == '[':
		return f.array(depth + 1)
	case c == '"':
		a, b, ok := f.str()
		if !ok || f.discard {
			return ok
		}
		if f.taken() {
			return false
		}
		f.p.Strings[fieldName(f.name)] = string(f.b[a:b])
		return true
	case c == 't', c == 'f':
		v := 0.0
		if c == 't' {
			if !f.literal("true") {
				return false
			}
			v = 1
		} else if !f.literal("false") {
			return false
		}
		return f.number(v)
	case c == 'n':
		return f.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		a := f.i
		if !f.scanNumber() {
			return false
		}
		v, err := strconv.ParseFloat(string(f.b[a:f.i]), 64)
		if err != nil { // beyond float64: left out, as Flatten does
			return true
		}
		return f.number(v)
	}
	return false
}

// number records v under f.name.
func (f *flattener) number(v float64) bool {
	if f.discard {
		return true
	}
	if f.taken() {
		return false
	}
	f.p.Numbers[fieldName(f.name)] = v
	return true
}

// taken reports whether another path has already given a value the name
// f.name (Flatten's general way decides which one wins).
func (f *flattener) taken() bool {
	if _, ok := f.p.Numbers[string(f.name)]; ok {
		return true
	}
	_, ok := f.p.Strings[string(f.name)]
	return ok
}

// skip scans a value at f.i without recording it.
func (f *flattener) skip(depth int) bool {
	f.discard = true
	ok := f.value(depth)
	f.discard = false
	return ok
}

// str scans a string at f.i ('"') and returns where its text starts and
// ends; false for an escape, a control character or text that is not
// UTF-8.
func (f *flattener) str() (a, b int, ok bool) {
	f.i++
	a = f.i
	ascii := true
	for ; f.i < len(f.b); f.i++ {
		switch c := f.b[f.i]; {
		case c == '"':
			b = f.i
			f.i++
			return a, b, ascii || utf8.Valid(f.b[a:b])
		case c == '\\' || c < 0x20:
			return 0, 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return 0, 0, false
}

func (f *flattener) literal(lit string) bool {
	if len(f.b)-f.i < len(lit) || string(f.b[f.i:f.i+len(lit)]) != lit {
		return false
	}
	f.i += len(lit)
	return true
}

// scanNumber scans a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (f *flattener) scanNumber() bool {
	if f.b[f.i] == '-' {
		f.i++
	}
	switch {
	case f.i < len(f.b) && f.b[f.i] == '0':
		f.i++
	case f.digits() == 0:
		return false
	}
	if f.i < len(f.b) && f.b[f.i] == '.' {
		f.i++
		if f.digits() == 0 {
			return false
		}
	}
	if f.i < len(f.b) && (f.b[f.i] == 'e' || f.b[f.i] == 'E') {
		f.i++
		if f.i < len(f.b) && (f.b[f.i] == '+' || f.b[f.i] == '-') {
			f.i++
		}
		if f.digits() == 0 {
			return false
		}
	}
	return true
}

func (f *flattener) digits() int {
	a := f.i
	for f.i < len(f.b) && f.b[f.i] >= '0' && f.b[f.i] <= '9' {
		f.i++
	}
	return f.i - a
}
