package wal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	twal "github.com/tidwall/wal"

	"github.com/ingest-io/ingest/internal/fileutil"
)

// Log is a durable FIFO queue of entries. See the package documentation for
// its contract.
//
// Goroutines: Open starts two, the writer (group commit) and the releaser
// (release mark and truncation); Close stops both and waits for them.
//
// Lock order: writeMu, then readMu, then mu. Nothing calls into tidwall/wal
// while holding mu. Only the committer (the writer goroutine, or an
// appender leading a group commit), holding writeMu, writes to tidwall/wal,
// truncates it or replaces it (after a write that failed for lack of room),
// so its mirror of the tail segment's size stays exact.
type Log struct {
	dir  string
	id   uint64
	lock *os.File // holds an exclusive flock on the directory until Close
	opts Options
	lg   *slog.Logger
	m    *metrics
	w    *twal.Log
	twop twal.Options // how w was opened, to open it again
	sync func() error // fsync of the tail segment; replaced by fault tests

	quit      chan struct{}  // closed by Close once no append can be accepted
	kick      chan struct{}  // hands the queue to the writer goroutine; capacity 1
	appenders sync.WaitGroup // Appends between admission and handing over their request
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	relSignal chan struct{} // wakes the releaser; capacity 1
	truncate  chan uint64   // releaser to writer: truncate before this index; capacity 1

	// readMu serialises reads: two concurrent Reads race inside tidwall/wal.
	readMu sync.Mutex

	spare *spare   // prepares preallocated segment files; nil if turned off (its methods then create empty segments and stop nothing)
	res   *reserve // room kept for a release on a disk the log has filled (reserve.go)

	// qmu guards the queue of appends waiting for a commit, and leading:
	// whether some goroutine (an appender, or the writer goroutine) is
	// committing and so will see to the queue.
	qmu     sync.Mutex
	queue   []*request
	leading bool

	// writeMu is held by whoever writes to or truncates tidwall/wal; it
	// guards the fields below it.
	writeMu    sync.Mutex
	tailBytes  int // bytes in the tail segment, mirroring tidwall/wal's cycling
	batch      twal.Batch
	frame      []byte
	syncFailed bool      // an fsync inside the current write failed (fail stop)
	lastCommit time.Time // when the last group was taken from the queue (Options.CommitInterval)
	skipSync   bool      // closing w after a write that failed for lack of room: no fsync

	mu             sync.Mutex
	closed         bool
	err            error // sticky write failure: fail stop
	relErr         error // the final release mark could not be written
	noSpace        error // the last append that failed for lack of room, until one succeeds
	noSpaceUntil   time.Time
	reserveHeld    bool   // the reserve was spent: appends wait for the truncation (SpendReserve)
	markNoSpace    bool   // the release mark could not be written for lack of room
	first          uint64 // first index on disk
	last           uint64 // last committed (fsynced) index
	released       uint64 // consumers are done with every index <= released
	segStarts      []uint64
	cum            []int64 // cum[i]: payload bytes of entries released+1 .. released+1+i
	cumBase        int64   // payload bytes appended up to and including released
	pendingBytes   int64   // accepted by Append, not yet committed
	pendingEntries int64
	notify         chan struct{} // closed and replaced at each commit
	room           chan struct{} // Room's; closed and cleared when room may have been made
	failedCh       chan struct{} // closed when err is set
}

// Entry is one entry read from a Log.
type Entry struct {
	Index uint64
	Data  []byte
}

// request is one Append or AppendBatch waiting for the writer.
type request struct {
	one   [1][]byte
	data  [][]byte
	bytes int64
	first uint64
	err   error
	done  chan struct{}
}

var reqPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

