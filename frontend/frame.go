package frontend

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// maxDepth bounds nesting inside a frame, so a hostile frame cannot make the
// decoder recurse without limit.
const maxDepth = 32

// maxClientIDBytes bounds a message's "id" as raw JSON (quotes included).
const maxClientIDBytes = 128

// message is one device message found in a frame. All slices alias the frame.
type message struct {
	raw    []byte // the JSON object exactly as sent
	id     []byte // raw JSON token of "id" (a string with quotes, or a number); nil if absent
	device []byte // raw JSON string token of "device"; nil if absent
	ts     []byte // raw JSON token of "ts"; nil if absent
	tsNS   int64  // "ts" in unix nanoseconds, once validated
	index  int    // position in a batch, -1 for a single-object frame
	code   string // non-empty: rejected with this code
	reason string
}

// frameError rejects a whole frame.
type frameError struct {
	code   string
	reason string
}

// decoder splits a text frame into messages, validating the JSON strictly
// (RFC 8259 syntax, valid UTF-8, bounded depth). It never allocates on the
// accepting path once msgs has capacity.
type decoder struct {
	b     []byte
	i     int
	depth int
	err   string
}

// decodeFrame appends the messages of frame to msgs. A frame is one JSON object
// or an array of JSON values; array elements that are not objects become
// messages rejected with codeInvalidMessage. maxMessages bounds the batch size
// and maxMessageBytes the size of each message.
func decodeFrame(frame []byte, msgs []message, maxMessages, maxMessageBytes int) ([]message, *frameError) {
	d := decoder{b: frame}
	d.ws()
	if d.i >= len(d.b) {
		return msgs, &frameError{codeInvalidJSON, "empty frame"}
	}
	switch d.b[d.i] {
	case '{':
		m := message{index: -1}
		if !d.object(&m) {
			return msgs, d.syntaxError()
		}
		d.ws()
		if d.i != len(d.b) {
			return msgs, &frameError{codeInvalidJSON, "unexpected data after the top-level value at byte " + strconv.Itoa(d.i)}
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
					return msgs[:start], &frameError{codeTooLarge, "batch holds more than " + strconv.Itoa(maxMessages) + " messages"}
				}
				m := message{index: len(msgs) - start}
				if d.b[d.i] == '{' {
					if !d.object(&m) {
						return msgs[:start], d.syntaxError()
					}
					checkSize(&m, maxMessageBytes)
				} else {
					s := d.i
					if !d.value() {
						return msgs[:start], d.syntaxError()
					}
					m.raw = d.b[s:d.i]
					m.code, m.reason = codeInvalidMessage, "batch element is not a JSON object"
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
			return msgs[:start], &frameError{codeInvalidJSON, "unexpected data after the top-level value at byte " + strconv.Itoa(d.i)}
		}
		return msgs, nil
	default:
		if !d.value() {
			return msgs, d.syntaxError()
		}
		d.ws()
		if d.i != len(d.b) {
			return msgs, &frameError{codeInvalidJSON, "unexpected data after the top-level value at byte " + strconv.Itoa(d.i)}
		}
		return msgs, &frameError{codeInvalidMessage, "a frame must hold a JSON object or an array of objects"}
	}
}

func checkSize(m *message, max int) {
	if m.code == "" && len(m.raw) > max {
		m.code, m.reason = codeTooLarge, "message is "+strconv.Itoa(len(m.raw))+" bytes, the limit is "+strconv.Itoa(max)
	}
}

func (d *decoder) syntaxError() *frameError {
	why := d.err
	if why == "" {
		why = "syntax error"
	}
	if d.i >= len(d.b) {
		return &frameError{codeInvalidJSON, why + " at end of frame"}
	}
	return &frameError{codeInvalidJSON, why + " at byte " + strconv.Itoa(d.i)}
}

