package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// AppendAck appends {"type":"ack","seq":N,"ids":[...]} to dst; ids is a
// comma-separated list of raw JSON ids, possibly empty (then "ids" is
// omitted).
func AppendAck(dst []byte, seq uint64, ids []byte) []byte {
	dst = append(dst, `{"type":"`+TypeAck+`","seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	if len(ids) > 0 {
		dst = append(dst, `,"ids":[`...)
		dst = append(dst, ids...)
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// AppendCommand appends a command frame to dst:
// {"type":"command","id":ID,"name":NAME,"payload":PAYLOAD}. payload must be
// one JSON value; nil writes null.
func AppendCommand(dst []byte, id, name string, payload []byte) []byte {
	dst = append(dst, `{"type":"`+TypeCommand+`","id":`...)
	dst = appendJSONString(dst, id)
	dst = append(dst, `,"name":`...)
	dst = appendJSONString(dst, name)
	dst = append(dst, `,"payload":`...)
	if len(payload) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, payload...)
	}
	return append(dst, '}')
}

// AppendError appends an error frame to dst. index < 0 omits the batch
// index, a nil id (a raw JSON token) omits the id, retryMS <= 0 omits the
// retry hint; message is the human-readable detail.
func AppendError(dst []byte, code string, seq uint64, index int, id []byte, retryMS int64, message string) []byte {
	dst = append(dst, `{"type":"`+TypeError+`","code":`...)
	dst = appendJSONString(dst, code)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	if index >= 0 {
		dst = append(dst, `,"index":`...)
		dst = strconv.AppendInt(dst, int64(index), 10)
	}
	if id != nil {
		dst = append(dst, `,"id":`...)
		dst = append(dst, id...)
	}
	if retryMS > 0 {
		dst = append(dst, `,"retry_after_ms":`...)
		dst = strconv.AppendInt(dst, retryMS, 10)
	}
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, message)
	return append(dst, '}')
}

// AppendRefusal appends the JSON body of a refused handshake to dst:
// shaped like an error frame, without a frame number.
func AppendRefusal(dst []byte, code, message string) []byte {
	dst = append(dst, `{"type":"`+TypeError+`","code":`...)
	dst = appendJSONString(dst, code)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, message)
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string. Bytes that are not valid
// UTF-8 are passed through; the strings written here are ours.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// ErrInvalidServerFrame wraps every error of DecodeServerFrame.
var ErrInvalidServerFrame = errors.New("protocol: invalid server frame")

// ServerFrame is a server → device frame, or a refused handshake's body, as
// DecodeServerFrame reads it. Its slices alias the frame.
type ServerFrame struct {
	// Type is TypeAck, TypeError, or a type this version does not know,
	// which a device ignores.
	Type string
	// Seq is the frame number an ack covers up to, or that an error names;
	// 0 when absent (a handshake's body).
	Seq uint64
	// IDs are the message ids of an ack, as written between the brackets
	// of "ids"; empty when absent.
	IDs []byte
	// Code is an error's code (Code* constants, or one this version does
	// not know).
	Code string
	// Index is an error's position in a batch frame, -1 when absent.
	Index int
	// ID is the raw JSON token of an error's message id; nil when absent.
	ID []byte
	// RetryAfter is the retry hint; 0 when absent.
	RetryAfter time.Duration
	// Message is an error's human-readable detail.
	Message string
	// Name is a command's name.
	Name string
	// Payload is a command's payload as written (one JSON value); nil when
	// absent.
	Payload []byte
}

// DecodeServerFrame decodes a server → device frame, validating it
// strictly: one JSON object with a string "type"; an ack has a "seq". The
// members this version defines must have their types ("seq", "index" and
// "retry_after_ms" non-negative integers, "code" and "message" strings,
// "id" a string or number, "ids" an array) and appear once; other members
// are ignored, so that a later server may add them. Every error wraps
// ErrInvalidServerFrame.
//
// It allocates nothing for an ack.
func DecodeServerFrame(b []byte) (ServerFrame, error) {
	f := ServerFrame{Index: -1}
	d := scanner{b: b}
	if !d.openObject() {
		return f, fmt.Errorf("%w: not a JSON object", ErrInvalidServerFrame)
	}
	var seen uint16
	const (
		hasType = 1 << iota
		hasSeq
		hasIDs
		hasCode
		hasIndex
		hasID
		hasRetry
		hasMessage
		hasName
		hasPayload
	)
	for first := true; ; first = false {
		key, v, more, ok := d.nextMember(first)
		if !ok {
			return f, d.serverError()
		}
		if !more {
			break
		}
		var bit uint16
		var err error
		switch string(key) {
		case "type":
			bit = hasType
			f.Type, err = stringValue(v, "type")
		case "seq":
			bit = hasSeq
			f.Seq, err = uintValue(v, "seq", math.MaxUint64)
		case "ids":
			bit = hasIDs
			if v[0] != '[' {
				err = fmt.Errorf("%w: \"ids\" is not an array", ErrInvalidServerFrame)
			} else {
				f.IDs = trimWS(v[1 : len(v)-1])
			}
		case "code":
			bit = hasCode
			f.Code, err = stringValue(v, "code")
		case "index":
			bit = hasIndex
			var n uint64
			n, err = uintValue(v, "index", math.MaxInt32)
			f.Index = int(n)
		case "id":
			bit = hasID
			if v[0] != '"' && v[0] != '-' && (v[0] < '0' || v[0] > '9') {
				err = fmt.Errorf("%w: \"id\" is not a string or a number", ErrInvalidServerFrame)
			}
			f.ID = v
		case "retry_after_ms":
			bit = hasRetry
			var n uint64
			n, err = uintValue(v, "retry_after_ms", math.MaxInt64/uint64(time.Millisecond))
			f.RetryAfter = time.Duration(n) * time.Millisecond
		case "message":
			bit = hasMessage
			f.Message, err = stringValue(v, "message")
		case "name":
			bit = hasName
			f.Name, err = stringValue(v, "name")
		case "payload":
			bit = hasPayload
			f.Payload = v
		}
		if err != nil {
			return f, err
		}
		if seen&bit != 0 {
			return f, fmt.Errorf("%w: member %q appears twice", ErrInvalidServerFrame, key)
		}
		seen |= bit
	}
	d.ws()
	if d.i != len(d.b) {
		return f, fmt.Errorf("%w: unexpected data after the object at byte %d", ErrInvalidServerFrame, d.i)
	}
	if seen&hasType == 0 {
		return f, fmt.Errorf("%w: no \"type\"", ErrInvalidServerFrame)
	}
	if f.Type == TypeAck && seen&hasSeq == 0 {
		return f, fmt.Errorf("%w: an ack without \"seq\"", ErrInvalidServerFrame)
	}
	if f.Type == TypeCommand {
		if seen&hasID == 0 || f.ID[0] != '"' || seen&hasName == 0 {
			return f, fmt.Errorf("%w: a command without a string \"id\" and a \"name\"", ErrInvalidServerFrame)
		}
		if len(f.ID) > MaxCommandIDBytes+2 || len(f.Name) > MaxCommandNameBytes {
			return f, fmt.Errorf("%w: a command's id or name is too long", ErrInvalidServerFrame)
		}
		if len(f.Payload) > MaxCommandPayloadBytes {
			return f, fmt.Errorf("%w: a command's payload is over %d bytes", ErrInvalidServerFrame, MaxCommandPayloadBytes)
		}
	}
	return f, nil
}

func (d *scanner) serverError() error {
	fe := d.syntaxError()
	return fmt.Errorf("%w: %s", ErrInvalidServerFrame, fe.Reason)
}

// unescape returns the bytes a JSON string token holds.
func unescape(tok []byte) ([]byte, bool) {
	var s string
	if json.Unmarshal(tok, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}

// stringValue returns the string a raw JSON token holds. The names this
// version knows are returned as constants, without allocating.
func stringValue(v []byte, name string) (string, error) {
	if v[0] != '"' {
		return "", fmt.Errorf("%w: %q is not a string", ErrInvalidServerFrame, name)
	}
	inner := v[1 : len(v)-1]
	switch string(inner) {
	case TypeAck:
		return TypeAck, nil
	case TypeError:
		return TypeError, nil
	case TypeCommand:
		return TypeCommand, nil
	case CodeInvalidJSON:
		return CodeInvalidJSON, nil
	case CodeInvalidMessage:
		return CodeInvalidMessage, nil
	case CodeTooLarge:
		return CodeTooLarge, nil
	case CodeTooManyFields:
		return CodeTooManyFields, nil
	case CodeInvalidField:
		return CodeInvalidField, nil
	case CodeBadTimestamp:
		return CodeBadTimestamp, nil
	case CodeDeviceMismatch:
		return CodeDeviceMismatch, nil
	case CodeRateLimited:
		return CodeRateLimited, nil
	case CodeOverloaded:
		return CodeOverloaded, nil
	case CodeUnauthorized:
		return CodeUnauthorized, nil
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", fmt.Errorf("%w: %q: %w", ErrInvalidServerFrame, name, err)
	}
	return s, nil
}

// uintValue returns the integer a raw JSON number holds, if it is one from
// 0 to max without a fraction or an exponent.
func uintValue(v []byte, name string, max uint64) (uint64, error) {
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%w: %q is not a non-negative integer", ErrInvalidServerFrame, name)
		}
		d := uint64(c - '0')
		if n > (max-d)/10 {
			return 0, fmt.Errorf("%w: %q is out of range", ErrInvalidServerFrame, name)
		}
		n = n*10 + d
	}
	return n, nil
}

func trimWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	for n := len(b); n > 0 && (b[n-1] == ' ' || b[n-1] == '\t' || b[n-1] == '\n' || b[n-1] == '\r'); n = len(b) {
		b = b[:n-1]
	}
	return b
}

// openObject reads the '{' that opens the object d.b holds.
func (d *scanner) openObject() bool {
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != '{' {
		return false
	}
	d.i++
	d.depth++
	return true
}

// nextMember reads the next member of the object openObject opened (first:
// none has been read yet), and returns its name, unescaped, and its raw
// value; more is false once the object's '}' is read. ok is false on a
// syntax error, which d.err and d.i describe (see syntaxError). It checks
// nothing of the values: the frames of the server and the command_result
// frame, flat objects whose members are read one by one, share it.
func (d *scanner) nextMember(first bool) (key, v []byte, more, ok bool) {
	d.ws()
	switch {
	case d.i < len(d.b) && d.b[d.i] == '}':
		d.i++
		return nil, nil, false, true
	case first:
	case d.i < len(d.b) && d.b[d.i] == ',':
		d.i++
		d.ws()
	default:
		d.err = "expected ',' or '}'"
		return nil, nil, false, false
	}
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		d.err = "expected a member name"
		return nil, nil, false, false
	}
	ks := d.i
	esc, ok := d.str()
	if !ok {
		return nil, nil, false, false
	}
	key = d.b[ks+1 : d.i-1]
	if esc {
		// Rare: compared by meaning, as ParseFrame does.
		if key, ok = unescape(d.b[ks:d.i]); !ok {
			d.err = "bad member name"
			return nil, nil, false, false
		}
	}
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != ':' {
		d.err = "expected ':'"
		return nil, nil, false, false
	}
	d.i++
	d.ws()
	vs := d.i
	if !d.value(-1) {
		return nil, nil, false, false
	}
	return key, d.b[vs:d.i], true, true
}
