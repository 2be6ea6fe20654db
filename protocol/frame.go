package protocol

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
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
}

// FrameError rejects a whole frame: it is answered with one error frame
// without an index, and none of its messages is stored.
type FrameError struct {
	Code   string
	Reason string
}

func (e *FrameError) Error() string { return e.Code + ": " + e.Reason }

// scanner walks JSON strictly (RFC 8259 syntax, valid UTF-8, nesting at
// most MaxDepth). It never allocates on the accepting path.
type scanner struct {
	b     []byte
	i     int
	depth int
	err   string
}

// ParseFrame appends the messages of a device frame to msgs. A frame is one
// JSON object or an array of JSON values; array elements that are not
// objects become messages rejected with CodeInvalidMessage. maxMessages
// bounds the batch size and maxMessageBytes the size of each message.
//
// Every message gets its members "id", "ts" and "device" recorded; a member
// of the wrong type, a repeated one or an "id" over MaxMessageIDBytes
// rejects the message (Code and Reason set). A frame that is not strict
// JSON, or holds more than maxMessages, is rejected whole: the FrameError
// says why, and msgs is returned as it was given. Check validates what
// depends on the connection and the clock.
//
// It never allocates on the accepting path once msgs has capacity.
func ParseFrame(frame []byte, msgs []Message, maxMessages, maxMessageBytes int) ([]Message, *FrameError) {
	d := scanner{b: frame}
	d.ws()
	if d.i >= len(d.b) {
		return msgs, &FrameError{CodeInvalidJSON, "empty frame"}
	}
	switch d.b[d.i] {
	case '{':
		m := Message{Index: -1}
		if !d.object(&m) {
			return msgs, d.syntaxError()
		}
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
					if !d.object(&m) {
						return msgs[:start], d.syntaxError()
					}
					checkSize(&m, maxMessageBytes)
				} else {
					s := d.i
					if !d.value() {
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
		if !d.value() {
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

// object parses an object at d.i. When m is non-nil, it is a message: its raw
// bytes and its top-level "id", "ts" and "device" members are recorded, and a
// member of the wrong type or a repeated one marks the message rejected.
func (d *scanner) object(m *Message) bool {
	start := d.i
	d.i++ // '{'
	d.depth++
	if d.depth > MaxDepth {
		d.err = "nesting deeper than " + strconv.Itoa(MaxDepth)
		return false
	}
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		d.depth--
		if m != nil {
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
				m.Raw = d.b[start:d.i]
			}
			return true
		}
		d.err = "expected ',' or '}'"
		return false
	}
}

func (d *scanner) member(m *Message, key []byte, escaped bool, v []byte) {
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
	case MemberID:
		slot = &m.ID
	case MemberTS:
		slot = &m.TS
	case MemberDevice:
		slot = &m.Device
	default:
		return
	}
	if m.Code != "" {
		return
	}
	if *slot != nil {
		m.Code, m.Reason = CodeInvalidMessage, "member \""+string(key)+"\" appears twice"
		return
	}
	*slot = v
	switch string(key) {
	case MemberID:
		if v[0] != '"' && v[0] != '-' && (v[0] < '0' || v[0] > '9') {
			m.ID = nil
			m.Code, m.Reason = CodeInvalidMessage, "\"id\" must be a string or a number"
		} else if len(v) > MaxMessageIDBytes {
			m.ID = nil
			m.Code, m.Reason = CodeInvalidMessage, "\"id\" is longer than "+strconv.Itoa(MaxMessageIDBytes)+" bytes"
		}
	case MemberDevice:
		if v[0] != '"' {
			m.Code, m.Reason = CodeInvalidMessage, "\"device\" must be a string"
		}
	}
}

// str parses a string at d.i and reports whether it held escapes.
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

func (d *scanner) value() bool {
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

func (d *scanner) array() bool {
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