func (d *decoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// object parses an object at d.i. When m is non-nil, it is a message: its raw
// bytes and its top-level "id", "ts" and "device" members are recorded, and a
// member of the wrong type or a repeated one marks the message rejected.
func (d *decoder) object(m *message) bool {
	start := d.i
	d.i++ // '{'
	d.depth++
	if d.depth > maxDepth {
		d.err = "nesting deeper than " + strconv.Itoa(maxDepth)
		return false
	}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		d.depth--
		if m != nil {
			m.raw = d.b[start:d.i]
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
		esc, ok := d.str()
		if !ok {
			return false
		}
		key := d.b[ks+1 : d.i-1]
		d.ws()
		if d.i >= len(d.b) || d.b[d.i] != ':' {
			d.err = "expected ':'"
			return false
		}
		d.i++
		d.ws()
		vs := d.i
		if !d.value() {
			return false
		}
		if m != nil {
			d.member(m, key, esc, d.b[vs:d.i])
		}
		d.ws()
		if d.i >= len(d.b) {
			d.err = "unterminated object"
			return false
		}
		if d.b[d.i] == ',' {
			d.i++
			continue
		}
		if d.b[d.i] == '}' {
			d.i++
			d.depth--
			if m != nil {
				m.raw = d.b[start:d.i]
			}
			return true
		}
		d.err = "expected ',' or '}'"
		return false
	}
}

func (d *decoder) member(m *message, key []byte, escaped bool, v []byte) {
	if escaped {
		// Rare: a member name with escapes is compared by its meaning, so
		// "\u0069d" cannot smuggle a second "id" past this decoder.
		var s string
		q := make([]byte, 0, len(key)+2)
		q = append(append(append(q, '"'), key...), '"')
		if json.Unmarshal(q, &s) != nil {
			return
		}
		key = []byte(s)
	}
	var slot *[]byte
	switch string(key) {
	case "id":
		slot = &m.id
	case "ts":
		slot = &m.ts
	case "device":
		slot = &m.device
	default:
		return
	}
	if m.code != "" {
		return
	}
	if *slot != nil {
		m.code, m.reason = codeInvalidMessage, "member \""+string(key)+"\" appears twice"
		return
	}
	*slot = v
	switch string(key) {
	case "id":
		if v[0] != '"' && v[0] != '-' && (v[0] < '0' || v[0] > '9') {
			m.id = nil
			m.code, m.reason = codeInvalidMessage, "\"id\" must be a string or a number"
		} else if len(v) > maxClientIDBytes {
			m.id = nil
			m.code, m.reason = codeInvalidMessage, "\"id\" is longer than "+strconv.Itoa(maxClientIDBytes)+" bytes"
		}
	case "device":
		if v[0] != '"' {
			m.code, m.reason = codeInvalidMessage, "\"device\" must be a string"
		}
	}
}

// str parses a string at d.i and reports whether it held escapes.
func (d *decoder) str() (escaped, ok bool) {
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
		case c < utf8.RuneSelf:
			d.i++
		default:
			r, n := utf8.DecodeRune(d.b[d.i:])
			if r == utf8.RuneError && n <= 1 {
				d.err = "invalid UTF-8"
				return escaped, false
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

func (d *decoder) value() bool {
	if d.i >= len(d.b) {
		d.err = "expected a value"
		return false
	}
	switch c := d.b[d.i]; {
	case c == '{':
		return d.object(nil)
	case c == '[':
		return d.array()
	case c == '"':
		_, ok := d.str()
		return ok
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return d.number()
	default:
		d.err = "expected a value"
		return false
	}
}

func (d *decoder) array() bool {
	d.i++
	d.depth++
	if d.depth > maxDepth {
		d.err = "nesting deeper than " + strconv.Itoa(maxDepth)
		return false
	}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		d.depth--
		return true
	}
	for {
		d.ws()
		if !d.value() {
			return false
		}
		d.ws()
		if d.i >= len(d.b) {
			d.err = "unterminated array"
			return false
		}
		if d.b[d.i] == ',' {
			d.i++
			continue
		}
		if d.b[d.i] == ']' {
			d.i++
			d.depth--
			return true
		}
		d.err = "expected ',' or ']'"
		return false
	}
}

func (d *decoder) literal(lit string) bool {
	if !bytes.HasPrefix(d.b[d.i:], []byte(lit)) {
		d.err = "invalid literal"
		return false
	}
	d.i += len(lit)
	return true
}

func (d *decoder) number() bool {
	b := d.b
	i := d.i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		d.err = "invalid number"
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			d.err = "invalid number"
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			d.err = "invalid number"
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	d.i = i
	return true
}

// minDeviceTime is the earliest "ts" accepted: a device that sends seconds
// instead of milliseconds lands in 1970 and is told so.
var minDeviceTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

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
	if ns < minDeviceTime {
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
		if ms > 9e12 { // year ~2255; also keeps ms*1e6 below 1<<63
			return 0, false
		}
		ms = ms*10 + int64(v[i]-'0')
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
