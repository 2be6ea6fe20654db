package protocol

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Message is one device message found in a frame by ParseFrame. Its slices
// alias the frame.
type Message struct {
	Raw    []byte // the JSON object exactly as sent, without surrounding whitespace
	ID     []byte // raw JSON token of "id" (a string with quotes, or a number); nil if absent
	Device []byte // raw JSON string token of "device"; nil if absent
	TS     []byte // raw JSON token of "ts"; nil if absent
	Time   int64  // "ts" in unix nanoseconds, once Check has accepted it
	Index  int    // position in a batch, -1 for a single-object frame
	Code   string // non-empty: rejected with this error code
	Reason string // why it was rejected: the error frame's message
	Rule   string // with CodeTooManyFields or CodeInvalidField: the field rule broken
}

// reject marks m rejected, unless it already is: the first reason stands.
func (m *Message) reject(code, rule, reason string) {
	if m.Code == "" {
		m.Code, m.Rule, m.Reason = code, rule, reason
	}
}

// Limits bound a device frame and the fields of each message in it.
//
// A field is what a store makes a series of: every number, boolean and
// string of a message, nested ones included, named by its path flattened
// with dots ("gps.lat", "cells.0.rssi"). Nulls, empty objects and arrays,
// and the top-level members id, ts and device are not fields.
//
// Besides these bounds, every member name of a message, at any depth, must
// be non-empty valid Unicode without control characters (U+0000–U+001F,
// U+007F–U+009F), and a top-level one must not begin with "__" (a
// time-series store reserves such names); a string value must be valid
// Unicode without U+0000. Escapes are decoded before any of this is
// checked, so "\u0000" is U+0000 and a lone "\ud800" is invalid.
//
// A zero (or negative) field means its default.
type Limits struct {
	// MaxMessages bounds the messages of a batch frame; a larger batch is
	// rejected whole with CodeTooLarge. Default DefaultMaxMessages (500).
	MaxMessages int
	// MaxMessageBytes bounds one message as written; a larger one is
	// rejected with CodeTooLarge. Default DefaultMaxMessageBytes (64 KiB).
	MaxMessageBytes int
	// MaxFields bounds the fields of one message; a message with more is
	// rejected with CodeTooManyFields. Default DefaultMaxFields (1,000).
	MaxFields int
	// MaxNameBytes bounds a field's flattened name in bytes of UTF-8
	// (CodeInvalidField, RuleNameTooLong). Default DefaultMaxNameBytes
	// (256).
	MaxNameBytes int
	// MaxStringBytes bounds a string value in bytes of UTF-8, escapes
	// decoded (CodeInvalidField, RuleStringTooLong). Default
	// DefaultMaxStringBytes (1,024).
	MaxStringBytes int
}

