package wal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// ErrLocked is returned by Open when another Log, in this process or
// another, has the directory open: two writers would hand out the same
// indexes and overwrite each other's acknowledged entries.
var ErrLocked = errors.New("wal: directory in use by another log")

const lockFile = "LOCK"

// lockDir takes an exclusive flock on dir's lock file. The lock lives as
// long as the returned file is open, and the kernel drops it when the
// process dies, so a crash leaves nothing to clean up.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	return f, nil
}
