package embedded

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ingest-io/ingest/internal/dirlock"
	"github.com/prometheus/prometheus/tsdb/record"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/prometheus/prometheus/util/compression"
)

// What Open does to a TSDB directory that a process did not close
// cleanly (a crash, SIGKILL, power loss), before the library opens it.
// The library (github.com/prometheus/prometheus v0.316.0) loses
// out-of-order samples it had reported stored when it restarts after a
// crash, in two ways; TestTSDBCrash finds both, TestTSDBTornWAL shows the
// first deterministically. docs/storage.md, "Crash safety", tells the story.
//
//   - A WAL whose last record is torn (a commit cut short: never
//     acknowledged) is repaired by tsdb.Open, which then starts without
//     replaying the write-behind log (WBL): its out-of-order samples are
//     missing from the head, and from what the next compaction writes.
//     repairWAL does the library's repair first, so that tsdb.Open finds a
//     whole WAL and replays both logs.
//   - The head writes the chunks it cuts to chunks_head through a buffer
//     in memory, and logs to the WBL a marker naming each out-of-order
//     chunk it cuts: at replay a marker means "the samples before me are in
//     that chunk on disk" and drops them from the rebuilt head. A crash
//     loses the buffer, so markers name chunks that never reached the disk.
//     Replay ignores markers past the last chunk on disk, but once a later
//     run has written chunks after the lost ones they look satisfied, and
//     the samples before them that the later run's chunks do not hold (it
//     cut its chunks from the replayed samples at other places) are gone.
//     stripWBLMarkers rewrites the WBL without its markers: replay then
//     takes every sample in the WBL into the head, and a sample also in a
//     chunk on disk is read once (queries and compaction merge samples of
//     one series and time).

// cleanMark is the file in the TSDB's directory that says the last process
// closed it: Close writes it after everything is durable, Open removes
// it before anything is written.
const cleanMark = "ingest-closed-cleanly"

// lockFile is this package's lock on a TSDB directory: recoverTSDB changes
// the directory before the library takes its own lock.
const lockFile = "ingest.lock"

// lockTSDB takes an exclusive flock on dir's lock file (creating dir).
func lockTSDB(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("storage: open tsdb: %w", err)
	}
	f, err := dirlock.Lock(filepath.Join(dir, lockFile))
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("storage: open tsdb: %s is in use by another process: %w", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: open tsdb: %w", err)
	}
	return f, nil
}

// recoverTSDB prepares the TSDB in dir for tsdb.Open. A new directory, or
// one closed cleanly, is left as it is but for the clean mark, which is
// removed so that a crash of this process is seen at the next start.
func recoverTSDB(dir string, lg *slog.Logger) error {
	wblDir := filepath.Join(dir, "wbl")
	if err := finishWBLRewrite(wblDir); err != nil {
		return err
	}
	mark := filepath.Join(dir, cleanMark)
	if _, err := os.Stat(mark); err == nil {
		// A clean close fsynced both logs whole before it wrote the mark:
		// damage in them now is no crash's, and the library's repair
		// would cut the log there, dropping the samples after it. The
		// mark stays, so that every start refuses it until it is dealt
		// with.
		for _, name := range []string{"wal", "wbl"} {
			if _, err := checkLog(filepath.Join(dir, name), true); err != nil {
				return err
			}
		}
		if err := os.Remove(mark); err != nil {
			return fmt.Errorf("storage: open tsdb: %w", err)
		}
		if err := syncPath(dir, (*os.File).Sync); err != nil {
			return fmt.Errorf("storage: open tsdb: %w", err)
		}
		return nil
	}
	if err := repairWAL(filepath.Join(dir, "wal"), lg); err != nil {
		return err
	}
	// The write-behind log's torn tail is cut by the library (after the
	// WAL's replay, which repairWAL made whole) or by the rewrite below;
	// damage before its newest segment is refused, as the WAL's is.
	if _, err := checkLog(wblDir, false); err != nil {
		return err
	}
	return stripWBLMarkers(wblDir, lg)
}

// checkLog reads the write log (the WAL or the WBL) in dir whole. A
// record that does not read back in its newest segment holding data may be
// the tail a crash tore, unless the last process closed the TSDB cleanly:
// that damage is returned as torn, for the caller to cut. Any other damage
// is an error that names the log: cutting the log there, as the library's
// repair does, would drop the acknowledged samples after it.
func checkLog(dir string, clean bool) (torn *wlog.CorruptionErr, err error) {
	first, last, err := wlog.Segments(dir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && last < 0) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("storage: open tsdb: read %s: %w", dir, err)
	}
	newest := first // the newest segment holding data
	for i := first; i <= last; i++ {
		if st, err := os.Stat(wlog.SegmentName(dir, i)); err == nil && st.Size() > 0 {
			newest = i
		}
	}
	sr, err := wlog.NewSegmentsRangeReader(wlog.SegmentRange{Dir: dir, First: first, Last: last})
	if err != nil {
		return nil, fmt.Errorf("storage: open tsdb: read %s: %w", dir, err)
	}
	r := wlog.NewReader(sr)
	for r.Next() {
	}
	rerr := r.Err()
	sr.Close()
	if rerr == nil {
		return nil, nil
	}
	cerr, ok := errors.AsType[*wlog.CorruptionErr](rerr)
	switch {
	case ok && !clean && cerr.Segment >= newest:
		return cerr, nil
	case clean:
		return nil, fmt.Errorf("storage: open tsdb: the TSDB was closed cleanly and its log %s is damaged since, which no crash does; not cutting it there, which would drop the samples after it (move %s aside to start without them): %w", dir, dir, rerr)
	}
	return nil, fmt.Errorf("storage: open tsdb: the TSDB's log %s is damaged before its last segment, which no crash does; not cutting it there, which would drop the samples after it (move %s aside to start without them): %w", dir, dir, rerr)
}