// DefaultLimits returns the defaults that zero fields stand for.
func DefaultLimits() Limits {
	return Limits{
		MaxMessages:     DefaultMaxMessages,
		MaxMessageBytes: DefaultMaxMessageBytes,
		MaxFields:       DefaultMaxFields,
		MaxNameBytes:    DefaultMaxNameBytes,
		MaxStringBytes:  DefaultMaxStringBytes,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	for _, f := range [...]struct {
		v *int
		d int
	}{{&l.MaxMessages, d.MaxMessages}, {&l.MaxMessageBytes, d.MaxMessageBytes},
		{&l.MaxFields, d.MaxFields}, {&l.MaxNameBytes, d.MaxNameBytes}, {&l.MaxStringBytes, d.MaxStringBytes}} {
		if *f.v <= 0 {
			*f.v = f.d
		}
	}
	return l
}

// FrameError rejects a whole frame: it is answered with one error frame
// without an index, and none of its messages is stored.
type FrameError struct {
	Code   string
	Reason string
}

func (e *FrameError) Error() string { return e.Code + ": " + e.Reason }

// scanner walks JSON strictly (RFC 8259 syntax, valid UTF-8, nesting at
// most MaxDepth), and inside a message checks its fields against lim. It
// never allocates on the accepting path.
type scanner struct {
	b     []byte
	i     int
	depth int
	err   string

	lim    Limits
	m      Message // the message being scanned, filled by object(true, …)
	fields int     // fields of m so far
	keyAt  int     // where the last member name of m starts in b, as written, for reasons
	keyEnd int     // and where it ends
	ctl    bool    // str saw a raw U+007F–U+009F: set by str, cleared by its caller
}

// ParseFrame is Limits{MaxMessages: maxMessages, MaxMessageBytes:
// maxMessageBytes}.ParseFrame: the given frame bounds and the default
// field limits.
func ParseFrame(frame []byte, msgs []Message, maxMessages, maxMessageBytes int) ([]Message, *FrameError) {
	return Limits{MaxMessages: maxMessages, MaxMessageBytes: maxMessageBytes}.ParseFrame(frame, msgs)
}

// ParseFrame appends the messages of a device frame to msgs. A frame is one
// JSON object or an array of JSON values; array elements that are not
// objects become messages rejected with CodeInvalidMessage. l bounds the
// batch size, the size of each message and its fields.
//
// Every message gets its members "id", "ts" and "device" recorded; a member
// of the wrong type, a repeated one or an "id" over MaxMessageIDBytes
// rejects the message (Code and Reason set), and so does a field that
// breaks l (Code CodeTooManyFields or CodeInvalidField, Rule set; its "id"
// is still recorded for the error frame). A frame that is not strict JSON,
// or holds more than l.MaxMessages, is rejected whole: the FrameError says
// why, and msgs is returned as it was given. Check validates what depends
// on the connection and the clock.
//
// It never allocates on the accepting path once msgs has capacity.
func (l Limits) ParseFrame(frame []byte, msgs []Message) ([]Message, *FrameError) {
	l = l.withDefaults()
	maxMessages, maxMessageBytes := l.MaxMessages, l.MaxMessageBytes
	d := scanner{b: frame, lim: l}
	d.ws()
	if d.i >= len(d.b) {
		return msgs, &FrameError{CodeInvalidJSON, "empty frame"}
	}
	switch d.b[d.i] {
	case '{':
		d.m = Message{Index: -1}
		if !d.object(true, 0) {
			return msgs, d.syntaxError()
		}
		m := d.m
		d.ws()
		if d.i != len(d.b) {
			return msgs, &FrameError{CodeInvalidJSON, "unexpected data after the top-level value at byte " + strconv.Itoa(d.i)}
		}
		checkSize(&m, maxMessageBytes)
		return append(msgs, m), nil
	case '[':
		d.i++
		d.depth++
		start := len(msgs)
		d.ws()
		if d.i < len(d.b) && d.b[d.i] == ']' {
			d.i++
		} else {
			for {
				d.ws()
				if d.i >= len(d.b) {
					return msgs[:start], d.syntaxError()
				}
				if len(msgs)-start == maxMessages {
					return msgs[:start], &FrameError{CodeTooLarge, "batch holds more than " + strconv.Itoa(maxMessages) + " messages"}
				}
				m := Message{Index: len(msgs) - start}
				if d.b[d.i] == '{' {
					d.m = m
					if !d.object(true, 0) {
						return msgs[:start], d.syntaxError()
					}
					m = d.m
					checkSize(&m, maxMessageBytes)
				} else {
					s := d.i
					if !d.value(-1) {
						return msgs[:start], d.syntaxError()
					}
					m.Raw = d.b[s:d.i]
					m.Code, m.Reason = CodeInvalidMessage, "batch element is not a JSON object"
				}
				msgs = append(msgs, m)
				d.ws()
				if d.i >= len(d.b) {
					return msgs[:start], d.syntaxError()
				}
				if d.b[d.i] == ',' {
					d.i++
					continue
				}
				if d.b[d.i] == ']' {
					d.i++
					break
				}
				d.err = "expected ',' or ']'"
				return msgs[:start], d.syntaxError()
			}
		}
		d.ws()
		if d.i != len(d.b) {
			return msgs[:start], &FrameError{CodeInvalidJSON, "unexpected data after the top-level value at byte " + strconv.Itoa(d.i)}
		}
		return msgs, nil
	default:
		if !d.value(-1) {
			return msgs, d.syntaxError()
		}
		d.ws()
		if d.i != len(d.b) {
			return msgs, &FrameError{CodeInvalidJSON, "unexpected data after the top-level value at byte " + strconv.Itoa(d.i)}
		}
		return msgs, &FrameError{CodeInvalidMessage, "a frame must hold a JSON object or an array of objects"}
	}
}

func checkSize(m *Message, max int) {
	if m.Code == "" && len(m.Raw) > max {
		m.Code, m.Reason = CodeTooLarge, "message is "+strconv.Itoa(len(m.Raw))+" bytes, the limit is "+strconv.Itoa(max)
	}
}

func (d *scanner) syntaxError() *FrameError {
	why := d.err
	if why == "" {
		why = "syntax error"
	}
	if d.i >= len(d.b) {
		return &FrameError{CodeInvalidJSON, why + " at end of frame"}
	}
	return &FrameError{CodeInvalidJSON, why + " at byte " + strconv.Itoa(d.i)}
}

func (d *scanner) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// object parses an object at d.i. When top, it is the message d.m: its raw
// bytes and its top-level "id", "ts" and "device" members are recorded, a
// member of the wrong type or a repeated one marks the message rejected,
// and every other member is a field whose name and value are checked
// against d.lim. Otherwise, path >= 0: the object is inside a field of d.m
// whose flattened name is path bytes long; path < 0: it is not in a
// message's fields, or nothing more is to be checked.
//
// The message is kept in the scanner, not behind a pointer, so that it
// stays on the caller's stack.
func (d *scanner) object(top bool, path int) bool {
	start := d.i
	d.i++ // '{'
	d.depth++
	if d.depth > MaxDepth {
		d.err = "nesting deeper than " + strconv.Itoa(MaxDepth)
		return false
	}
	m := &d.m
	if top {
		d.fields = 0
	}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		d.depth--
		if top {
			m.Raw = d.b[start:d.i]
		}
		return true
	}
	for {
		d.ws()
		if d.i >= len(d.b) || d.b[d.i] != '"' {
			d.err = "expected a member name"
			return false
		}
		ks := d.i
		d.ctl = false
		esc, ok := d.str()
		if !ok {
			return false
		}
		tok := d.b[ks:d.i]
		key := tok[1 : len(tok)-1]
		d.ws()
		if d.i >= len(d.b) || d.b[d.i] != ':' {
			d.err = "expected ':'"
			return false
		}
		d.i++
		d.ws()
		child, reserved := -1, false
		if top {
			// A member name with escapes is compared by its meaning, so
			// "\u0069d" cannot smuggle a second "id" past this decoder.
			name := key
			if esc {
				if u, ok := unescape(tok); ok {
					name = u
				}
			}
			switch string(name) {
			case MemberID, MemberTS, MemberDevice:
				reserved = true
				vs := d.i
				if !d.value(-1) {
					return false
				}
				d.member(m, name, d.b[vs:d.i])
			default:
				if m.Code == "" && len(name) >= 2 && name[0] == '_' && name[1] == '_' {
					m.reject(CodeInvalidField, RuleNameReserved, "member "+shown(key)+" is reserved: a top-level member name must not begin with \"__\"")
				}
				child = d.name(ks+1, key, esc, -1)
			}
		} else if path >= 0 {
			child = d.name(ks+1, key, esc, path)
		}
		if !reserved && !d.value(child) {
			return false
		}
		more, ok := d.next('}')
		if more {
			continue
		}
		if ok && top {
			m.Raw = d.b[start:d.i]
		}
		return ok
	}
}

