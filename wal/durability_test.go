package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/tmpfs"
)

func openInternal(t *testing.T, dir string, opts Options) *Log {
	t.Helper()
	l, err := Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func readInternal(t *testing.T, l *Log, index uint64) []byte {
	t.Helper()
	c, err := l.Cursor(index)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := c.Next(ctx)
	if err != nil {
		t.Fatalf("read %d: %v", index, err)
	}
	return e.Data
}

// A batch that could never fit under the bound, even in an empty log, is
// ErrTooLarge: ErrFull would have the caller wait for room that never comes.
func TestBatchLargerThanBoundIsTooLarge(t *testing.T) {
	l := openInternal(t, t.TempDir(), Options{MaxBytes: 1000, MaxEntries: 5})
	ctx := context.Background()
	if e, b := l.Depth(); e != 0 || b != 0 {
		t.Fatalf("log not empty: %d %d", e, b)
	}
	_, err := l.AppendBatch(ctx, [][]byte{make([]byte, 600), make([]byte, 600)})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("batch of 1200 bytes under MaxBytes=1000, empty log: got %v, want ErrTooLarge", err)
	}
	_, err = l.AppendBatch(ctx, make([][]byte, 6))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("batch of 6 entries under MaxEntries=5, empty log: got %v, want ErrTooLarge", err)
	}
}

// A cursor blocked in Next when the log fails is woken and told the
// failure, rather than waiting for a commit that can no longer happen.
func TestBlockedCursorWokenOnFailure(t *testing.T) {
	l := openInternal(t, t.TempDir(), Options{})
	boom := errors.New("injected fsync failure")
	l.SetSync(func() error { return boom })
	c, err := l.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := c.Next(ctx)
		got <- err
	}()
	waitBlocked(t, "wal.(*Cursor).NextBatch")
	if _, err := l.Append(context.Background(), []byte("x")); !errors.Is(err, boom) {
		t.Fatalf("append: %v", err)
	}
	if err := <-got; !errors.Is(err, boom) {
		t.Fatalf("blocked cursor got %v after the log failed, want the failure", err)
	}
	// A cursor that starts after the failure is told at once.
	if _, err := c.Next(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("fresh Next: %v", err)
	}
}

// A torn last entry whose surviving part happens to contain bytes that
// decode as a stored frame (a payload that embeds this package's framing)
// looks like damage followed by an intact entry, and Open refuses the log
// rather than truncate it. This is the documented choice (doc.go): telling
// such a tear from a damaged length followed by acknowledged entries would
// mean guessing, and a wrong guess would truncate acknowledged entries.
func TestTornTailWithEmbeddedFrameRefusesOpen(t *testing.T) {
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprintf("prealloc=%v", prealloc), func(t *testing.T) {
			testTornTailWithEmbeddedFrame(t, Options{NoPreallocate: !prealloc})
		})
	}
}

