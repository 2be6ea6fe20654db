package wal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ingest-io/ingest/internal/dirlock"
)

// ErrLocked is returned by Open when another Log, in this process or
// another, has the directory open: two writers would hand out the same
// indexes and overwrite each other's acknowledged entries.
var ErrLocked = errors.New("wal: directory in use by another log")

const lockFile = "LOCK"

// lockDir takes an exclusive flock on dir's lock file (dirlock.Lock). When
// another holds it, the error wraps ErrLocked and the *dirlock.HeldError
// that names the holder's process.
func lockDir(dir string) (*os.File, error) {
	f, err := dirlock.Lock(filepath.Join(dir, lockFile))
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("%w: %w", ErrLocked, err)
	}
	return f, err
}
