package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// The log's identity, its release mark and its size mark are each a small
// file of one number, in the same 16 bytes:
//
//	[0:4]   magic, which names the file's kind
//	[4:12]  the number, little-endian uint64
//	[12:16] CRC32C of bytes [0:12]
const markSize = 16

func encodeMark(magic [4]byte, v uint64) []byte {
	b := make([]byte, markSize)
	copy(b[0:4], magic[:])
	binary.LittleEndian.PutUint64(b[4:12], v)
	binary.LittleEndian.PutUint32(b[12:16], crc32.Checksum(b[0:12], castagnoli))
	return b
}

// decodeMark returns the number of a mark of kind magic, or damaged when b
// is not one.
func decodeMark(magic [4]byte, b []byte, damaged error) (uint64, error) {
	if len(b) != markSize || [4]byte(b[0:4]) != magic ||
		crc32.Checksum(b[0:12], castagnoli) != binary.LittleEndian.Uint32(b[12:16]) {
		return 0, damaged
	}
	return binary.LittleEndian.Uint64(b[4:12]), nil
}

// readMark reads the mark file name in dir with decode; ok is false when
// there is none. what names the mark in a read error.
func readMark[V any](dir, name, what string, decode func([]byte) (V, error)) (v V, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return v, false, nil
	}
	if err != nil {
		return v, false, fmt.Errorf("read %s: %w", what, err)
	}
	v, err = decode(b)
	if err != nil {
		return v, false, err
	}
	return v, true, nil
}
