package wal

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ingest-io/ingest/internal/fileutil"
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
	repairs int     // torn tails removed, truncated segments repaired
	dropped int     // entries, whole or partial, that repairs removed
	newID   bool    // a repair drew a new log identity
}

// scanOptions say how the open-time scan judges and repairs the last
// segment.
type scanOptions struct {
	lg *slog.Logger
	// createdSize is the size every segment file was created with (the
	// size mark), or 0 when segments may be shorter (sizemark.go). A last
	// segment shorter than it was truncated, which no crash does.
	createdSize int64
	// repairTruncated repairs a truncated last segment rather than refuse
	// it (Options.RepairTruncated).
	repairTruncated bool
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
	return segs, fileutil.SyncDir(dir)
}

// scan reads and verifies every entry of every segment. Zeros after a
// segment's last entry are its free space (segments are preallocated). Damage
// in the last segment that no intact entry follows is a torn tail (the write
// that was in progress when the process died): it is removed and the file
// synced. A last segment shorter than its created size was truncated: it is
// a *CorruptionError unless o.repairTruncated. Any other damage is a
// *CorruptionError. Every repair is logged with the index of the first entry
// it removes and how many it removes.
func scan(dir string, o scanOptions) (*scanResult, error) {
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
		fileSize := int64(len(data))
		pos := 0
		var ferr error
		for pos < len(data) {
			if data[pos] == 0 && isZero(data[pos:]) {
				break // the rest of a preallocated segment (spare.go)
			}
			payload, n, err := nextEntry(data[pos:])
			if err != nil {
				ferr = err
				break
			}
			res.sizes = append(res.sizes, int64(len(payload)))
			s.count++
			pos += n
		}
		s.size = int64(pos)
		last := i == len(segs)-1
		if ferr != nil {
			cerr := &CorruptionError{Segment: s.name, Offset: int64(pos), Index: s.first + s.count, Err: ferr}
			if !last {
				return nil, cerr
			}
			if next := intactAfter(data, pos); next >= 0 && !lostSector(data, pos, next) {
				return nil, cerr
			}
		}
		if !last {
			continue
		}
		next := s.first + s.count // index of the first entry not kept
		switch {
		case o.createdSize > 0 && fileSize < o.createdSize:
			terr := &CorruptionError{Segment: s.name, Offset: int64(pos), Index: next,
				Err: fmt.Errorf("%w: %d bytes, created with %d: whatever it held from index %d on is gone, acknowledged entries among it; "+
					"the repair option keeps its %d whole entries and gives the log a new identity",
					ErrTruncated, fileSize, o.createdSize, next, s.count)}
			if !o.repairTruncated {
				return nil, terr
			}
			dropped := 0
			if ferr != nil {
				dropped = droppedEntries(data, pos)
			}
			// The entries from next on may have reached consumers: the
			// indexes they had must not name other entries under the same
			// identity. The new identity is durable before the segment
			// changes, so a crash in between repairs again.
			if _, err := drawID(dir); err != nil {
				return nil, fmt.Errorf("repair truncated segment: %w", err)
			}
			res.newID = true
			if _, err := zeroAfter(path, int64(pos)); err != nil {
				return nil, fmt.Errorf("repair truncated segment: %w", err)
			}
			if o.lg != nil {
				o.lg.Error("wal: repaired a truncated segment: entries from the first lost index on are gone, "+
					"how many cannot be known; the log has a new identity", "dir", dir, "segment", s.name,
					"bytes", fileSize, "created_bytes", o.createdSize, "kept_entries", s.count,
					"first_lost_index", next, "partial_entries_dropped", dropped)
			}
			res.repairs++
			res.dropped += dropped
		case ferr != nil:
			dropped := droppedEntries(data, pos)
			var (
				extent int64
				err    error
			)
			if o.createdSize > 0 {
				// The file keeps its created size (sizemark.go).
				extent, err = zeroAfter(path, int64(pos))
			} else {
				extent = nonZeroExtent(data, pos)
				err = truncateFile(path, int64(pos))
			}
			if err != nil {
				return nil, fmt.Errorf("repair torn tail: %w", err)
			}
			if o.lg != nil {
				o.lg.Warn("wal: repaired torn tail (an unacknowledged write cut short)", "dir", dir, "segment", s.name,
					"offset", pos, "bytes_dropped", extent, "first_dropped_index", next,
					"entries_dropped", dropped, "cause", ferr)
			}
			res.repairs++
			res.dropped += dropped
		}
	}
	res.segs = segs
	return res, nil
}

// droppedEntries counts the entries a repair at pos removes: the damaged one
// at pos, and every intact one after it. Entries wholly inside damaged
// bytes cannot be told apart, so it is a lower bound.
func droppedEntries(data []byte, pos int) int {
	n := 1
	for p := intactAfter(data, pos); p >= 0; {
		_, m, err := nextEntry(data[p:])
		if err != nil {
			n++ // damage again
			p = intactAfter(data, p)
			continue
		}
		n++
		p += m
		if p >= len(data) || data[p] == 0 && isZero(data[p:]) {
			break
		}
	}
	return n
}

// nonZeroExtent returns how many bytes from pos to the last non-zero byte
// of data there are.
func nonZeroExtent(data []byte, pos int) int64 {
	end := len(data)
	for end > pos && data[end-1] == 0 {
		end--
	}
	return int64(end - pos)
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
