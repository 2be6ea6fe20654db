// Package wal is the durable queue every tier of the engine builds on: a
// write-ahead log of opaque entries, appended by many goroutines, read in
// order by a consumer, and released when the next hop has made the entries
// durable in its turn.
//
// It is built on github.com/tidwall/wal and adds what that library leaves to
// its user: group commit, checksums, torn-tail repair, a bound, a durable
// release mark with background truncation, and metrics. The engine builds
// with a copy of tidwall/wal patched to size its in-memory copy of the tail
// segment once per segment rather than grow it by append, which was most
// of a busy frontend's allocation (third_party/tidwall-wal/README.ingest.md).
//
// # Durability
//
// Append and AppendBatch return only after a sync that covers their
// entries: fdatasync(2) of the segment file (fsync where the system has no
// fdatasync), which flushes the data and whatever metadata reading it back
// needs, such as a grown size. Whatever they returned an index for survives
// the process being killed at any instant, and survives a power loss on a
// file system that honours fsync (new segment files are made durable by an
// fsync of the directory as well). An append that returned an error, or
// whose context ended first, may or may not be in the log after a crash:
// the caller has not acknowledged it, and sending it again can only repeat
// it.
//
// Appends are group-committed: one goroutine writes whatever appends are
// waiting with one write and one sync. A lone appender pays one sync;
// concurrent appenders share it. Options.CommitInterval spaces the
// commits: an append that comes within it of the last commit's start
// waits for the rest of it and shares the next. Where many appenders each
// wait for their own small append, as a frontend's thousands of devices
// sending a message a second do, a fast disk would otherwise sync for one
// or two entries at a time, and the syncs and the wake-ups around them
// would cost most of the process's CPU. The interval bounds the syncs a
// second, at the cost of up to that much latency for each append, plus
// the timer slack by which the wait may overrun; one that comes later is
// committed at once.
//
// Segment files are preallocated (unless Options.NoPreallocate): a
// goroutine writes the next segment's file of zeros ahead of need and
// fsyncs it, the log renames it into place when it moves to a new segment,
// and entries then overwrite the zeros. A sync then has no size or block
// allocation to commit, only data: on ext4 that halved the sync that every
// acknowledgement waits for (docs/benchmarks.md, "WAL"). When no spare is
// ready, the segment is a sparse file of the same size instead, made aside
// and renamed into place, whose blocks are allocated as it is written.
// Either way a segment has its full size from the moment it has its name
// (the size mark, segment-size, records it), which is what lets Open tell a
// truncated segment from what a crash leaves (Integrity). The zeros after a
// segment's last entry are its free space; a zero byte where an entry would
// start ends the segment, which no entry can begin with. Preallocation
// costs one segment of disk (SegmentBytes plus a sixteenth) for the spare
// file, segment.spare, and up to a sixteenth of a segment per segment.
//
// # Order
//
// Indexes are consecutive from 1 and never reused. An entry's index is fixed
// when it is committed, so (log identity, index) names an entry for good.
// Entries of one AppendBatch have consecutive indexes. Entries appended by
// one goroutine, one call after another, are in the order of the calls.
// Readers see entries in index order, and only committed ones.
//
// # Release and repetition
//
// Release(upTo) says consumers are done with every entry up to upTo. Their
// room under the bound is freed at once. AppendReplacing appends entries
// that restate what the caller will then release (a compaction): they are
// admitted as if that were released already, so that a log its own
// entries filled, or one reopened over its bound, can still be compacted. The mark is written to a small file
// (written aside, fsynced, renamed into place, directory fsynced) in the
// background, at most once per Options.MarkInterval (the releases in between
// share one write; Close writes the last), and segments wholly below it are then removed in the
// background: a segment stays whole, released entries and all, until the
// mark passes its end, so truncation never rewrites a file. Segments that
// the durable mark released when the log is opened (Close writes the last
// mark after the truncations have stopped) are removed then. FirstIndex
// may therefore be below the mark. After a restart, Cursor(0) starts at the first entry after the
// durable mark: entries released just before a crash may be read again. A
// consumer must therefore tolerate repeats, never gaps; the log never skips
// an entry that was not released.
//
// # Identity
//
// A log draws a random identity when it is created (Log.ID) and keeps it
// beside its segments. Indexes restart at 1 in a new log, so consumers name
// an entry by (identity, index): losing and re-creating a data directory then
// cannot make new entries look like repeats of old ones.
//
// # Integrity
//
// Every entry carries its length and a CRC32C, verified when the log is
// opened and on every read. At open:
//
//   - zeros after a segment's last entry are its free space, not damage;
//   - damage in the last segment that no intact entry follows is a torn tail
//     (the write in progress when the process died, or what a power loss
//     left of writes that were never acknowledged): it is removed (zeroed
//     in place in a preallocated log, truncated away otherwise), fsynced,
//     logged with the index of the first entry it drops and how many, and
//     counted in ingest_wal_repairs_total and
//     ingest_wal_dropped_entries_total. So is
//     damage in the last segment followed by intact entries when a lost
//     sector explains it: a 512-byte sector ending before the next intact
//     entry reads as zeros from its start (or from the damage on).
//     Acknowledged entries are a durable prefix of the segment, so that is
//     an unacknowledged write of which a power loss kept some sectors and
//     lost others, which kept their old zeros (in a preallocated file no
//     change of size orders them); the entries after it were never
//     acknowledged either;
//   - a last segment shorter than the size segments are created with (the
//     size mark) cannot be what a crash left: it was cut, and whatever it
//     held past its end is gone, acknowledged entries among it, how many
//     cannot be known. Open fails with a *CorruptionError naming the
//     segment, the offset where its whole entries end and the first index
//     that may be lost, unless Options.RepairTruncated is set (the
//     --wal.repair flag of the tiers): then it keeps the whole entries,
//     drops a partial one, logs at error level the first lost index and
//     what it dropped, counts them, and draws a new log identity before it
//     changes anything, since entries past the cut may have reached
//     consumers under indexes that new entries will take (a release mark
//     past the cut moves back to the last entry kept). A log whose
//     segments grew as they were written (Options.NoPreallocate, or an
//     engine from before the mark) has no mark, and a short last segment
//     there cannot be told from a sound one: such a log gets the mark, its
//     last segment extended to full size, the first time it is opened with
//     preallocation;
//   - any other damage (damage followed by intact entries, damage in an
//     earlier segment, a segment missing from the sequence) makes Open fail
//     with a *CorruptionError naming the segment, offset and index. Damaged
//     data is never skipped and never returned as data;
//   - a damaged release mark is reset to the first entry on disk (entries are
//     repeated, none lost), logged and counted as a repair.
//
// Deciding between a torn tail and corruption, the log never guesses in the
// direction that loses data: a torn write whose surviving bytes happen to
// hold something that decodes as an intact entry (a payload embedding this
// package's framing) is refused as corruption rather than truncated, since
// the same bytes could be acknowledged entries behind a damaged length.
//
// Open reads every segment to verify it, so opening takes time in proportion
// to the data retained: 0.26 s for 256 MiB in the page cache here
// (BenchmarkOpen, docs/benchmarks.md).
//
// # Bound and failure
//
// Options.MaxBytes and Options.MaxEntries bound the unreleased entries. At
// the bound, Append returns ErrFull at once, having written nothing: the
// caller turns that into backpressure. Append never blocks on the bound and
// never drops. A caller that must hold its entries until they fit waits on
// Room, taken before the append, which is closed when room may have been
// made (a release; the end of a full disk's NoSpaceRetry; a failure or
// Close), instead of trying again on a timer.
//
// A full file system is backpressure too, not a failure. A write that
// fails with ENOSPC or EDQUOT, with no fsync having failed, is undone:
// tidwall/wal is closed and opened again from the files once they are put
// back as they were before the write (segment files it started removed,
// the bytes it left after the last entry zeroed and fsynced), and the
// appends of that group commit return ErrNoSpace, nothing of them written.
// For Options.NoSpaceRetry after that, appends return ErrNoSpace at once;
// then the next group commit tries the disk again, and the first that
// succeeds ends it. A release mark that cannot be written for lack of room
// leaves the old mark in place (a crash repeats entries, and loses none)
// and is written again every NoSpaceRetry; released segments stay on disk
// until it is. A disk the log has filled itself would never empty that
// way, since only the mark lets its segments go: the log keeps a reserve
// file of 256 KiB (reserve.go), which it removes to write a mark that lets
// a whole segment go, and makes again after the next truncation; in
// between, appends are refused with ErrNoSpace without writing, so that
// they cannot take the room the mark needs. A tier whose own state must be
// durable before it releases spends it the same way (SpendReserve), when
// that state is on the log's file system. A spare segment the disk has no room for is not kept
// half written. ingest_wal_no_space is 1 while appends are refused or the
// mark is unwritten for lack of room.
//
// Any other failed write, and every failed fsync or truncation, is sticky
// (fail stop): after it the page cache and the disk may disagree, so every
// later Append returns that error until the log is closed and reopened,
// which recovers from what is on disk. An fsync is never retried. The tiers
// exit after such a failure, so that whatever supervises them starts them
// again and the log is reopened.
//
// One Log at a time may have a directory open: Open takes an exclusive
// flock on the directory's LOCK file and returns ErrLocked if another Log,
// in this process or another, holds it; the error also wraps a
// *dirlock.HeldError naming the holder's process id, which the holder
// writes into LOCK. The kernel drops the lock when the process dies.
//
// Known limits: the size check needs the size mark, so a log run with
// Options.NoPreallocate cannot tell a cut last segment from a short one, and
// it relies on the file system keeping the order of a file's size change
// and its rename (journalled file systems do; the size is also fsynced
// before the rename). The rules above trust zeros in the last segment to be
// sectors the disk never wrote, which a file system that honours fsync
// only leaves in unacknowledged writes; a disk that zeroes acknowledged
// sectors (a media fault) at an entry's start would have the entries from
// there on dropped as a torn tail rather than refused. A log written with
// preallocated segments cannot be opened by an engine from before them
// (which reads zeros after a segment's last entry as damage): drain the
// log, or run with Options.NoPreallocate until no preallocated segment is
// left, before going back. tidwall/wal fsyncs again when it is closed, also after a
// failed fsync (nothing is acknowledged after the failure, so it promises
// nothing); and its front truncation removes segment files, oldest first,
// with one fsync of the directory after the last rather than one after
// each: a crash part way leaves the log starting at a later segment, every
// unreleased entry intact.
//
// # Concurrency
//
// Append, AppendBatch, Release and the accessors are safe for concurrent
// use. Reads through cursors are serialised inside the Log, because two
// concurrent reads race inside tidwall/wal; use one cursor per goroutine.
//
// # Metrics
//
// Each Log registers, with the constant label hop=Options.Hop:
// ingest_queue_depth_entries, ingest_queue_depth_bytes,
// ingest_wal_fsync_duration_seconds, ingest_wal_batch_entries,
// ingest_wal_appended_entries_total, ingest_wal_full_total,
// ingest_wal_repairs_total, ingest_wal_dropped_entries_total,
// ingest_wal_truncations_total, ingest_wal_failed, ingest_wal_no_space,
// ingest_wal_no_space_total, ingest_wal_reserve_spent_total and
// ingest_wal_segments_total{preallocated="true"|"false"} (segments started
// on a spare, or sparse because none was ready: a rising "false" means the
// spare cannot keep up or cannot be written).
// ingest_wal_fsync_duration_seconds times the sync of each group commit,
// an fdatasync where the system has one. Close unregisters them.
package wal
