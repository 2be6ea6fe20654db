//go:build linux

// Package tmpfs mounts small tmpfs file systems for tests that need a disk
// that fills up: a write-ahead log or a store meeting ENOSPC, and recovering
// once room is freed. Mounting needs privileges (root, or CAP_SYS_ADMIN);
// where it is not permitted the test is skipped, saying why.
package tmpfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Mount mounts a tmpfs of size bytes on a new directory and returns it. It
// is unmounted when the test ends, after the cleanups the test registers
// later (which close what is open in it).
func Mount(t testing.TB, size int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0750", size)); err != nil {
		t.Skipf("mount -t tmpfs -o size=%d %s: %v (mounting needs root or CAP_SYS_ADMIN; this test needs a disk it can fill)", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// Fill writes a file of zeros in dir until the file system is full, and
// returns its path: removing it frees the room.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatalf("fill %s: %v", dir, err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for size := len(buf); size > 0; {
		_, err := f.Write(buf[:size])
		switch {
		case errors.Is(err, syscall.ENOSPC):
			size /= 2 // what is left may be less than a chunk
		case err != nil:
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
	return path
}

// Free returns the bytes free in the file system holding dir.
func Free(t testing.TB, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}