// member records a top-level "id", "ts" or "device" of m. After a field
// rule rejected m they are still recorded (the error frame names the id),
// but nothing about them changes the rejection.
func (d *scanner) member(m *Message, key []byte, v []byte) {
	var slot *[]byte
	switch string(key) {
	case MemberID:
		slot = &m.ID
	case MemberTS:
		slot = &m.TS
	case MemberDevice:
		slot = &m.Device
	default:
		return
	}
	if m.Code != "" && m.Rule == "" {
		return
	}
	if *slot != nil {
		m.reject(CodeInvalidMessage, "", "member \""+string(key)+"\" appears twice")
		return
	}
	*slot = v
	switch string(key) {
	case MemberID:
		if v[0] != '"' && v[0] != '-' && (v[0] < '0' || v[0] > '9') {
			m.ID = nil
			m.reject(CodeInvalidMessage, "", "\"id\" must be a string or a number")
		} else if len(v) > MaxMessageIDBytes {
			m.ID = nil
			m.reject(CodeInvalidMessage, "", "\"id\" is longer than "+strconv.Itoa(MaxMessageIDBytes)+" bytes")
		}
	case MemberDevice:
		if v[0] != '"' {
			m.reject(CodeInvalidMessage, "", "\"device\" must be a string")
		}
	}
}