// repairWAL reads the WAL in walDir whole. A record that does not read back
// in its newest segment holding data is the tail a crash tore: the WAL is
// cut before it, as tsdb.Open would. Damage in an earlier segment is not a
// crash's: cutting there would drop acknowledged samples after it, so it
// is an error, and the writer does not start.
func repairWAL(walDir string, lg *slog.Logger) error {
	cerr, err := checkLog(walDir, false)
	if err != nil || cerr == nil {
		return err
	}
	lg.Warn("storage: the TSDB's WAL ends in a record a crash cut short (never acknowledged); cutting it there", "segment", cerr.Segment, "offset", cerr.Offset, "err", cerr.Err)
	w, err := wlog.NewSize(lg, nil, walDir, wlog.DefaultSegmentSize, compression.None)
	if err != nil {
		return fmt.Errorf("storage: open tsdb: repair wal: %w", err)
	}
	if err := w.Repair(cerr); err != nil {
		w.Close()
		return fmt.Errorf("storage: open tsdb: repair wal: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("storage: open tsdb: repair wal: %w", err)
	}
	return syncPath(walDir, (*os.File).Sync)
}

// stripWBLMarkers rewrites the WBL in wblDir without its m-map marker
// records, into wblDir+".rewrite", then swaps the two directories
// (finishWBLRewrite completes a swap a crash interrupted). A WBL without
// markers is left as it is.
func stripWBLMarkers(wblDir string, lg *slog.Logger) error {
	first, last, err := wlog.Segments(wblDir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && last < 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: open tsdb: read wbl: %w", err)
	}
	markers, err := countWBLMarkers(wblDir, first, last)
	if err != nil || markers == 0 {
		return err
	}
	lg.Warn("storage: the TSDB was not closed cleanly; rewriting its write-behind log without its chunk markers, so that replay takes every out-of-order sample", "markers", markers)
	tmp := wblDir + ".rewrite"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("storage: open tsdb: %w", err)
	}
	w, err := wlog.NewSize(lg, nil, tmp, wlog.DefaultSegmentSize, compression.None)
	if err != nil {
		return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
	}
	var dec record.Decoder
	for i := first; i <= last; i++ {
		sr, err := wlog.NewSegmentsRangeReader(wlog.SegmentRange{Dir: wblDir, First: i, Last: i})
		if err != nil {
			w.Close()
			return fmt.Errorf("storage: open tsdb: read wbl: %w", err)
		}
		// Up to the first damage, as the library's repair of a torn
		// tail would cut it.
		r := wlog.NewReader(sr)
		for r.Next() {
			rec := r.Record()
			if dec.Type(rec) == record.MmapMarkers {
				continue
			}
			if err := w.Log(rec); err != nil {
				sr.Close()
				w.Close()
				return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
			}
		}
		sr.Close()
		if i < last {
			if _, err := w.NextSegmentSync(); err != nil {
				w.Close()
				return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
			}
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
	}
	if err := syncTree(tmp, (*os.File).Sync); err != nil {
		return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
	}
	old := wblDir + ".old"
	if err := os.Rename(wblDir, old); err != nil {
		return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
	}
	if err := os.Rename(tmp, wblDir); err != nil {
		return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
	}
	if err := syncPath(filepath.Dir(wblDir), (*os.File).Sync); err != nil {
		return fmt.Errorf("storage: open tsdb: rewrite wbl: %w", err)
	}
	return finishWBLRewrite(wblDir)
}

// countWBLMarkers counts the m-map marker records in segments first to
// last of the WBL in dir, reading up to the first damage.
func countWBLMarkers(dir string, first, last int) (int, error) {
	sr, err := wlog.NewSegmentsRangeReader(wlog.SegmentRange{Dir: dir, First: first, Last: last})
	if err != nil {
		return 0, fmt.Errorf("storage: open tsdb: read wbl: %w", err)
	}
	defer sr.Close()
	var dec record.Decoder
	r := wlog.NewReader(sr)
	n := 0
	for r.Next() {
		if dec.Type(r.Record()) == record.MmapMarkers {
			n++
		}
	}
	return n, nil
}

// finishWBLRewrite completes or undoes a swap of the WBL that a crash
// interrupted: a rewrite not yet swapped in is dropped; once the rewrite
// is in place, the old log is removed; with neither in place, the old log
// goes back.
func finishWBLRewrite(wblDir string) error {
	old, tmp := wblDir+".old", wblDir+".rewrite"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("storage: open tsdb: %w", err)
	}
	if _, err := os.Stat(old); err != nil {
		return nil
	}
	if _, err := os.Stat(wblDir); err == nil {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("storage: open tsdb: %w", err)
		}
	} else if err := os.Rename(old, wblDir); err != nil {
		return fmt.Errorf("storage: open tsdb: %w", err)
	}
	return syncPath(filepath.Dir(wblDir), (*os.File).Sync)
}
