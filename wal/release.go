package wal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ingest-io/ingest/internal/fileutil"
)

// The release mark records how far consumers are done. It lives in a small
// file replaced atomically: written to a temporary file, fsynced, renamed over
// the old one, and the directory fsynced.
//
//	[0:4]   magic "WREL"
//	[4:12]  released index, little-endian uint64
//	[12:16] CRC32C of bytes [0:12]
const releaseFile = "released" // written aside as released.tmp

var (
	releaseMagic      = [4]byte{'W', 'R', 'E', 'L'}
	errReleaseDamaged = errors.New("release mark damaged")
)

func encodeRelease(upTo uint64) []byte { return encodeMark(releaseMagic, upTo) }

func decodeRelease(b []byte) (uint64, error) { return decodeMark(releaseMagic, b, errReleaseDamaged) }

// readRelease returns the release mark in dir; ok is false when there is none.
func readRelease(dir string) (upTo uint64, ok bool, err error) {
	return readMark(dir, releaseFile, "release mark", decodeRelease)
}

// writeRelease makes upTo the durable release mark in dir.
func writeRelease(dir string, upTo uint64) error {
	if err := stageRelease(dir, upTo); err != nil {
		return err
	}
	return fileutil.SyncDir(dir)
}

// stageRelease writes upTo as the release mark in dir, durable once dir is
// fsynced (fileutil.StageFile). On a failure the old mark stays in place.
func stageRelease(dir string, upTo uint64) error {
	if err := fileutil.StageFile(dir, releaseFile, encodeRelease(upTo)); err != nil {
		return fmt.Errorf("write release mark: %w", err)
	}
	return nil
}

// mkdirDurable creates dir and any missing parents, and fsyncs the parent
// of dir and of every directory it created, so that the log's directory
// survives a power loss along with what is acknowledged in it. The parent
// of a directory that is there already is fsynced too: a process killed
// between its mkdir and that fsync left a name that nothing made durable.
func mkdirDurable(dir string) error {
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if _, err := os.Stat(dir); err != nil {
		if parent != dir {
			if err := mkdirDurable(parent); err != nil {
				return err
			}
		}
		if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if parent == dir {
		return nil // the root
	}
	return fileutil.SyncDir(parent)
}