// name checks a member name of d.m, as written (key, at offset at of d.b,
// with escapes if esc; str has just set d.ctl for it) that extends a
// field's flattened name of path bytes (path < 0: the member is at the
// top). It returns the flattened name's length, or -1 once d.m is
// rejected: nothing more is checked then.
func (d *scanner) name(at int, key []byte, esc bool, path int) int {
	m := &d.m
	if m.Code != "" {
		return -1
	}
	n, ok := len(key), true
	if esc || d.ctl {
		n, ok = textLen(key, esc, true)
	}
	if !ok || n == 0 {
		m.reject(CodeInvalidField, RuleNameInvalid, "member name "+shown(key)+" is empty, not valid Unicode, or holds a control character")
		return -1
	}
	if path >= 0 {
		n += path + 1 // path "." name
	}
	if n > d.lim.MaxNameBytes {
		m.reject(CodeInvalidField, RuleNameTooLong, "field name at member "+shown(key)+" is longer than "+strconv.Itoa(d.lim.MaxNameBytes)+" bytes once flattened")
		return -1
	}
	d.keyAt, d.keyEnd = at, at+len(key)
	return n
}

// key is the last member name of d.m, as written.
func (d *scanner) key() []byte { return d.b[d.keyAt:d.keyEnd] }

// field counts a field of d.m (a number, boolean or string). Small
// enough to be inlined: it runs for every value of a message.
func (d *scanner) field() {
	if d.fields++; d.fields > d.lim.MaxFields {
		d.tooManyFields()
	}
}

func (d *scanner) tooManyFields() {
	d.m.reject(CodeTooManyFields, RuleTooManyFields, "message has more than "+strconv.Itoa(d.lim.MaxFields)+" fields (numbers, booleans and strings, nested ones included)")
}

// stringField counts and checks a string field of d.m, as written (raw,
// with escapes if esc).
func (d *scanner) stringField(raw []byte, esc bool) {
	d.field()
	if !esc && len(raw) <= d.lim.MaxStringBytes {
		return
	}
	d.checkString(raw, esc)
}

func (d *scanner) checkString(raw []byte, esc bool) {
	m := &d.m
	if m.Code != "" {
		return
	}
	n, ok := len(raw), true
	if esc {
		n, ok = textLen(raw, true, false)
	}
	switch {
	case !ok:
		m.reject(CodeInvalidField, RuleStringInvalid, "string value of "+shown(d.key())+" holds U+0000 or invalid Unicode")
	case n > d.lim.MaxStringBytes:
		m.reject(CodeInvalidField, RuleStringTooLong, "string value of "+shown(d.key())+" is "+strconv.Itoa(n)+" bytes, the limit is "+strconv.Itoa(d.lim.MaxStringBytes))
	}
}

// textLen returns the length in bytes of UTF-8 of a JSON string's content
// as written (raw, with escapes if esc), once decoded, and whether it is
// acceptable: valid Unicode (no lone surrogate escape) without U+0000,
// and, for a name, without any control character (U+0000–U+001F,
// U+007F–U+009F). raw has passed the scanner, so it is valid UTF-8 without
// raw C0 controls and its escapes are well formed.
func textLen(raw []byte, esc, name bool) (int, bool) {
	if !esc && !name {
		return len(raw), true
	}
	n := 0
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			// U+007F is 0x7f; U+0080–U+009F are 0xc2 0x80–0x9f.
			if name && (c == 0x7f || c == 0xc2 && raw[i+1] < 0xa0) {
				return n, false
			}
			n++
			i++
			continue
		}
		if e := raw[i+1]; e != 'u' {
			// \" \\ \/ are themselves; \b \f \n \r \t are control characters.
			if name && e != '"' && e != '\\' && e != '/' {
				return n, false
			}
			n++
			i += 2
			continue
		}
		r := hex4(raw[i+2:])
		i += 6
		if utf16.IsSurrogate(r) {
			if r < 0xdc00 && i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
				if r2 := hex4(raw[i+2:]); r2 >= 0xdc00 && r2 < 0xe000 {
					n += 4
					i += 6
					continue
				}
			}
			return n, false
		}
		if r == 0 || name && (r < 0x20 || r >= 0x7f && r < 0xa0) {
			return n, false
		}
		n += utf8.RuneLen(r)
	}
	return n, true
}