func testTornTailWithEmbeddedFrame(t *testing.T, opts Options) {
	dir := t.TempDir()
	l, err := Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	end := 0 // where the next entry starts in the segment
	for _, p := range []string{"one", "two"} {
		if _, err := l.Append(context.Background(), []byte(p)); err != nil {
			t.Fatal(err)
		}
		end += storedSize(len(appendFrame(nil, []byte(p))))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Entry 3, being written when the process died: its payload carries a
	// framed record (as a hop forwarding framed data would), and only its
	// first page reached the file.
	inner := appendFrame(nil, []byte("inner record"))
	payload := append([]byte("prefix"), byte(len(inner)))
	payload = append(payload, inner...)
	payload = append(payload, bytes.Repeat([]byte{'y'}, 8000)...)
	frame := appendFrame(nil, payload)
	stored := append(binaryUvarint(uint64(len(frame))), frame...)
	seg := filepath.Join(dir, segmentName(1))
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if prealloc := fi.Size() > int64(end); prealloc == opts.NoPreallocate {
		t.Fatalf("segment of %d bytes for %d bytes of entries with %+v", fi.Size(), end, opts)
	}
	torn := stored[:4096-end] // the write stopped at a page boundary
	f, err := os.OpenFile(seg, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(torn, int64(end)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	l2, err := Open(dir, opts, nil, nil)
	var ce *CorruptionError
	if !errors.As(err, &ce) || ce.Index != 3 || ce.Segment != segmentName(1) {
		if l2 != nil {
			l2.Close()
		}
		t.Fatalf("open after a torn write that embeds a frame: %v, want a CorruptionError at entry 3", err)
	}
}

func binaryUvarint(x uint64) []byte {
	var b []byte
	for x >= 0x80 {
		b = append(b, byte(x)|0x80)
		x >>= 7
	}
	return append(b, byte(x))
}

// A second Open of a directory in use (a restarted process while the old
// one is still alive, two pods on one volume) is refused: both would hand
// out the same indexes and overwrite each other's acknowledged entries.
func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(dir, Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if b, err := Open(dir, Options{}, nil, nil); !errors.Is(err, ErrLocked) {
		if b != nil {
			b.Close()
		}
		t.Fatalf("second open: %v, want ErrLocked", err)
	} else if want := fmt.Sprintf("held by pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("second open: %v, want it to name the holder (%s)", err, want)
	}
	if _, err := a.Append(context.Background(), []byte("from-A")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	// Once closed, the directory opens again.
	b, err := Open(dir, Options{}, nil, nil)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	defer b.Close()
	if got := readInternal(t, b, 1); string(got) != "from-A" {
		t.Fatalf("entry 1 is %q", got)
	}
}

// Before the first Append of a new log is acknowledged, the log's directory
// is fsynced after its first segment file was created, and the parent after
// the log's directory was created: otherwise a power loss could take the
// file, and the acknowledged entry with it. Observed with strace, for a
// first segment created empty and for one renamed from a preallocated spare.
func TestNewLogDirSyncedBeforeAck(t *testing.T) {
	const env = "INGEST_WAL_DIRSYNC_CHILD"
	if dir := os.Getenv(env); dir != "" {
		opts := Options{NoPreallocate: os.Getenv(env+"_NOPREALLOC") != ""}
		l, err := Open(filepath.Join(dir, "wal"), opts, nil, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if _, err := l.Append(context.Background(), []byte("acked")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Stdout.Write([]byte("ACKED\n"))
		os.Exit(0)
	}
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprintf("prealloc=%v", prealloc), func(t *testing.T) {
			extra := env + "_NOPREALLOC="
			if !prealloc {
				extra += "1"
			}
			testNewLogDirSynced(t, env, extra, prealloc, false)
		})
	}
}

// TestLogDirSyncedAfterKilledCreate: a process killed after it created the
// log's directory and before it fsynced the parent left a directory whose
// name a power loss can still take. The next open, which finds the
// directory there, must fsync the parent before it acknowledges anything:
// otherwise acknowledged entries would go with the directory.
func TestLogDirSyncedAfterKilledCreate(t *testing.T) {
	const env = "INGEST_WAL_DIRSYNC_CHILD"
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprintf("prealloc=%v", prealloc), func(t *testing.T) {
			extra := env + "_NOPREALLOC="
			if !prealloc {
				extra += "1"
			}
			testNewLogDirSynced(t, env, extra, prealloc, true)
		})
	}
}

func testNewLogDirSynced(t *testing.T, env, extra string, prealloc, killedCreate bool) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Fatal("strace not found: make deps installs it")
	}
	dir := t.TempDir()
	if killedCreate {
		// The first life dies on entering its first fsync of the parent
		// (-P: of dir), the one after it made the log's directory.
		cmd := exec.Command(strace, "-f", "-qq", "-o", "/dev/null", "-P", dir, "-e", "trace=fsync", "-e", "inject=fsync:signal=KILL:when=1",
			os.Args[0], "-test.run=^TestNewLogDirSyncedBeforeAck$")
		cmd.Env = append(os.Environ(), env+"="+dir, extra)
		out, err := cmd.CombinedOutput()
		if strings.Contains(string(out), "ACKED") {
			t.Fatalf("first life was not killed: %v: %s", err, out)
		}
		if fi, err := os.Stat(filepath.Join(dir, "wal")); err != nil || !fi.IsDir() {
			t.Fatalf("first life did not leave the log's directory: %v", err)
		}
	}
	trace := filepath.Join(dir, "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-y", "-e", "trace=openat,mkdirat,rename,renameat,renameat2,fsync,fdatasync,write", "-o", trace,
		os.Args[0], "-test.run=^TestNewLogDirSyncedBeforeAck$")
	cmd.Env = append(os.Environ(), env+"="+dir, extra)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ACKED") {
		t.Fatalf("child: %v: %s", err, out)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	walDir := filepath.Join(dir, "wal")
	seg := filepath.Join(walDir, segmentName(1))
	var created, walDirSynced, parentSynced bool
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.Contains(line, `"ACKED\n"`):
			if !created {
				t.Errorf("entry 1 acknowledged, but %s was never created (prealloc=%v):\n%s", seg, prealloc, b)
			}
			if !walDirSynced {
				t.Errorf("entry 1 acknowledged, but %s was never fsynced after creating %s", walDir, filepath.Base(seg))
			}
			if !parentSynced {
				t.Errorf("entry 1 acknowledged, but %s was never fsynced after creating the log directory in it", dir)
			}
			return
		case !prealloc && strings.Contains(line, "openat(") && strings.Contains(line, `"`+seg+`"`) && strings.Contains(line, "O_CREAT"):
			created = true
		case prealloc && strings.Contains(line, "rename") &&
			strings.Contains(line, "segment.spare") && strings.Contains(line, segmentName(1)):
			// The call's arguments, whether or not strace printed its
			// result on the same line (with -f another thread's call can
			// split it); a failed rename would have failed the append.
			created = true
		case created && strings.Contains(line, "fsync(") && strings.Contains(line, "<"+walDir+">"):
			walDirSynced = true
		case strings.Contains(line, "fsync(") && strings.Contains(line, "<"+dir+">"):
			parentSynced = true
		}
	}
	t.Fatalf("no acknowledgement in the trace:\n%s", b)
}

