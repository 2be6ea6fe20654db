//go:build unix

package wal

import (
	"os"
	"syscall"
)

// sameFileSystem reports whether the directories a and b are on one file
// system, where room freed in one is room in the other. It says yes when
// it cannot tell.
func sameFileSystem(a, b string) bool {
	if a == b {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA != nil || errB != nil {
		return true
	}
	sa, okA := fa.Sys().(*syscall.Stat_t)
	sb, okB := fb.Sys().(*syscall.Stat_t)
	return !okA || !okB || sa.Dev == sb.Dev
}
