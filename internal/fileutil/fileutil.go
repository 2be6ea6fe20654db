// Package fileutil writes the small files the engine keeps beside its logs
// (release marks, size marks, the middletier's state) so that a power loss
// leaves either the old file or the new one, never a torn one.
package fileutil

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFileDurable replaces dir/name with b atomically and durably
// (StageFile, then an fsync of dir).
func WriteFileDurable(dir, name string, b []byte) error {
	if err := StageFile(dir, name, b); err != nil {
		return err
	}
	return SyncDir(dir)
}

// StageFile replaces dir/name with b atomically: written aside, fsynced and
// renamed into place; the rename is durable once dir is fsynced. A failure
// leaves the old file as it was and no temporary file behind, so that a
// full disk keeps no half-written file: trying again later is safe, since
// nothing of the failed attempt is ever read.
func StageFile(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// SyncDir fsyncs a directory, so that files created, renamed or removed in it
// survive a power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	return nil
}
