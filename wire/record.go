package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Record is what a middletier stores in its log and publishes, one per
// entry it received: the entry's identity in its frontend's log, and the
// entry. (Origin, Index) names it for good; repeats are dropped by it.
//
//	[0]    record version, 1
//	[1:]   Origin (varint length + bytes), Index (varint), Data (the rest)
//
// A record lives inside a checksummed WAL entry or wire message, so it has
// no checksum of its own.
type Record struct {
	Origin string
	Index  uint64
	Data   []byte
}

const recordVersion = 1

// AppendRecord appends the encoding of r to dst.
func AppendRecord(dst []byte, r *Record) []byte {
	dst = append(dst, recordVersion)
	dst = appendString(dst, r.Origin)
	dst = binary.AppendUvarint(dst, r.Index)
	return append(dst, r.Data...)
}

// DecodeRecord decodes a record; r.Data aliases b.
func DecodeRecord(b []byte) (Record, error) {
	if len(b) == 0 || b[0] != recordVersion {
		return Record{}, fmt.Errorf("%w: record version", ErrInvalid)
	}
	d := &decoder{b: b[1:]}
	var r Record
	var err error
	if r.Origin, err = d.name(); err != nil {
		return Record{}, fmt.Errorf("%w: record: %w", ErrInvalid, err)
	}
	if r.Index, err = d.uvarint(); err != nil {
		return Record{}, fmt.Errorf("%w: record: %w", ErrInvalid, err)
	}
	if r.Index == 0 {
		return Record{}, fmt.Errorf("%w: record: %w", ErrInvalid, errors.New("index 0"))
	}
	r.Data = d.b
	return r, nil
}