// Open opens the log in dir, creating it if needed. It verifies every entry,
// repairs a torn tail and returns a *CorruptionError for any other damage.
// reg and lg may be nil.
func Open(dir string, opts Options, reg prometheus.Registerer, lg *slog.Logger) (*Log, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := mkdirDurable(dir); err != nil {
		return nil, fmt.Errorf("wal: create dir: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	m, err := newMetrics(reg, opts.Hop)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("wal: register metrics: %w", err)
	}
	l, err := open(dir, opts, m, lg)
	if err != nil {
		m.unregister()
		lock.Close()
		return nil, err
	}
	l.lock = lock
	// The segments that the durable mark released go now, before anything
	// reads the log: the last life may have written the mark and ended
	// before its truncation (Close writes the last mark after the writer
	// has stopped; a crash), and no later release need come to remove
	// them (on a disk they filled, none can).
	l.writeMu.Lock()
	l.truncateFront(l.released + 1)
	l.writeMu.Unlock()
	if err := l.Err(); err != nil {
		l.w.Close()
		l.spare.close()
		m.unregister()
		lock.Close()
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	l.wg.Add(2)
	go l.writer()
	go l.releaser(l.released)
	return l, nil
}

func open(dir string, opts Options, m *metrics, lg *slog.Logger) (*Log, error) {
	created, hasMark, err := readSizeMark(dir)
	if errors.Is(err, errSizeMarkDamaged) {
		// Without the mark a short last segment cannot be told from a
		// sound one: nothing is checked this once, and the mark is
		// written again below.
		if lg != nil {
			lg.Warn("wal: segment size mark damaged; the last segment's size is not checked this time", "dir", dir)
		}
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	if !hasMark {
		created = 0
	}
	res, err := scan(dir, scanOptions{lg: lg, createdSize: created, repairTruncated: opts.RepairTruncated})
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	m.repairs.Add(float64(res.repairs))
	m.dropped.Add(float64(res.dropped))
	id, created2, err := loadID(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	if created2 && len(res.segs) > 0 && res.segs[len(res.segs)-1].first+res.segs[len(res.segs)-1].count > 1 && lg != nil {
		lg.Warn("wal: log identity missing or damaged; a new one was drawn, so consumers may see retained entries again", "dir", dir)
	}
	if err := os.Remove(filepath.Join(dir, sparseTmpName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("wal: open %s: remove leftover: %w", dir, err)
	}

	l := &Log{
		dir: dir, id: id, opts: opts, lg: lg, m: m,
		quit:      make(chan struct{}),
		kick:      make(chan struct{}, 1),
		relSignal: make(chan struct{}, 1),
		truncate:  make(chan uint64, 1),
		notify:    make(chan struct{}),
		failedCh:  make(chan struct{}),
	}
	if len(res.segs) > 0 {
		tail := res.segs[len(res.segs)-1]
		l.first = res.segs[0].first
		l.last = tail.first + tail.count - 1
		l.tailBytes = int(tail.size)
		for _, s := range res.segs {
			l.segStarts = append(l.segStarts, s.first)
		}
	} else {
		l.first, l.last = 1, 0
		l.segStarts = []uint64{1}
	}

	released, ok, err := readRelease(dir)
	switch {
	case errors.Is(err, errReleaseDamaged):
		// Starting over from the first entry on disk repeats entries that
		// were already consumed, and loses none.
		if lg != nil {
			lg.Warn("wal: release mark damaged; consumers restart at the first entry on disk", "dir", dir, "first", l.first)
		}
		m.repairs.Inc()
		released = l.first - 1
		if err := writeRelease(dir, released); err != nil {
			return nil, fmt.Errorf("wal: open %s: reset release mark: %w", dir, err)
		}
	case err != nil:
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	case !ok:
		released = 0
	}
	if len(res.segs) == 0 && released > 0 {
		return nil, fmt.Errorf("wal: open %s: %w", dir, &CorruptionError{Segment: segmentName(released + 1),
			Offset: -1, Index: released + 1, Err: fmt.Errorf("%w: release mark at %d and no segments", errMissingSegment, released)})
	}
	if l.first > released+1 {
		return nil, fmt.Errorf("wal: open %s: %w", dir, &CorruptionError{Segment: segmentName(released + 1),
			Offset: -1, Index: released + 1, Err: fmt.Errorf("%w: entries %d to %d are gone", errMissingSegment, released+1, l.first-1)})
	}
	if released > l.last && res.newID {
		// Consumers were done with entries that a truncation took and the
		// repair gave up: under the new identity the indexes after the
		// last kept entry are new ones, never released.
		if lg != nil {
			lg.Warn("wal: release mark beyond the entries a repair kept; moved back to the last of them", "dir", dir,
				"released", released, "last", l.last)
		}
		released = l.last
		if err := writeRelease(dir, released); err != nil {
			return nil, fmt.Errorf("wal: open %s: move release mark: %w", dir, err)
		}
	}
	if released > l.last {
		return nil, fmt.Errorf("wal: open %s: %w", dir, &CorruptionError{Segment: segmentName(l.segStarts[len(l.segStarts)-1]),
			Offset: -1, Index: l.last + 1, Err: fmt.Errorf("release mark %d is beyond the last entry %d", released, l.last)})
	}
	if released < l.first-1 {
		released = l.first - 1
	}
	l.released = released
	// Only now, with a release mark past a repaired cut moved back: once
	// the last segment has its full size (or the mark is gone), nothing
	// says it was cut, and a crash before the move would leave a mark
	// beyond the last entry, which no later open takes.
	if err := markSegmentSize(dir, opts, res, created, hasMark); err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	for _, sz := range res.sizes[released+1-l.first:] {
		var prev int64
		if n := len(l.cum); n > 0 {
			prev = l.cum[n-1]
		}
		l.cum = append(l.cum, prev+sz)
	}

	os.Remove(filepath.Join(dir, reserveName+".tmp")) // a reserve cut short by a crash
	l.res = newReserve(dir, lg, m.reserveSpent)
	opened := false
	if !opts.NoPreallocate {
		// A new log's first segment is preallocated too, so its spare is
		// written before the log is created.
		l.spare = newSpare(dir, opts.segmentFileBytes(), lg, m.noSpaceTotal, len(res.segs) == 0)
	}
	defer func() {
		if !opened {
			l.spare.close()
		}
	}()
	l.twop = twal.Options{
		NoSync:           true, // we fsync ourselves, once per group commit, and time it
		SegmentSize:      opts.SegmentBytes,
		LogFormat:        twal.Binary,
		SegmentCacheSize: 2,
		NoCopy:           true, // payloads are copied out after their checksum is verified
		ReuseBuffers:     true, // a new segment takes the buffers of one dropped from the cache (reuseEvicted)
		AllowEmpty:       true,
		DirPerms:         0o750,
		FilePerms:        0o640,
		// Segments may hold zeros after their last entry (spare.go).
		CreateSegment: func(path string) (*os.File, error) {
			f, pre, err := l.spare.create(path)
			if err == nil {
				l.m.segments.WithLabelValues(strconv.FormatBool(pre)).Inc()
			}
			return f, err
		},
		SyncFile: l.syncFile,
	}
	twop := l.twop
	l.w, err = twal.Open(dir, &twop)
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	first, err1 := l.w.FirstIndex()
	last, err2 := l.w.LastIndex()
	if err := errors.Join(err1, err2); err != nil || first != l.first || last != l.last {
		l.w.Close()
		return nil, fmt.Errorf("wal: open %s: log holds %d..%d, scan found %d..%d: %v", dir, first, last, l.first, l.last, err)
	}
	// tidwall/wal may have created the first segment file just now; make its
	// name durable before anything in it is acknowledged.
	if err := fileutil.SyncDir(dir); err != nil {
		l.w.Close()
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	l.sync = func() error { return l.w.Sync() }
	l.updateDepth()
	opened = true
	return l, nil
}

// Append appends one entry and returns its index once an fsync covers it.
// At the bound it returns ErrFull at once. After a failed write or fsync it
// returns that failure until the log is reopened. If ctx ends first, the
// entry may or may not become durable, and the log may still read data
// after Append has returned: the caller must not modify data then.
func (l *Log) Append(ctx context.Context, data []byte) (uint64, error) {
	r := reqPool.Get().(*request)
	r.one[0] = data
	return l.submit(ctx, r, r.one[:], 0)
}

// AppendBatch appends entries with consecutive indexes, returning the first,
// once one fsync covers them all. It is all or nothing under the bound. A
// batch with no entries is ErrEmptyBatch. As with Append, if ctx ends first
// the caller must not modify data afterwards.
func (l *Log) AppendBatch(ctx context.Context, data [][]byte) (uint64, error) {
	if len(data) == 0 {
		return 0, ErrEmptyBatch
	}
	return l.submit(ctx, reqPool.Get().(*request), data, 0)
}

// AppendReplacing appends entries as AppendBatch does, for a caller that
// will release every entry up to supersedes once they are durable (a
// compaction: the entries state again what the released ones said). Under
// the bound they are counted as if those were released already, so that a
// log its own entries filled can still be compacted. Until the caller's
// Release, the log may hold up to the entries' size past its bound (for
// one such call per Release: each is credited with what it supersedes).
func (l *Log) AppendReplacing(ctx context.Context, data [][]byte, supersedes uint64) (uint64, error) {
	if len(data) == 0 {
		return 0, ErrEmptyBatch
	}
	return l.submit(ctx, reqPool.Get().(*request), data, supersedes)
}

// submit appends data through r; the entries up to supersedes do not
// count against the bound (AppendReplacing; 0 for none).
func (l *Log) submit(ctx context.Context, r *request, data [][]byte, supersedes uint64) (uint64, error) {
	var n int64
	for _, d := range data {
		if int64(len(d)) > l.opts.MaxBytes || len(d) > maxPayload {
			r.one[0] = nil
			reqPool.Put(r)
			return 0, ErrTooLarge
		}
		n += int64(len(d))
	}
	if n > l.opts.MaxBytes || (l.opts.MaxEntries > 0 && int64(len(data)) > l.opts.MaxEntries) {
		// It would not fit in an empty log: ErrFull would have the caller
		// wait for room that never comes.
		r.one[0] = nil
		reqPool.Put(r)
		return 0, ErrTooLarge
	}
	if err := l.admit(n, int64(len(data)), supersedes); err != nil {
		r.one[0] = nil
		reqPool.Put(r)
		return 0, err
	}
	r.data, r.bytes, r.err = data, n, nil
	l.qmu.Lock()
	l.queue = append(l.queue, r)
	lead := !l.leading
	l.leading = true
	l.qmu.Unlock()
	if lead {
		// Nobody is committing: commit what is queued (this append at
		// least) here, with no hand-over to another goroutine.
		l.lead()
	}
	l.appenders.Done()
	select {
	case <-r.done:
	case <-ctx.Done():
		// The committer still owns r; it is left to the garbage collector.
		return 0, ctx.Err()
	}
	first, err := r.first, r.err
	r.one[0], r.data = nil, nil
	reqPool.Put(r)
	return first, err
}

// admit reserves room under the bound for an append, and registers it as an
// appender so that Close waits for it to reach the writer. The entries up
// to supersedes do not count against the bound (AppendReplacing).
func (l *Log) admit(bytes, entries int64, supersedes uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.err != nil:
		return l.err
	case l.closed:
		return ErrClosed
	case l.noSpace != nil && time.Now().Before(l.noSpaceUntil):
		return l.noSpace
	case l.reserveHeld:
		return errReserveHeld
	}
	depthBytes, depthEntries := l.depthLocked()
	if supersedes > l.released {
		k := min(supersedes-l.released, uint64(len(l.cum)))
		if k > 0 {
			depthBytes -= l.cum[k-1] - l.cumBase
			depthEntries -= int64(k)
		}
	}
	if depthBytes+l.pendingBytes+bytes > l.opts.MaxBytes ||
		(l.opts.MaxEntries > 0 && depthEntries+l.pendingEntries+entries > l.opts.MaxEntries) {
		l.m.full.Inc()
		return ErrFull
	}
	l.pendingBytes += bytes
	l.pendingEntries += entries
	l.appenders.Add(1)
	return nil
}

// depthLocked returns the payload bytes and the number of unreleased entries.
func (l *Log) depthLocked() (bytes, entries int64) {
	if n := len(l.cum); n > 0 {
		return l.cum[n-1] - l.cumBase, int64(n)
	}
	return 0, 0
}

func (l *Log) updateDepth() {
	l.mu.Lock()
	b, n := l.depthLocked()
	l.mu.Unlock()
	l.m.depthBytes.Set(float64(b))
	l.m.depthEntries.Set(float64(n))
}

// lead commits one group from the queue as the leader. If more appends
// queued up meanwhile, it hands the lead to the writer goroutine rather than
// keep its own caller waiting.
func (l *Log) lead() {
	l.commitNext()
	l.qmu.Lock()
	more := len(l.queue) > 0
	if !more {
		l.leading = false
	}
	l.qmu.Unlock()
	if more {
		select {
		case l.kick <- struct{}{}:
		default: // already kicked
		}
	}
}

// commitNext commits the appends at the head of the queue, up to
// MaxBatchBytes of them, and reports whether there were any.
func (l *Log) commitNext() bool {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.pace()
	l.qmu.Lock()
	var (
		n     int
		bytes int64
	)
	for n < len(l.queue) && (n == 0 || bytes+l.queue[n].bytes <= int64(l.opts.MaxBatchBytes)) {
		bytes += l.queue[n].bytes
		n++
	}
	group := l.queue[:n:n]
	l.queue = l.queue[n:]
	if len(l.queue) == 0 {
		l.queue = nil
	}
	l.qmu.Unlock()
	if n == 0 {
		return false
	}
	if l.opts.CommitInterval > 0 {
		l.lastCommit = time.Now()
	}
	l.commit(group)
	return true
}

// commitRefusedHook, when a test sets it, runs in commit after the look
// that refuses a group without writing it, before its room is given back.
var commitRefusedHook func()

// pace waits, with Options.CommitInterval set and appends queued, until
// the interval has passed since the last commit began, so that the appends
// arriving meanwhile share the next one's write and fsync. The caller
// holds writeMu.
func (l *Log) pace() {
	if l.opts.CommitInterval <= 0 {
		return
	}
	wait := l.opts.CommitInterval - time.Since(l.lastCommit)
	if wait <= 0 {
		return
	}
	l.qmu.Lock()
	queued := len(l.queue) > 0
	l.qmu.Unlock()
	if queued {
		time.Sleep(wait)
	}
}

// writer is the goroutine that takes over the commits while appends keep
// arriving (group commit: whatever is waiting goes out with one write and one
// fsync), and that truncates released segments.
func (l *Log) writer() {
	defer l.wg.Done()
	for {
		select {
		case <-l.kick:
			for {
				// Leading may last as long as appends keep coming:
				// truncations are taken between commits too, or
				// released segments would stay on disk meanwhile.
				select {
				case before := <-l.truncate:
					l.truncateBefore(before)
				default:
				}
				if !l.commitNext() {
					l.qmu.Lock()
					if len(l.queue) == 0 {
						l.leading = false
						l.qmu.Unlock()
						break
					}
					l.qmu.Unlock()
				}
			}
		case before := <-l.truncate:
			l.truncateBefore(before)
		case <-l.quit:
			// Close waited for every appender to queue its request and for
			// every leader to finish: commit what is left.
			for l.commitNext() {
			}
			return
		}
	}
}

// commit writes one group, fsyncs, publishes the new entries and answers
// every request in it. The caller holds writeMu.
//
// A write that fails for lack of room (ENOSPC, EDQUOT) with no fsync
// failed is undone (undoWrite): the group is answered with ErrNoSpace, and
// the log stays as it was. Any other failure is sticky (fail stop).
func (l *Log) commit(group []*request) {
	l.mu.Lock()
	err := l.err
	next := l.last + 1
	tailStart := l.segStarts[len(l.segStarts)-1]
	if err == nil && l.noSpace != nil && time.Now().Before(l.noSpaceUntil) {
		// Room is not back yet: refused without writing.
		err = l.noSpace
	}
	if err == nil && l.reserveHeld {
		err = errReserveHeld // the room is the release mark's (SpendReserve)
	}
	l.mu.Unlock()
	if err != nil && commitRefusedHook != nil {
		commitRefusedHook()
	}

	var (
		entries int
		sizes   []int64
		cycled  []uint64 // first indexes of segments the write starts
		noSpace bool
	)
	if err == nil {
		tailBytes := l.tailBytes
		l.syncFailed = false
		l.batch.Clear()
		if l.tailBytes > l.opts.SegmentBytes {
			cycled = append(cycled, next)
			l.tailBytes = 0
		}
		idx := next
		for _, r := range group {
			r.first = idx
			for _, d := range r.data {
				l.frame = appendFrame(l.frame[:0], d)
				l.batch.Write(idx, l.frame)
				sizes = append(sizes, int64(len(d)))
				l.tailBytes += storedSize(len(l.frame))
				idx++
				if l.tailBytes >= l.opts.SegmentBytes {
					cycled = append(cycled, idx)
					l.tailBytes = 0
				}
			}
		}
		entries = int(idx - next)
		err = l.w.WriteBatch(&l.batch)
		if err != nil && isNoSpace(err) && !l.syncFailed {
			// Nothing of the group was acknowledged, nor made durable
			// by an fsync that failed: put the log back as it was.
			l.m.noSpaceTotal.Inc()
			if uerr := l.undoWrite(tailStart, tailBytes); uerr != nil {
				err = fmt.Errorf("%w; undoing it: %w", err, uerr)
			} else {
				l.tailBytes = tailBytes
				noSpace = true
			}
		} else if err == nil {
			start := time.Now()
			err = l.sync()
			l.m.fsync.Observe(time.Since(start).Seconds())
		}
		if err == nil && len(cycled) > 0 {
			// tidwall/wal creates segment files without syncing their directory.
			err = fileutil.SyncDir(l.dir)
			l.reuseEvicted()
		}
		if err != nil {
			err = fmt.Errorf("wal: append: %w", err)
			if noSpace {
				err = fmt.Errorf("%w: %w", ErrNoSpace, err)
			}
		}
	}

	l.mu.Lock()
	l.pendingBytes -= sumBytes(group)
	l.pendingEntries -= int64(countEntries(group))
	switch {
	case noSpace:
		if l.noSpace == nil && l.lg != nil {
			l.lg.Warn("wal: disk full; appends are refused (backpressure) until there is room again",
				"dir", l.dir, "err", err)
		}
		l.noSpace = err
		l.noSpaceUntil = time.Now().Add(l.opts.NoSpaceRetry)
		l.showNoSpaceLocked()
		// Appends are refused until then: wake Room's waiters when it
		// passes.
		time.AfterFunc(l.opts.NoSpaceRetry, func() {
			l.mu.Lock()
			l.roomLocked()
			l.mu.Unlock()
		})
	case err != nil && errors.Is(err, ErrNoSpace) && l.err == nil:
		// Refused without writing (above). The room it held is given
		// back: an append refused ErrFull for it may fit now, and the
		// wake-up of the window that refused this one may have passed.
		l.roomLocked()
	case err != nil:
		l.failLocked(err)
		err = l.err
	default:
		l.last = next + uint64(entries) - 1
		l.segStarts = append(l.segStarts, cycled...)
		prev := l.cumBase
		if n := len(l.cum); n > 0 {
			prev = l.cum[n-1]
		}
		for _, sz := range sizes {
			prev += sz
			l.cum = append(l.cum, prev)
		}
		if l.noSpace != nil {
			l.noSpace = nil
			if l.lg != nil {
				l.lg.Info("wal: room on disk again; appends are taken", "dir", l.dir)
			}
		}
		l.showNoSpaceLocked()
		l.wakeLocked()
	}
	db, de := l.depthLocked()
	l.mu.Unlock()

	if err == nil {
		l.m.batch.Observe(float64(entries))
		l.m.appended.Add(float64(entries))
		l.m.depthBytes.Set(float64(db))
		l.m.depthEntries.Set(float64(de))
	}
	for _, r := range group {
		r.err = err
		r.done <- struct{}{}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// undoWrite puts the log back as it was before a group commit whose write
// failed for lack of room: tidwall/wal's memory and the files on disk.
// tailStart is the first index of the tail segment before the write, and
// tailBytes the bytes of its entries. The caller holds writeMu.
//
// After a failed write tidwall/wal is out of step with what it stands for:
// its tail buffer holds the group's entries (its last index, too, if the
// write crossed into a new segment), its file offset is past whatever
// part of them reached the file, and a segment the write moved to may be
// open, or half made. So it is closed (with no fsync: nothing of the write
// is to be kept) and opened again from the files, once they are put back:
//   - segment files started by the write are removed: they hold nothing
//     but the group's entries;
//   - the bytes the write left in the tail after its entries are zeroed
//     (they were the group's entries; kept, they would read as entries
//     that were never acknowledged, and could be overwritten only in part
//     by the next write) and fsynced. A move to a new segment fsyncs the
//     old one first, so entries of the group may have been durable there
//     for a moment: it is their removal that is made durable here.
//
// The blocks it zeroes hold data, so they need no room. If any step
// fails, the caller fails the log.
func (l *Log) undoWrite(tailStart uint64, tailBytes int) error {
	l.readMu.Lock()
	defer l.readMu.Unlock()
	l.skipSync = true
	l.w.Close() // it fails on the half-made segment, if any; it is dropped either way
	l.skipSync = false
	des, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("read dir: %w", err)
	}
	removed := false
	for _, de := range des {
		name := de.Name()
		if len(name) != 20 {
			continue
		}
		if index, err := strconv.ParseUint(name, 10, 64); err == nil && index > tailStart {
			if err := os.Remove(filepath.Join(l.dir, name)); err != nil {
				return fmt.Errorf("remove segment %s: %w", name, err)
			}
			removed = true
		}
	}
	if _, err := zeroAfter(filepath.Join(l.dir, segmentName(tailStart)), int64(tailBytes)); err != nil {
		return fmt.Errorf("zero the write's bytes: %w", err)
	}
	if removed {
		if err := fileutil.SyncDir(l.dir); err != nil {
			return err
		}
	}
	twop := l.twop
	w, err := twal.Open(l.dir, &twop)
	if err != nil {
		return fmt.Errorf("reopen: %w", err)
	}
	first, err1 := w.FirstIndex()
	last, err2 := w.LastIndex()
	l.mu.Lock()
	wantFirst, wantLast := l.first, l.last
	l.mu.Unlock()
	if err := errors.Join(err1, err2); err != nil || first != wantFirst || last != wantLast {
		w.Close()
		return fmt.Errorf("reopen: log holds %d..%d, want %d..%d: %v", first, last, wantFirst, wantLast, err)
	}
	l.w = w
	return nil
}

func sumBytes(group []*request) (n int64) {
	for _, r := range group {
		n += r.bytes
	}
	return n
}

func countEntries(group []*request) (n int) {
	for _, r := range group {
		n += len(r.data)
	}
	return n
}

// Release records that consumers are done with every entry up to and
// including upTo. Their room under the bound is freed at once; the mark is
// made durable in the background (a crash before that repeats them, and
// loses nothing), and released segments are then truncated in the background.
func (l *Log) Release(upTo uint64) error {
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return ErrClosed
	case upTo > l.last:
		last := l.last
		l.mu.Unlock()
		return fmt.Errorf("wal: release %d: beyond the last committed entry %d", upTo, last)
	case upTo <= l.released:
		l.mu.Unlock()
		return nil
	}
	drop := int(upTo - l.released)
	l.cumBase = l.cum[drop-1]
	l.cum = l.cum[drop:]
	if cap(l.cum) > 1024 && len(l.cum) < cap(l.cum)/4 {
		l.cum = append([]int64(nil), l.cum...)
	}
	l.released = upTo
	l.roomLocked()
	db, de := l.depthLocked()
	l.mu.Unlock()
	l.m.depthBytes.Set(float64(db))
	l.m.depthEntries.Set(float64(de))
	select {
	case l.relSignal <- struct{}{}:
	default:
	}
	return nil
}

// releaser makes the release mark durable and truncates released segments.
// Releases within Options.MarkInterval of the last write of the mark share
// the next one. A mark
// that cannot be written for lack of room is tried again every
// NoSpaceRetry, and fails nothing: the old mark stays in place (a crash
// repeats entries, and loses none), and segments wait for the new one to be
// durable before they are removed.
func (l *Log) releaser(persisted uint64) {
	defer l.wg.Done()
	var retry *time.Timer
	var retryC <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	pace := time.NewTimer(0)
	defer pace.Stop()
	<-pace.C
	var written time.Time // when the mark was last written
	for {
		stop := false
		select {
		case <-l.relSignal:
			// The mark is written at most once per MarkInterval: a
			// crash repeats what was released since, and loses nothing.
			if wait := l.opts.MarkInterval - time.Since(written); wait > 0 {
				pace.Reset(wait)
				select {
				case <-pace.C:
				case <-l.quit:
					pace.Stop()
					stop = true
				}
			}
		case <-retryC:
			retryC = nil
		case <-l.quit:
			stop = true
		}
		written = time.Now()
		l.mu.Lock()
		released, failed := l.released, l.err != nil
		l.mu.Unlock()
		if released <= persisted || failed {
			if stop {
				return
			}
			continue
		}
		err := stageRelease(l.dir, released)
		if err != nil && isNoSpace(err) && l.SpendReserve(released, l.dir) {
			// The disk is full, likely of this log's own entries: the
			// mark, in the room the reserve kept, lets them go.
			err = stageRelease(l.dir, released)
		}
		switch {
		case err != nil && isNoSpace(err):
			l.m.noSpaceTotal.Inc()
			l.setMarkNoSpace(true, err)
			if stop {
				l.mu.Lock()
				l.relErr = fmt.Errorf("wal: close: %w", err)
				l.mu.Unlock()
				return
			}
			if retryC == nil {
				if retry == nil {
					retry = time.NewTimer(l.opts.NoSpaceRetry)
				} else {
					retry.Reset(l.opts.NoSpaceRetry)
				}
				retryC = retry.C
			}
			continue
		case err == nil:
			// The rename is in place; an fsync of the directory that
			// fails leaves it unknown whether it is durable: fail stop.
			err = fileutil.SyncDir(l.dir)
		}
		if err != nil {
			l.fail(err)
			if stop {
				l.mu.Lock()
				l.relErr = fmt.Errorf("wal: close: %w", err)
				l.mu.Unlock()
			}
		} else {
			l.setMarkNoSpace(false, nil)
			persisted = released
			l.requestTruncate(persisted)
		}
		if stop {
			return
		}
	}
}

// setMarkNoSpace records whether the release mark could not be written for
// lack of room, logging each change.
func (l *Log) setMarkNoSpace(on bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.markNoSpace == on {
		return
	}
	l.markNoSpace = on
	l.showNoSpaceLocked()
	if l.lg == nil {
		return
	}
	if on {
		l.lg.Warn("wal: disk full; the release mark is kept as it was and written again later (released entries stay on disk until then)",
			"dir", l.dir, "err", err)
	} else {
		l.lg.Info("wal: release mark written again", "dir", l.dir)
	}
}

// requestTruncate asks the writer to remove released entries from disk once
// at least one whole segment is released. Truncation removes whole segments
// only, so it never runs for less than a segment's worth and never rewrites
// a file.
func (l *Log) requestTruncate(released uint64) {
	l.mu.Lock()
	worth := l.freesSegmentLocked(released)
	l.mu.Unlock()
	if !worth {
		return
	}
	select {
	case <-l.truncate: // replace an older request not yet taken
	default:
	}
	l.truncate <- released + 1
}

// freesSegmentLocked reports whether a release up to upTo lets the first
// segment go. The caller holds mu.
func (l *Log) freesSegmentLocked(upTo uint64) bool {
	return len(l.segStarts) >= 2 && upTo+1 >= l.segStarts[1]
}

// showNoSpaceLocked sets ingest_wal_no_space from what holds appends or
// the mark back for lack of room. The caller holds mu.
func (l *Log) showNoSpaceLocked() {
	l.m.noSpace.Set(b2f(l.noSpace != nil || l.markNoSpace || l.reserveHeld))
}

// reuseEvicted lets tidwall/wal give the in-memory buffers of the segments
// it has dropped from its cache to its next segment, instead of allocating
// one of a segment's size for each. A read may hold a slice into such a
// buffer (NoCopy) while it holds readMu, and a write may drop one; so the
// caller holds writeMu, and readMu is taken here.
func (l *Log) reuseEvicted() {
	l.readMu.Lock()
	l.w.ReuseEvicted()
	l.readMu.Unlock()
}

// truncateBefore takes writeMu and truncates the segments wholly before
// index.
func (l *Log) truncateBefore(index uint64) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.truncateFront(index)
}

// truncateFront removes the segments wholly before index. The segment that
// holds index stays as it is, with its released entries, until the log moves
// past it: nothing is rewritten, and the tail keeps its preallocated file.
// The caller holds writeMu.
func (l *Log) truncateFront(index uint64) {
	l.mu.Lock()
	failed := l.err != nil
	start := l.segmentStartLocked(index)
	first := l.first
	l.mu.Unlock()
	if failed || start <= first {
		return
	}
	err := l.w.TruncateFront(start)
	if err == nil {
		err = fileutil.SyncDir(l.dir)
	}
	if err != nil {
		l.fail(fmt.Errorf("truncate: %w", err))
		return
	}
	l.m.truncations.Inc()
	l.reuseEvicted()
	l.res.ensure() // again, if it was spent: the truncation made room

	l.mu.Lock()
	defer l.mu.Unlock()
	l.reserveHeld = false
	l.roomLocked()
	l.showNoSpaceLocked()
	l.first = start
	i := 0
	for l.segStarts[i] != start {
		i++
	}
	l.segStarts = append(l.segStarts[:0], l.segStarts[i:]...)
}

// syncFile makes the tail segment's writes durable for tidwall/wal: at each
// group commit (Log.sync) and when it moves to a new segment. A failure is
// recorded, so that the write it ends is never taken for one that failed
// for lack of room and undone: after a failed fsync nothing is undone or
// tried again (fail stop).
func (l *Log) syncFile(f *os.File) error {
	if l.skipSync || f == nil {
		return nil
	}
	err := datasync(f)
	if err != nil {
		l.syncFailed = true
	}
	return err
}

// fail makes err the log's sticky failure.
func (l *Log) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failLocked(fmt.Errorf("wal: %w", err))
}

// failLocked makes err the log's sticky failure, unless it has one. The
// caller holds mu.
func (l *Log) failLocked(err error) {
	if l.err != nil {
		return
	}
	l.err = err
	l.m.failed.Set(1)
	close(l.failedCh)
	l.wakeLocked()
	l.roomLocked()
}

// wakeLocked wakes every reader waiting for a commit, so that readers see
// the failure. The caller holds mu.
func (l *Log) wakeLocked() {
	close(l.notify)
	l.notify = make(chan struct{})
}

// Err returns the failure that stopped the log, or nil.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Failed returns a channel that is closed once the log has failed (fail
// stop): Err then says why. A tier that sees it should stop, so that it is
// started again and the log reopened from disk.
func (l *Log) Failed() <-chan struct{} { return l.failedCh }

// Notify returns a channel that is closed when entries after the current
// last are committed, when the log fails, or when it is closed. Take a new
// channel after each wake-up.
func (l *Log) Notify() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.notify
}

// ID returns the log's identity: a random non-zero number drawn when the log
// was created. (ID, index) names an entry for good, even across the loss and
// re-creation of the log's directory.
func (l *Log) ID() uint64 { return l.id }

// FirstIndex returns the index of the first entry still on disk.
func (l *Log) FirstIndex() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

// LastIndex returns the index of the last committed entry (0 for a new log).
func (l *Log) LastIndex() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Released returns the release mark: consumers are done with every index up
// to and including it.
func (l *Log) Released() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.released
}

// Depth returns the number and payload bytes of unreleased entries.
func (l *Log) Depth() (entries, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	bytes, entries = l.depthLocked()
	return entries, bytes
}

// Room returns a channel that is closed when an append refused for room
// (ErrFull, ErrNoSpace) may be taken: entries were released, the
// refusals of a full disk (Options.NoSpaceRetry) or a spent reserve ended,
// an append gave back the room it held by failing, or the log failed or
// closed. Take it before the append whose refusal it waits for: one taken
// after may miss the room made in between. Waiting on it instead of
// retrying on a timer costs nothing while the next hop is down.
func (l *Log) Room() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.err != nil {
		// Nothing would close one later: the next append fails at once.
		// (Not kept: a wake-up still due would close it again.)
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if l.room == nil {
		l.room = make(chan struct{})
	}
	return l.room
}

// roomLocked wakes Room's waiters. The caller holds mu.
func (l *Log) roomLocked() {
	if l.room != nil {
		close(l.room)
		l.room = nil
	}
}

// Bound returns the bound on unreleased entries that Depth is held to:
// Options.MaxEntries (0: none) and Options.MaxBytes, defaults applied.
func (l *Log) Bound() (entries, bytes int64) { return l.opts.MaxEntries, l.opts.MaxBytes }

// Close stops accepting appends, commits those already accepted, makes the
// release mark durable and closes the files. It is idempotent.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.roomLocked()
		l.mu.Unlock()
		l.appenders.Wait()
		close(l.quit)
		l.wg.Wait()
		l.mu.Lock()
		l.wakeLocked()
		l.mu.Unlock()
		l.readMu.Lock()
		// tidwall/wal fsyncs on Close, also after a failed fsync; nothing is
		// acknowledged after a failure, so that fsync can make no promise.
		err := l.w.Close()
		l.readMu.Unlock()
		l.spare.close()
		l.m.unregister()
		if err != nil {
			err = fmt.Errorf("wal: close: %w", err)
		}
		l.mu.Lock()
		relErr := l.relErr
		l.mu.Unlock()
		l.closeErr = errors.Join(relErr, err)
		l.lock.Close() // releases the flock
	})
	return l.closeErr
}