// waitBlocked waits until some goroutine is blocked in fn.
func waitBlocked(t *testing.T, fn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		if strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine blocked in %s", fn)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRoomWokenByRefusedCommit: an append refused ErrFull for the room an
// append in flight holds waits on Room for that room. The one in flight,
// admitted before a full disk's NoSpaceRetry began, is refused at its
// commit without writing: its room is given back, and Room must say so.
// Here its commit looks at the refusal window just before it ends, and
// the window's own wake-up has passed by the time the second append is
// refused; no release follows.
func TestRoomWokenByRefusedCommit(t *testing.T) {
	dir := filepath.Join(tmpfs.Mount(t, 1<<20), "wal")
	l := openInternal(t, dir, Options{Hop: "test", MaxBytes: 150, MaxBatchBytes: 100,
		NoSpaceRetry: 50 * time.Millisecond, NoPreallocate: true})
	tmpfs.Fill(t, filepath.Dir(dir))

	// Both appends admitted while nothing commits; each its own group.
	l.writeMu.Lock()
	errs := make(chan error, 2)
	go func() { _, err := l.Append(context.Background(), bytes.Repeat([]byte{'a'}, 60)); errs <- err }()
	waitFor(t, "the first append admitted", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.pendingBytes == 60 })
	go func() { _, err := l.Append(context.Background(), bytes.Repeat([]byte{'b'}, 60)); errs <- err }()
	waitFor(t, "the second append admitted", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.pendingBytes == 120 })

	window := l.Room() // closed when the window the first group opens passes
	var room <-chan struct{}
	var refused error
	commitRefusedHook = func() {
		commitRefusedHook = nil
		// The window ends, and wakes its waiters, while this commit
		// still holds its room.
		<-window
		room = l.Room()
		// Bounded: an append admitted here would wait for this commit.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, refused = l.Append(ctx, bytes.Repeat([]byte{'c'}, 100))
	}
	t.Cleanup(func() { commitRefusedHook = nil })
	l.writeMu.Unlock()
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrNoSpace) {
			t.Fatalf("append on a full disk: %v", err)
		}
	}
	if !errors.Is(refused, ErrFull) {
		t.Fatalf("append while the refused one held its room: %v, want ErrFull", refused)
	}
	select {
	case <-room:
	case <-time.After(time.Second):
		t.Fatal("Room not closed when the refused commit gave its room back: the waiter sleeps until a release")
	}
}
