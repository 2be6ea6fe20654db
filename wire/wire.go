// Package wire is the binary format of every message between tiers: the
// batches a frontend sends a middletier, the acknowledgements and busy
// replies it gets back, the stream a middletier publishes, the fetch and
// commit requests of its consumers, the leases by which the writers of a
// group divide the streams, and the device commands between
// frontends and the middletiers that are their devices' homes. docs/wire.md is its specification.
//
// Every message is one ZeroMQ frame:
//
//	[0]       magic 0xD7
//	[1]       version, 1
//	[2]       kind
//	[3:n-4]   body, by kind
//	[n-4:n]   CRC32C (Castagnoli) of bytes [0:n-4], little-endian
//
// Integers in bodies are unsigned varints; strings and byte strings are a
// varint length and the bytes. Decoders verify the checksum first, then
// refuse anything that is not exactly one well-formed body: trailing bytes,
// lengths past the end, names over MaxNameLen, non-minimal varints. Decoded
// byte slices alias the input.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"time"
)

const (
	magic   = 0xD7
	version = 1
	// headerLen and trailerLen frame every message's body.
	headerLen  = 3
	trailerLen = 4
	// MaxNameLen bounds origin, middletier and consumer names.
	MaxNameLen = 255
)

// Kind says what a message is.
type Kind uint8

const (
	KindBatch      Kind = 1 // frontend → middletier: entries of the frontend's log
	KindAck        Kind = 2 // middletier → frontend: durable up to an index
	KindBusy       Kind = 3 // middletier → frontend: at its bound, retry later
	KindStream     Kind = 4 // middletier → subscribers: committed records
	KindFetch      Kind = 5 // consumer → middletier: records from a sequence
	KindFetchReply Kind = 6 // middletier → consumer
	KindCommit     Kind = 7 // consumer → middletier: its checkpoint
	KindCommitAck  Kind = 8 // middletier → consumer: the checkpoint is durable
	KindResend     Kind = 9 // middletier → frontend: a batch is missing, send again from an index
)

