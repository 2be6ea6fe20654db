package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// ErrInvalidCommandResult wraps every error of DecodeCommandResult and
// DecodeCommandAnswer.
var ErrInvalidCommandResult = errors.New("protocol: invalid command_result frame")

// CommandResult is a device's answer to a command, as DecodeCommandResult
// reads it. Payload aliases the frame.
type CommandResult struct {
	// ID is the command's id, as the command frame gave it.
	ID string
	// Status is StatusOK, or another status, which marks the command failed.
	Status string
	// Payload is the answer's payload as written (one JSON value); nil when
	// absent.
	Payload []byte
}

// IsCommandResult reports whether a device frame is a command_result frame
// rather than data: a JSON object whose first member is "__type" with the
// value "command_result", as written. It looks no further;
// DecodeCommandResult validates the frame. Any other frame is data, numbered
// as data is: one whose first member is "__type" with another value is a
// message with a reserved member (invalid_field), so that the device and
// the server number the same frames whatever the server serves.
func IsCommandResult(frame []byte) bool {
	i := skipWS(frame, 0)
	if i >= len(frame) || frame[i] != '{' {
		return false
	}
	i = skipWS(frame, i+1)
	const key, value = `"__type"`, `"command_result"`
	if len(frame)-i < len(key) || string(frame[i:i+len(key)]) != key {
		return false
	}
	i = skipWS(frame, i+len(key))
	if i >= len(frame) || frame[i] != ':' {
		return false
	}
	i = skipWS(frame, i+1)
	return len(frame)-i >= len(value) && string(frame[i:i+len(value)]) == value
}

// CheckCommandPayload says why a command's payload could not travel in its
// command frame, or returns nil: it must be empty or one JSON value,
// UTF-8 (encoding/json lets bytes that are not pass inside strings; a
// WebSocket text frame is UTF-8), nested at most MaxCommandPayloadDepth
// deep. Its size, MaxCommandPayloadBytes, is checked apart: the command
// API answers it with a status of its own.
func CheckCommandPayload(p []byte) error {
	switch {
	case len(p) == 0:
		return nil
	case !json.Valid(p) || !utf8.Valid(p):
		return errors.New("payload is not JSON (UTF-8)")
	case Depth(p) > MaxCommandPayloadDepth:
		return fmt.Errorf("payload nested deeper than %d", MaxCommandPayloadDepth)
	}
	return nil
}

// Depth returns the deepest nesting of arrays and objects in b, a valid
// JSON value: 0 for a scalar, 1 for [] or {}.
func Depth(b []byte) int {
	depth, deepest, str, esc := 0, 0, false, false
	for _, c := range b {
		switch {
		case esc:
			esc = false
		case str:
			esc = c == '\\'
			str = c != '"'
		case c == '"':
			str = true
		case c == '[' || c == '{':
			depth++
			deepest = max(deepest, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return deepest
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// DecodeCommandResult decodes a device's command_result frame strictly:
// one JSON object with "__type" "command_result", a string "id" of 1 to
// MaxCommandIDBytes bytes, a string "status" of 1 to MaxStatusBytes bytes
// of printable ASCII, and optionally "payload", any JSON value of at most
// MaxCommandPayloadBytes. Each member may appear once; other members are
// ignored, so that a later device may add them. Every error wraps
// ErrInvalidCommandResult.
func DecodeCommandResult(b []byte) (CommandResult, error) {
	return decodeCommandResult(b, "")
}

// DecodeCommandAnswer decodes the answer to command id sent where the
// command is named outside it (an MQTT result topic): the object of a
// command_result frame in which "__type" and "id" may be left out; when
// present they must be "command_result" and id. The rules are otherwise
// DecodeCommandResult's, and the result's ID is id, which must be a valid
// command id.
func DecodeCommandAnswer(b []byte, id string) (CommandResult, error) {
	if !validCommandID(id) {
		return CommandResult{}, fmt.Errorf("%w: command id must be 1 to %d bytes of UTF-8", ErrInvalidCommandResult, MaxCommandIDBytes)
	}
	return decodeCommandResult(b, id)
}

func validCommandID(s string) bool {
	return s != "" && len(s) <= MaxCommandIDBytes && utf8.ValidString(s)
}

// decodeCommandResult decodes a command_result frame, or with named set,
// the answer to command named.
func decodeCommandResult(b []byte, named string) (CommandResult, error) {
	var r CommandResult
	bad := func(format string, a ...any) (CommandResult, error) {
		return CommandResult{}, fmt.Errorf("%w: %s", ErrInvalidCommandResult, fmt.Sprintf(format, a...))
	}
	d := scanner{b: b}
	if !d.openObject() {
		return bad("not a JSON object")
	}
	var hasType, hasID, hasStatus, hasPayload bool
	for first := true; ; first = false {
		key, v, more, ok := d.nextMember(first)
		if !ok {
			return bad("%s", d.syntaxError().Reason)
		}
		if !more {
			break
		}
		var seen *bool
		switch string(key) {
		case "__type":
			seen = &hasType
			t, err := stringValue(v, "__type")
			if err != nil || t != TypeCommandResult {
				return bad("\"__type\" is not %q", TypeCommandResult)
			}
		case "id":
			seen = &hasID
			s, err := stringValue(v, "id")
			if err != nil || !validCommandID(s) {
				return bad("\"id\" must be a string of 1 to %d bytes", MaxCommandIDBytes)
			}
			if named != "" && s != named {
				return bad("\"id\" %q is not the command %q answered", s, named)
			}
			r.ID = s
		case "status":
			seen = &hasStatus
			s, err := stringValue(v, "status")
			if err != nil || s == "" || len(s) > MaxStatusBytes || !printableASCII(s) {
				return bad("\"status\" must be a string of 1 to %d printable ASCII bytes", MaxStatusBytes)
			}
			r.Status = s
		case "payload":
			seen = &hasPayload
			if len(v) > MaxCommandPayloadBytes {
				return bad("\"payload\" over %d bytes", MaxCommandPayloadBytes)
			}
			r.Payload = v
		}
		if seen != nil {
			if *seen {
				return bad("member %q appears twice", key)
			}
			*seen = true
		}
	}
	d.ws()
	if d.i != len(d.b) {
		return bad("unexpected data after the object at byte %d", d.i)
	}
	if named != "" {
		if !hasStatus {
			return bad("\"status\" is required")
		}
		r.ID = named
		return r, nil
	}
	if !hasType || !hasID || !hasStatus {
		return bad("\"__type\", \"id\" and \"status\" are required")
	}
	return r, nil
}

// AppendCommandResult appends a command_result frame to dst. payload must
// be one JSON value, or nil for none.
func AppendCommandResult(dst []byte, id, status string, payload []byte) []byte {
	dst = append(dst, `{"__type":"`+TypeCommandResult+`","id":`...)
	dst = appendJSONString(dst, id)
	dst = append(dst, `,"status":`...)
	dst = appendJSONString(dst, status)
	if len(payload) > 0 {
		dst = append(dst, `,"payload":`...)
		dst = append(dst, payload...)
	}
	return append(dst, '}')
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
