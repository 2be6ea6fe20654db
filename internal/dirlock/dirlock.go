// Package dirlock takes the exclusive lock a process holds on a data
// directory, so that two processes (or two opens in one) never write it at
// once. The holder writes its process id into the lock file, so that a
// refused open can say which process holds the directory.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ErrLocked is returned by Lock, wrapped in a *HeldError, when another open
// file description holds the lock: another process, or another open in this
// one.
var ErrLocked = errors.New("dirlock: held by another open")

// HeldError says that the lock at Path is held, and by which process when
// its holder wrote its id there. It wraps ErrLocked.
type HeldError struct {
	Path string
	// PID is the holder's process id, 0 if the file does not name one (a
	// holder between taking the lock and writing its id).
	PID int
}

func (e *HeldError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("dirlock: %s held by pid %d", e.Path, e.PID)
	}
	return fmt.Sprintf("dirlock: %s held by another open", e.Path)
}

func (e *HeldError) Unwrap() error { return ErrLocked }

// Lock takes an exclusive flock on the file at path, creating it, and
// writes the process id into it. The lock lives as long as the returned
// file is open, and the kernel drops it when the process dies, so a crash
// leaves nothing to clean up: a process id left in the file by a process
// gone is overwritten by the next holder, and never read while the lock is
// free.
func Lock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &HeldError{Path: path, PID: readPID(f)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// The id is a hint for the error above, not state: it is not synced,
	// and failing to write it does not fail the lock.
	if f.Truncate(0) == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// readPID reads the process id a holder wrote into the lock file, 0 if none.
func readPID(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