// hex4 decodes the four hex digits at the start of b.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// shown quotes a member name as written for a reason, cut to 64 bytes.
func shown(key []byte) string {
	const max = 64
	if len(key) <= max {
		return "\"" + string(key) + "\""
	}
	n := max
	for n > 0 && !utf8.RuneStart(key[n]) {
		n--
	}
	return "\"" + string(key[:n]) + "…\""
}

// str parses a string at d.i and reports whether it held escapes. It sets
// d.ctl when the string holds a raw U+007F–U+009F, which only a member name
// must not.
func (d *scanner) str() (escaped, ok bool) {
	d.i++ // '"'
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			d.i++
			return escaped, true
		case c == '\\':
			escaped = true
			d.i++
			if d.i >= len(d.b) {
				d.err = "unterminated string"
				return escaped, false
			}
			switch d.b[d.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				d.i++
			case 'u':
				if d.i+4 >= len(d.b) {
					d.err = "truncated \\u escape"
					return escaped, false
				}
				for _, h := range d.b[d.i+1 : d.i+5] {
					if !isHex(h) {
						d.err = "bad \\u escape"
						return escaped, false
					}
				}
				d.i += 5
			default:
				d.err = "bad escape"
				return escaped, false
			}
		case c < 0x20:
			d.err = "control character in string"
			return escaped, false
		case c < 0x7f:
			d.i++
		case c == 0x7f:
			d.ctl = true
			d.i++
		default:
			r, n := utf8.DecodeRune(d.b[d.i:])
			if r == utf8.RuneError && n <= 1 {
				d.err = "invalid UTF-8"
				return escaped, false
			}
			if r < 0xa0 {
				d.ctl = true
			}
			d.i += n
		}
	}
	d.err = "unterminated string"
	return escaped, false
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// value parses a value at d.i. path >= 0: the value is a field of d.m whose
// flattened name is path bytes long, or holds fields below it; path < 0:
// it is not in a message's fields, or nothing more is to be checked.
func (d *scanner) value(path int) bool {
	if d.i >= len(d.b) {
		d.err = "expected a value"
		return false
	}
	ok := false
	switch c := d.b[d.i]; {
	case c == '{':
		return d.object(false, path)
	case c == '[':
		return d.array(path)
	case c == '"':
		s := d.i
		var esc bool
		if esc, ok = d.str(); ok && path >= 0 {
			d.stringField(d.b[s+1:d.i-1], esc)
		}
		return ok
	case c == 't':
		ok = d.literal("true")
	case c == 'f':
		ok = d.literal("false")
	case c == 'n':
		return d.literal("null") // not a field
	case c == '-' || c >= '0' && c <= '9':
		ok = d.number()
	default:
		d.err = "expected a value"
		return false
	}
	if ok && path >= 0 {
		d.field()
	}
	return ok
}

// array parses an array at d.i; path as for value.
func (d *scanner) array(path int) bool {
	d.i++
	d.depth++
	if d.depth > MaxDepth {
		d.err = "nesting deeper than " + strconv.Itoa(MaxDepth)
		return false
	}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		d.depth--
		return true
	}
	for i := 0; ; i++ {
		d.ws()
		child := -1
		if path >= 0 && d.m.Code == "" {
			// The element's name is path "." i.
			if child = path + 1 + decimalLen(i); child > d.lim.MaxNameBytes {
				d.m.reject(CodeInvalidField, RuleNameTooLong, "field name at element "+strconv.Itoa(i)+" of "+shown(d.key())+" is longer than "+strconv.Itoa(d.lim.MaxNameBytes)+" bytes once flattened")
				child = -1
			}
		}
		if !d.value(child) {
			return false
		}
		if more, ok := d.next(']'); !more {
			return ok
		}
	}
}

// next scans what follows a member or an element: a ',' (more) or close,
// which ends the object or array (!more, ok); anything else, or the end
// of the frame, is an error (!ok).
func (d *scanner) next(close byte) (more, ok bool) {
	d.ws()
	if d.i >= len(d.b) {
		d.err = "unterminated array"
		if close == '}' {
			d.err = "unterminated object"
		}
		return false, false
	}
	switch d.b[d.i] {
	case ',':
		d.i++
		return true, true
	case close:
		d.i++
		d.depth--
		return false, true
	}
	d.err = "expected ',' or ']'"
	if close == '}' {
		d.err = "expected ',' or '}'"
	}
	return false, false
}

