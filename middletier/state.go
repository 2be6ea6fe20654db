package middletier

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"github.com/ingest-io/ingest/internal/fileutil"
)

// state is what a middletier keeps beside its WAL, in one file replaced
// atomically:
//
//   - Origins: for each origin, the highest index durable in the WAL. It is
//     written before the WAL is released up to Applied, so that after a
//     restart the marks of truncated entries are still known; the marks of
//     entries after Applied are recovered by reading the WAL.
//   - Consumers: each consumer's checkpoint: every durable consumer's, and
//     at most maxCheckpoints of others'.
//
// The file is the JSON encoding, then a newline and the CRC32C of the JSON
// as 8 hex digits.
type state struct {
	Applied   uint64            `json:"applied"`
	Origins   map[string]uint64 `json:"origins"`
	Consumers map[string]uint64 `json:"consumers"`
}

const stateFile = "middletier-state"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeState(s *state) ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(b, "\n%08x\n", crc32.Checksum(b, castagnoli)), nil
}

var errStateDamaged = errors.New("middletier state damaged")

func decodeState(b []byte) (*state, error) {
	// Exactly: JSON, "\n", 8 hex digits, "\n".
	i := len(b) - 10
	if i < 0 || b[i] != '\n' || b[len(b)-1] != '\n' {
		return nil, errStateDamaged
	}
	var sum uint32
	if _, err := fmt.Sscanf(string(b[i+1:i+9]), "%08x", &sum); err != nil || crc32.Checksum(b[:i], castagnoli) != sum {
		return nil, errStateDamaged
	}
	s := &state{}
	dec := json.NewDecoder(bytes.NewReader(b[:i]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("%w: %w", errStateDamaged, err)
	}
	if s.Origins == nil {
		s.Origins = map[string]uint64{}
	}
	if s.Consumers == nil {
		s.Consumers = map[string]uint64{}
	}
	return s, nil
}

func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return &state{Origins: map[string]uint64{}, Consumers: map[string]uint64{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	return decodeState(b)
}

func writeState(dir string, s *state) error {
	b, err := encodeState(s)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := fileutil.WriteFileDurable(dir, stateFile, b); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}
