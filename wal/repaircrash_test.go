package wal_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/ingest-io/ingest/wal"
)

// TestRepairTruncatedCrash: a repair of a truncated last segment
// (Options.RepairTruncated) that is killed part way must leave a log that
// the next open (with the repair option or without) takes, keeping the
// whole entries the segment had left. The repair extends the segment to its
// created size and moves a release mark past the cut back to the last entry
// kept; if the process dies between the two, the segment no longer looks
// cut, so nothing says the mark is to move, and a log that refuses to open
// for a mark "beyond the last entry" is what the crash left.
//
// The child is killed with SIGKILL by strace on entering the second
// fdatasync of its open: the first makes the zeroing of the partial entry
// durable, the second the extension of the segment, which has been done.
func TestRepairTruncatedCrash(t *testing.T) {
	const env = "INGEST_WAL_REPAIRCRASH_CHILD"
	repairOpts := preallocOpts
	repairOpts.RepairTruncated = true
	if dir := os.Getenv(env); dir != "" {
		l, err := wal.Open(dir, repairOpts, nil, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		l.Close()
		os.Exit(0)
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Fatal("strace not found: make deps installs it")
	}
	dir, segs := buildPreallocated(t)
	// Consumers were done with entries up to 119; the cut below takes
	// 118 on, so the repair moves the mark back to 117.
	if err := wal.WriteRelease(dir, 119); err != nil {
		t.Fatal(err)
	}
	tailEnd := (corruptEntries - 3*perSegment) * storedEntry
	mutate(t, segs[3], func(b []byte) []byte { return b[:tailEnd/2+50] })

	cmd := exec.Command(strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync",
		"-e", "inject=fdatasync:signal=KILL:when=2",
		os.Args[0], "-test.run=^TestRepairTruncatedCrash$")
	cmd.Env = append(os.Environ(), env+"="+dir)
	out, err := cmd.CombinedOutput()
	t.Logf("child: %v: %s", err, out)
	if fi, err := os.Stat(segs[3]); err != nil || fi.Size() != preallocSize {
		t.Fatalf("the child was not killed after extending the repaired segment: %v (%v)", fi.Size(), err)
	}

	for _, opts := range []wal.Options{repairOpts, preallocOpts} {
		l, err := wal.Open(dir, opts, nil, nil)
		if err != nil {
			t.Fatalf("open (repair option %v) after a repair killed part way: %v", opts.RepairTruncated, err)
		}
		if l.LastIndex() != 117 || l.Released() > 117 {
			l.Close()
			t.Fatalf("last %d released %d, want 117 and at most 117", l.LastIndex(), l.Released())
		}
		first := l.FirstIndex() // the segments wholly released are gone
		for i, e := range readAll(t, l, first) {
			if want := first + uint64(i); e.Index != want || !bytes.Equal(e.Data, corruptPayload(int(want))) {
				l.Close()
				t.Fatalf("entry %d damaged", e.Index)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
