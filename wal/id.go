package wal

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ingest-io/ingest/internal/fileutil"
)

// Every log has an identity, a random number drawn when the log is created
// and kept in a small file beside its segments. Indexes restart at 1 in a new
// log, so (identity, index) names an entry for good even when a tier's data
// directory is lost and created again; without it, a consumer that drops
// repeats by index would drop the new log's entries as repeats.
//
//	[0:4]   magic "WLID"
//	[4:12]  identity, little-endian uint64
//	[12:16] CRC32C of bytes [0:12]
const idFile = "log-id"

var idMagic = [4]byte{'W', 'L', 'I', 'D'}

var errIDDamaged = errors.New("log identity file damaged")

func encodeID(id uint64) []byte { return encodeMark(idMagic, id) }

func decodeID(b []byte) (uint64, error) { return decodeMark(idMagic, b, errIDDamaged) }

// loadID returns the log's identity, creating it for a new log. A damaged or
// missing identity file of a log that has entries is replaced by a new
// identity: consumers then see the retained entries again under the new one
// (repeats, never loss).
func loadID(dir string) (id uint64, created bool, err error) {
	path := filepath.Join(dir, idFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if id, derr := decodeID(b); derr == nil {
			return id, false, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, false, fmt.Errorf("read log identity: %w", err)
	}
	id, err = drawID(dir)
	if err != nil {
		return 0, false, err
	}
	return id, true, nil
}

// drawID draws a new identity for the log in dir and makes it durable.
func drawID(dir string) (uint64, error) {
	var (
		r  [8]byte
		id uint64
	)
	for id == 0 {
		if _, err := rand.Read(r[:]); err != nil {
			return 0, fmt.Errorf("draw log identity: %w", err)
		}
		id = binary.LittleEndian.Uint64(r[:])
	}
	if err := fileutil.WriteFileDurable(dir, idFile, encodeID(id)); err != nil {
		return 0, fmt.Errorf("write log identity: %w", err)
	}
	return id, nil
}
