package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/ingest-io/ingest/internal/varint"
)

// Version is the newest layout version, written by AppendEncode for an
// envelope with a Topic. An envelope without one is written as version 1,
// byte for byte what version 1 writers wrote, so that readers of version 1
// still read every message that does not use what version 2 added.
const Version = 2

// MaxIDBytes bounds the frontend id and the device id; MaxTopicBytes the
// topic.
const (
	MaxIDBytes    = 255
	MaxTopicBytes = 255
)

const (
	flagDeviceTime = 1 << 0
	flagTopic      = 1 << 1 // version 2 on
)

// minSize is the smallest well-formed record: version, flags, two 1-byte ids with
// their lengths, receive time, empty payload length, checksum.
const minSize = 1 + 1 + 2 + 2 + 8 + 1 + 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors returned by Decode. Every decoding error wraps ErrInvalid.
var (
	ErrInvalid  = errors.New("envelope: invalid record")
	ErrChecksum = fmt.Errorf("%w: checksum mismatch", ErrInvalid)
	ErrVersion  = fmt.Errorf("%w: unknown version", ErrInvalid)
	// ErrNewer wraps ErrVersion for a version above Version: an envelope
	// a newer engine wrote, which a later build may read. A version below
	// 1 is no engine's: ErrVersion only.
	ErrNewer    = fmt.Errorf("%w (newer than this build reads)", ErrVersion)
	ErrTrailing = fmt.Errorf("%w: trailing bytes", ErrInvalid)
)

// Envelope is one device message as stored in a WAL.
type Envelope struct {
	// Frontend is the id of the frontend that first received the message.
	Frontend string
	// Device is the authenticated device id.
	Device string
	// Received is the receive time at the origin frontend, unix nanoseconds.
	Received int64
	// DeviceTime is the device's own timestamp, unix nanoseconds; meaningful only
	// when HasDeviceTime is true.
	DeviceTime    int64
	HasDeviceTime bool
	// Topic is what followed devices/{id}/ in the MQTT topic the message
	// was published to ("" for none, and for WebSocket devices); the
	// stores keep it as the label "topic". At most MaxTopicBytes; the
	// caller validates it.
	Topic string
	// Payload is the message's JSON object exactly as the device sent it.
	Payload []byte
}

// Size returns the exact number of bytes AppendEncode adds for e.
func Size(e *Envelope) int {
	n := 2 + varint.Len(uint64(len(e.Frontend))) + len(e.Frontend) +
		varint.Len(uint64(len(e.Device))) + len(e.Device) + 8 +
		varint.Len(uint64(len(e.Payload))) + len(e.Payload) + 4
	if e.HasDeviceTime {
		n += 8
	}
	if e.Topic != "" {
		n += varint.Len(uint64(len(e.Topic))) + len(e.Topic)
	}
	return n
}

// AppendEncode appends the encoding of e to dst and returns the extended slice.
// It allocates only when dst lacks capacity. The ids must be 1..MaxIDBytes long;
// the caller validates them once (per connection), not per message.
func AppendEncode(dst []byte, e *Envelope) []byte {
	start := len(dst)
	var flags byte
	if e.HasDeviceTime {
		flags |= flagDeviceTime
	}
	version := byte(1)
	if e.Topic != "" {
		flags |= flagTopic
		version = 2
	}
	dst = append(dst, version, flags)
	dst = binary.AppendUvarint(dst, uint64(len(e.Frontend)))
	dst = append(dst, e.Frontend...)
	dst = binary.AppendUvarint(dst, uint64(len(e.Device)))
	dst = append(dst, e.Device...)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(e.Received))
	if e.HasDeviceTime {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(e.DeviceTime))
	}
	if e.Topic != "" {
		dst = binary.AppendUvarint(dst, uint64(len(e.Topic)))
		dst = append(dst, e.Topic...)
	}
	dst = binary.AppendUvarint(dst, uint64(len(e.Payload)))
	dst = append(dst, e.Payload...)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// Decode parses one record. Payload aliases b; the ids are copied.
func Decode(b []byte) (Envelope, error) {
	var e Envelope
	if len(b) < minSize {
		return e, fmt.Errorf("%w: %d bytes is shorter than the minimum %d", ErrInvalid, len(b), minSize)
	}
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[len(b)-4:]); got != want {
		return e, ErrChecksum
	}
	known := byte(flagDeviceTime)
	switch body[0] {
	case 1:
	case 2:
		known |= flagTopic
	case 0:
		return e, fmt.Errorf("%w %d", ErrVersion, body[0])
	default:
		return e, fmt.Errorf("%w: %d", ErrNewer, body[0])
	}
	flags := body[1]
	if flags&^known != 0 {
		return e, fmt.Errorf("%w: unknown flags %#x for version %d", ErrInvalid, flags, body[0])
	}
	if body[0] == 2 && flags&flagTopic == 0 {
		// Version 2 without a topic is written as version 1: only one
		// encoding of each envelope is accepted.
		return e, fmt.Errorf("%w: version 2 without a topic", ErrInvalid)
	}
	p := body[2:]
	frontend, p, err := readID(p, "frontend id")
	if err != nil {
		return e, err
	}
	device, p, err := readID(p, "device id")
	if err != nil {
		return e, err
	}
	if len(p) < 8 {
		return e, fmt.Errorf("%w: receive time truncated", ErrInvalid)
	}
	e.Received = int64(binary.LittleEndian.Uint64(p))
	p = p[8:]
	if flags&flagDeviceTime != 0 {
		if len(p) < 8 {
			return e, fmt.Errorf("%w: device time truncated", ErrInvalid)
		}
		e.DeviceTime = int64(binary.LittleEndian.Uint64(p))
		e.HasDeviceTime = true
		p = p[8:]
	}
	var topic []byte
	if flags&flagTopic != 0 {
		if topic, p, err = readID(p, "topic"); err != nil {
			return e, err
		}
	}
	n, k := binary.Uvarint(p)
	if k <= 0 || k != varint.Len(min(n, 1<<62)) {
		return e, fmt.Errorf("%w: payload length malformed", ErrInvalid)
	}
	p = p[k:]
	if n > uint64(len(p)) {
		return e, fmt.Errorf("%w: payload length %d exceeds the %d bytes left", ErrInvalid, n, len(p))
	}
	if n < uint64(len(p)) {
		return e, fmt.Errorf("%w: %d after the payload", ErrTrailing, uint64(len(p))-n)
	}
	e.Frontend = string(frontend)
	e.Device = string(device)
	e.Topic = string(topic)
	e.Payload = p[:n:n]
	return e, nil
}

func readID(p []byte, what string) (id, rest []byte, err error) {
	n, k := binary.Uvarint(p)
	if k <= 0 || k != varint.Len(min(n, 1<<62)) {
		// Non-minimal varints are rejected so that every accepted record is
		// exactly the encoding of what it decodes to.
		return nil, nil, fmt.Errorf("%w: %s length malformed", ErrInvalid, what)
	}
	if n == 0 || n > MaxIDBytes {
		return nil, nil, fmt.Errorf("%w: %s length %d outside 1..%d", ErrInvalid, what, n, MaxIDBytes)
	}
	p = p[k:]
	if n > uint64(len(p)) {
		return nil, nil, fmt.Errorf("%w: %s truncated", ErrInvalid, what)
	}
	return p[:n], p[n:], nil
}

// CheckID reports whether id can be stored as a frontend or device id.
func CheckID(id string) error {
	if len(id) == 0 || len(id) > MaxIDBytes {
		return fmt.Errorf("check id: length %d outside 1..%d", len(id), MaxIDBytes)
	}
	return nil
}
