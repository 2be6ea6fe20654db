package wal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"

	"github.com/ingest-io/ingest/internal/varint"
)

// Every entry stored in tidwall/wal is a frame of our own, because tidwall/wal
// keeps no checksum: a flipped byte would come back as data and a zero-filled
// tail would open as a run of empty entries.
//
//	[0:4]  payload length, little-endian uint32
//	[4:8]  CRC32C (Castagnoli) of bytes [0:4] followed by the payload
//	[8:]   payload
//
// The checksum covers the length, so a damaged length is caught as surely as
// a damaged payload.
const frameHeaderSize = 8

// maxPayload is the largest payload a frame can describe.
const maxPayload = 1<<32 - 1 - frameHeaderSize

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	errShortFrame     = errors.New("frame shorter than its header")
	errLengthMismatch = errors.New("frame length does not match its header")
	errChecksum       = errors.New("frame checksum mismatch")
)

// appendFrame appends the frame holding payload to dst.
func appendFrame(dst, payload []byte) []byte {
	var hdr [frameHeaderSize]byte
	binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	crc := crc32.Update(0, castagnoli, hdr[0:4])
	crc = crc32.Update(crc, castagnoli, payload)
	binary.LittleEndian.PutUint32(hdr[4:8], crc)
	dst = append(dst, hdr[:]...)
	return append(dst, payload...)
}

// decodeFrame verifies a frame and returns its payload, which aliases b.
func decodeFrame(b []byte) ([]byte, error) {
	if len(b) < frameHeaderSize {
		return nil, errShortFrame
	}
	n := binary.LittleEndian.Uint32(b[0:4])
	if uint64(n) != uint64(len(b)-frameHeaderSize) {
		return nil, errLengthMismatch
	}
	crc := crc32.Update(0, castagnoli, b[0:4])
	crc = crc32.Update(crc, castagnoli, b[frameHeaderSize:])
	if crc != binary.LittleEndian.Uint32(b[4:8]) {
		return nil, errChecksum
	}
	return b[frameHeaderSize:], nil
}

// storedSize is the number of bytes tidwall/wal uses on disk for a frame of
// frameLen bytes in its binary format: a uvarint length, then the frame.
func storedSize(frameLen int) int {
	return varint.Len(uint64(frameLen)) + frameLen
}
