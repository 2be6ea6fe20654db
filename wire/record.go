package wire

import (
	"fmt"
	"slices"
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
	c := codec{mode: sizing}
	r.fields(&c, "")
	c = codec{b: slices.Grow(dst, c.n), mode: writing}
	r.fields(&c, "")
	return c.b
}

// DecodeRecord decodes a record; r.Data aliases b.
func DecodeRecord(b []byte) (Record, error) { return DecodeRecordKnown(b, "") }

// DecodeRecordKnown is DecodeRecord, but r.Origin is known itself, not a
// copy, when the record's origin is spelled as known is. A consumer of a
// stream, whose records come from few frontend logs in long runs, passes
// the origin it decoded last and allocates none for the records after it.
func DecodeRecordKnown(b []byte, known string) (Record, error) {
	var r Record
	c := codec{b: b, mode: reading}
	if r.fields(&c, known); c.err != nil {
		return Record{}, fmt.Errorf("%w: record: %w", ErrInvalid, c.err)
	}
	return r, nil
}

// fields takes a pointer, not a codec: a record is not a message, and its
// callers, on every message's path, call it directly.
func (r *Record) fields(c *codec, known string) {
	c.version("record", recordVersion)
	c.nameKnown(&r.Origin, known)
	c.uvarint(&r.Index)
	c.rest(&r.Data)
	c.check(r.Index != 0, "index 0")
}
