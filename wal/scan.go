package wal

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// segment describes one segment file as found by the open-time scan.
type segment struct {
	name  string // file name: the first index, 20 digits
	first uint64 // index of its first entry
	count uint64 // entries in it
	size  int64  // bytes in the file
}

// scanResult is what the open-time scan learnt about the log on disk.
type scanResult struct {
	segs    []segment
	sizes   []int64 // payload size of every entry, from segs[0].first on
	repairs int     // torn tails truncated
}

func segmentName(index uint64) string {
	return fmt.Sprintf("%020d", index)
}

// listSegments returns the segment files in dir in index order, first
// finishing what an interrupted truncation left behind, exactly as
// tidwall/wal would on open: a NAME.START file holds the surviving rest of a
// truncated segment, and every segment before it is to be removed.
func listSegments(dir string) ([]segment, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read dir: %w", err)
	}
	var segs []segment
	start := -1
	for _, de := range des {
		name := de.Name()
		if de.IsDir() || len(name) < 20 {
			continue
		}
		if strings.HasSuffix(name, ".TEMP") {
			// A truncation that died before its START file was complete.
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("remove leftover: %w", err)
			}
			continue
		}
		index, err := strconv.ParseUint(name[:20], 10, 64)
		if err != nil || index == 0 {
			continue
		}
		switch {
		case len(name) == 20:
		case name[20:] == ".START":
			start = len(segs)
		case name[20:] == ".END":
			return nil, &CorruptionError{Segment: name, Offset: -1, Index: index,
				Err: fmt.Errorf("unexpected back-truncation file")}
		default:
			continue
		}
		segs = append(segs, segment{name: name, first: index})
	}
	if start < 0 {
		return segs, nil
	}
	for _, s := range segs[:start] {
		if err := os.Remove(filepath.Join(dir, s.name)); err != nil {
			return nil, fmt.Errorf("finish truncation: %w", err)
		}
	}
	segs = segs[start:]
	final := segs[0].name[:20]
	if err := os.Rename(filepath.Join(dir, segs[0].name), filepath.Join(dir, final)); err != nil {
		return nil, fmt.Errorf("finish truncation: %w", err)
	}
	segs[0].name = final
	return segs, syncDir(dir)
}

// scan reads and verifies every entry of every segment. Zeros after a
// segment's last entry are its free space (segments are preallocated). Damage
// in the last segment that no intact entry follows is a torn tail (the write
// that was in progress when the process died): it is truncated away and
// fsynced. Any other damage is a *CorruptionError.
func scan(dir string, lg *slog.Logger) (*scanResult, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	res := &scanResult{}
	for i := range segs {
		s := &segs[i]
		if i > 0 {
			prev := segs[i-1]
			if want := prev.first + prev.count; s.first != want {
				return nil, &CorruptionError{Segment: segmentName(want), Offset: -1, Index: want,
					Err: fmt.Errorf("%w: next segment starts at %d", errMissingSegment, s.first)}
			}
		}
		path := filepath.Join(dir, s.name)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read segment: %w", err)
		}
		pos := 0
		for pos < len(data) {
			if data[pos] == 0 && isZero(data[pos:]) {
				// The rest of a preallocated segment (spare.go).
				data = data[:pos]
				break
			}
			payload, n, ferr := nextEntry(data[pos:])
			if ferr == nil {
				res.sizes = append(res.sizes, int64(len(payload)))
				s.count++
				pos += n
				continue
			}
			cerr := &CorruptionError{Segment: s.name, Offset: int64(pos), Index: s.first + s.count, Err: ferr}
			if i != len(segs)-1 {
				return nil, cerr
			}
			if next := intactAfter(data, pos); next >= 0 && !lostSector(data, pos, next) {
				return nil, cerr
			}
			if err := truncateFile(path, int64(pos)); err != nil {
				return nil, fmt.Errorf("repair torn tail: %w", err)
			}
			if lg != nil {
				lg.Warn("wal: repaired torn tail", "dir", dir, "segment", s.name,
					"offset", pos, "bytes_dropped", len(data)-pos, "cause", ferr)
			}
			res.repairs++
			data = data[:pos]
		}
		s.size = int64(len(data))
	}
	res.segs = segs
	return res, nil
}

// nextEntry decodes the entry at the start of b as tidwall/wal stores it (a
// uvarint length, then our frame) and returns its payload and stored size.
func nextEntry(b []byte) (payload []byte, n int, err error) {
	size, m := binary.Uvarint(b)
	if m <= 0 || uint64(len(b)-m) < size {
		return nil, 0, errShortFrame
	}
	end := m + int(size)
	payload, err = decodeFrame(b[m:end])
	return payload, end, err
}

// intactAfter returns where the first intact entry after the damage at pos
// starts, or -1. A torn write leaves nothing intact behind it; damage
// followed by an intact entry is corruption of data that was once durable,
// unless a lost sector explains it (lostSector).
func intactAfter(data []byte, pos int) int {
	for p := pos + 1; p+1+frameHeaderSize <= len(data); p++ {
		if _, _, err := nextEntry(data[p:]); err == nil {
			return p
		}
	}
	return -1
}

// lostSector reports whether the damage from pos to the intact entry at next
// is what a power loss leaves of an unacknowledged write: a 512-byte sector
// that ends by next reads as zeros from its start, or from pos if it starts
// before pos. Acknowledged entries are a durable prefix of the segment, so
// in the last segment the bytes from pos on were never acknowledged; a
// power loss during their sync can keep some of their sectors and lose
// others (in a preallocated file no change of size orders them), and a
// lost sector keeps its old contents: the zeros of the preallocated file,
// or of blocks never written. Damage of any other shape is refused.
func lostSector(data []byte, pos, next int) bool {
	const sector = 512
	for end := (pos/sector + 1) * sector; end <= next; end += sector {
		if isZero(data[max(pos, end-sector):end]) {
			return true
		}
	}
	return false
}

func truncateFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