// decimalLen is the number of decimal digits of i >= 0.
func decimalLen(i int) int {
	n := 1
	for ; i >= 10; i /= 10 {
		n++
	}
	return n
}

func (d *scanner) literal(lit string) bool {
	if !bytes.HasPrefix(d.b[d.i:], []byte(lit)) {
		d.err = "invalid literal"
		return false
	}
	d.i += len(lit)
	return true
}

func (d *scanner) number() bool {
	b := d.b
	i := d.i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = d.digits(b, i)
	default:
		d.err = "invalid number"
		return false
	}
	if i < len(b) && b[i] == '.' {
		if i = d.digits(b, i+1); i < 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i = d.digits(b, i); i < 0 {
			return false
		}
	}
	d.i = i
	return true
}

// digits scans the one or more digits at b[i:] of an integer part, a
// fraction or an exponent and returns the index after them, or -1, with
// d.err set, when there are none.
func (d *scanner) digits(b []byte, i int) int {
	if i >= len(b) || b[i] < '0' || b[i] > '9' {
		d.err = "invalid number"
		return -1
	}
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// Check validates what ParseFrame cannot: that "device", when present, is
// the authenticated device id (else CodeDeviceMismatch), and that "ts",
// when present, is a time from MinDeviceTime to maxAhead past now (else
// CodeBadTimestamp). An accepted "ts" is left in Time. A message already
// rejected is left as it is.
//
// It allocates nothing for a "ts" number, nor for a "device" without
// escapes.
func (m *Message) Check(device string, now time.Time, maxAhead time.Duration) {
	if m.Code == "" && m.Device != nil && !sameDevice(m.Device, device) {
		m.Code, m.Reason = CodeDeviceMismatch, "\"device\" differs from the authenticated device id"
	}
	if m.Code == "" && m.TS != nil {
		if m.Time, m.Reason = parseTS(m.TS, now, maxAhead); m.Reason != "" {
			m.Code = CodeBadTimestamp
		}
	}
}

// sameDevice compares a raw JSON string token with the device id.
func sameDevice(tok []byte, device string) bool {
	inner := tok[1 : len(tok)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner) == device
	}
	var s string
	return json.Unmarshal(tok, &s) == nil && s == device
}

// parseTS interprets a raw "ts" token: milliseconds since the epoch as a JSON
// number (fractions allowed, down to nanoseconds) or an RFC 3339 string. It
// returns unix nanoseconds, or a reason for rejecting it.
func parseTS(v []byte, now time.Time, maxAhead time.Duration) (int64, string) {
	var ns int64
	switch {
	case v[0] == '"':
		var s string
		if json.Unmarshal(v, &s) != nil {
			return 0, "\"ts\" is not a valid string"
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return 0, "\"ts\" string is not RFC 3339"
		}
		ns = t.UnixNano()
		if t.Year() < 2000 || t.Year() > 2200 {
			return 0, "\"ts\" is out of range"
		}
	case v[0] == '-' || v[0] >= '0' && v[0] <= '9':
		var ok bool
		ns, ok = msToNanos(v)
		if !ok {
			return 0, "\"ts\" must be milliseconds since the epoch without an exponent"
		}
	default:
		return 0, "\"ts\" must be a number (ms since the epoch) or an RFC 3339 string"
	}
	if ns < MinDeviceTime {
		return 0, "\"ts\" is before 2000-01-01 (milliseconds expected)"
	}
	if ns > now.Add(maxAhead).UnixNano() {
		return 0, "\"ts\" is too far in the future"
	}
	return ns, ""
}

// msToNanos converts a validated JSON number of milliseconds to nanoseconds
// without allocating. Exponents and values beyond year ~2262 are refused.
func msToNanos(v []byte) (int64, bool) {
	i := 0
	if v[0] == '-' {
		return 0, false
	}
	var ms int64
	for ; i < len(v) && v[i] >= '0' && v[i] <= '9'; i++ {
		ms = ms*10 + int64(v[i]-'0')
		if ms > 9e12 { // year ~2255; also keeps ms*1e6 below 1<<63
			return 0, false
		}
	}
	ns := ms * 1e6
	if i < len(v) && v[i] == '.' {
		i++
		scale := int64(1e5)
		for ; i < len(v) && v[i] >= '0' && v[i] <= '9'; i++ {
			ns += int64(v[i]-'0') * scale
			scale /= 10
		}
	}
	return ns, i == len(v)
}
