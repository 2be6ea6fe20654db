// Package dirlock takes the exclusive lock a process holds on a data
// directory, so that two processes (or two opens in one) never write it at
// once.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ErrLocked is returned by Lock when another open file description holds
// the lock: another process, or another open in this one.
var ErrLocked = errors.New("dirlock: held by another open")

// Lock takes an exclusive flock on the file at path, creating it. The lock
// lives as long as the returned file is open, and the kernel drops it when
// the process dies, so a crash leaves nothing to clean up.
func Lock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}
