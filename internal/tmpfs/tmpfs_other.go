//go:build !linux

package tmpfs

import "testing"

// Mount skips the test: tmpfs is mounted on Linux only.
func Mount(t testing.TB, size int64) string {
	t.Skip("mounting a tmpfs needs Linux")
	return ""
}

// Fill is not reached: Mount skips.
func Fill(t testing.TB, dir string) string { return "" }

// Free is not reached: Mount skips.
func Free(t testing.TB, dir string) int64 { return 0 }