func (k Kind) String() string {
	switch k {
	case KindBatch:
		return "batch"
	case KindAck:
		return "ack"
	case KindBusy:
		return "busy"
	case KindStream:
		return "stream"
	case KindFetch:
		return "fetch"
	case KindFetchReply:
		return "fetch_reply"
	case KindCommit:
		return "commit"
	case KindCommitAck:
		return "commit_ack"
	case KindResend:
		return "resend"
	case KindSubmit:
		return "submit"
	case KindQuery:
		return "query"
	case KindReply:
		return "reply"
	case KindPresence:
		return "presence"
	case KindDeliver:
		return "deliver"
	case KindResult:
		return "result"
	case KindLease:
		return "lease"
	case KindLeaseReply:
		return "lease_reply"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ErrInvalid is wrapped by every decoding error.
var ErrInvalid = errors.New("wire: invalid message")

// ErrVersion is in the error of a record or message of a version this
// build does not read because a newer engine wrote it: a version above the
// one this build writes. A lower one is damage, not ErrVersion.
var ErrVersion = errors.New("wire: unknown version")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Message is one of *Batch, *Ack, *Busy, *Resend, *Stream, *Fetch,
// *FetchReply, *Commit, *CommitAck, and the command messages *Submit,
// *Query, *Reply, *Presence, *Deliver, *Result, and the writer groups
// *Lease and *LeaseReply.
type Message interface {
	Kind() Kind
	fields(c codec) codec // sizes, writes or reads the body
}

// Batch carries consecutive entries of a frontend's log: Entries[i] is the
// entry at index First+i. Origin names the log: the frontend's id and its
// log's identity, so that (Origin, index) names an entry for good.
//
// Acked is the frontend's release mark when it sent the batch: every entry
// up to it is durable in some middletier, and will never be sent again. A
// middletier accepts a batch only if it follows on from what it holds of
// Origin or from Acked; any other gap means an earlier batch was lost on the
// way, and it answers Resend.
type Batch struct {
	Origin  string
	Acked   uint64
	First   uint64
	Entries [][]byte
}

// Resend asks the frontend to send Origin's entries again from index From:
// a batch arrived after a gap.
type Resend struct {
	Origin string
	From   uint64
}

// Ack says every entry of Origin up to and including UpTo is durable in the
// middletier (appended now, or earlier: repeats are acknowledged too).
type Ack struct {
	Origin string
	UpTo   uint64
}

// Busy says the middletier is at its bound and did not take the batch that
// asked; UpTo is what it has acknowledged of Origin so far.
type Busy struct {
	Origin     string
	UpTo       uint64
	RetryAfter time.Duration
}

// Stream carries committed records of a middletier's log: Records[i] is the
// record at sequence First+i.
type Stream struct {
	Middletier string
	First      uint64
	Records    [][]byte
}

// Fetch asks for at most Max records from sequence From. From 0 asks for
// the records after Consumer's checkpoint: the reply's First is the
// checkpoint + 1 (or Oldest, if that is later), so a consumer that restarts
// learns where to resume from the middletier, with Max 0 if it wants only
// that.
type Fetch struct {
	Consumer string
	From     uint64
	Max      uint64
}

// FetchReply answers a Fetch: Records[i] is at sequence First+i. Oldest is
// the first sequence the middletier still holds, Last the last it has
// committed; First > the Fetch's From means records before First are gone.
type FetchReply struct {
	Middletier string
	Oldest     uint64
	Last       uint64
	First      uint64
	Records    [][]byte
}

// Commit records that Consumer has made durable every record up to and
// including Seq.
type Commit struct {
	Consumer string
	Seq      uint64
}

// CommitAck says the middletier has made Consumer's checkpoint Seq durable.
type CommitAck struct {
	Consumer string
	Seq      uint64
}

func (*Batch) Kind() Kind      { return KindBatch }
func (*Ack) Kind() Kind        { return KindAck }
func (*Resend) Kind() Kind     { return KindResend }
func (*Busy) Kind() Kind       { return KindBusy }
func (*Stream) Kind() Kind     { return KindStream }
func (*Fetch) Kind() Kind      { return KindFetch }
func (*FetchReply) Kind() Kind { return KindFetchReply }
func (*Commit) Kind() Kind     { return KindCommit }
func (*CommitAck) Kind() Kind  { return KindCommitAck }

// Append appends the encoding of m to dst, growing dst at most once.
func Append(dst []byte, m Message) []byte {
	dst = slices.Grow(dst, headerLen+m.fields(codec{mode: sizing}).n+trailerLen)
	start := len(dst)
	dst = append(dst, magic, version, byte(m.Kind()))
	dst = m.fields(codec{b: dst, mode: writing}).b
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// Decode decodes one message. Byte slices in it alias b.
func Decode(b []byte) (Message, error) {
	k, err := Peek(b)
	if err != nil {
		return nil, err
	}
	var m Message
	switch k {
	case KindBatch:
		m = new(Batch)
	case KindAck:
		m = new(Ack)
	case KindBusy:
		m = new(Busy)
	case KindResend:
		m = new(Resend)
	case KindStream:
		m = new(Stream)
	case KindFetch:
		m = new(Fetch)
	case KindFetchReply:
		m = new(FetchReply)
	case KindCommit:
		m = new(Commit)
	case KindCommitAck:
		m = new(CommitAck)
	case KindSubmit:
		m = new(Submit)
	case KindQuery:
		m = new(Query)
	case KindReply:
		m = new(Reply)
	case KindPresence:
		m = new(Presence)
	case KindDeliver:
		m = new(Deliver)
	case KindResult:
		m = new(Result)
	case KindLease:
		m = new(Lease)
	case KindLeaseReply:
		m = new(LeaseReply)
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", ErrInvalid, k)
	}
	c := m.fields(codec{b: b[headerLen : len(b)-trailerLen], mode: reading})
	if c.end(); c.err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, k, c.err)
	}
	return m, nil
}

// Peek verifies b's framing and checksum and returns its kind.
func Peek(b []byte) (Kind, error) {
	if len(b) < headerLen+trailerLen {
		return 0, fmt.Errorf("%w: %d bytes", ErrInvalid, len(b))
	}
	if b[0] != magic {
		return 0, fmt.Errorf("%w: bad magic %#x", ErrInvalid, b[0])
	}
	if b[1] != version {
		return 0, fmt.Errorf("%w: unsupported version %d", ErrInvalid, b[1])
	}
	n := len(b) - trailerLen
	if crc32.Checksum(b[:n], castagnoli) != binary.LittleEndian.Uint32(b[n:]) {
		return 0, fmt.Errorf("%w: checksum mismatch", ErrInvalid)
	}
	return Kind(b[2]), nil
}

// Each message states its fields once, in fields, which sizes, writes or
// reads them, checking when reading what the message promises.

func (m *Batch) fields(c codec) codec {
	c.nonEmptyName(&m.Origin)
	c.uvarint(&m.Acked)
	c.uvarint(&m.First)
	c.list(&m.Entries)
	c.check(m.First != 0 && len(m.Entries) != 0, "batch needs entries from index 1 on")
	c.check(fits(m.First, len(m.Entries)), "batch runs past index 2^64-1")
	c.check(m.Acked < m.First, "batch holds entries already acknowledged")
	return c
}

func (m *Resend) fields(c codec) codec {
	c.nonEmptyName(&m.Origin)
	c.uvarint(&m.From)
	c.check(m.From != 0, "resend from index 0")
	return c
}

func (m *Ack) fields(c codec) codec {
	c.nonEmptyName(&m.Origin)
	c.uvarint(&m.UpTo)
	return c
}

func (m *Busy) fields(c codec) codec {
	c.nonEmptyName(&m.Origin)
	c.uvarint(&m.UpTo)
	c.millis(&m.RetryAfter, "retry after", 0, time.Hour)
	return c
}

func (m *Stream) fields(c codec) codec {
	c.nonEmptyName(&m.Middletier)
	c.uvarint(&m.First)
	c.list(&m.Records)
	c.check(m.First != 0 && len(m.Records) != 0, "stream needs records from sequence 1 on")
	c.check(fits(m.First, len(m.Records)), "stream runs past sequence 2^64-1")
	return c
}

func (m *Fetch) fields(c codec) codec {
	c.nonEmptyName(&m.Consumer)
	c.uvarint(&m.From)
	c.uvarint(&m.Max)
	return c
}

func (m *FetchReply) fields(c codec) codec {
	c.nonEmptyName(&m.Middletier)
	c.uvarint(&m.Oldest)
	c.uvarint(&m.Last)
	c.uvarint(&m.First)
	c.list(&m.Records)
	c.check(len(m.Records) == 0 || m.First != 0 && fits(m.First, len(m.Records)), "fetch reply's records run past sequence 2^64-1 or start at 0")
	return c
}

// fits reports whether n items numbered from first end within a uint64.
func fits(first uint64, n int) bool { return n == 0 || first <= math.MaxUint64-uint64(n-1) }

func (m *Commit) fields(c codec) codec {
	c.nonEmptyName(&m.Consumer)
	c.uvarint(&m.Seq)
	return c
}

// A CommitAck's body is its Commit's.
func (m *CommitAck) fields(c codec) codec { return (*Commit)(m).fields(c) }
