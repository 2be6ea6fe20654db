package embedded_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunks"
	precord "github.com/prometheus/prometheus/tsdb/record"
	"github.com/prometheus/prometheus/tsdb/wlog"

	"github.com/ingest-io/ingest/internal/testchild"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

const wblCutChildEnv = "INGEST_TSDB_WBLCUT_CHILD"

// A commit of the TSDB writes its WAL record, applies its samples, and then
// writes its out-of-order records to the write-behind log (WBL) in one
// call: the samples, a marker where a series' out-of-order chunk was cut,
// the samples after it. The log writes each 32 KiB page as it fills, so a
// kill in that call can leave the commit's first WBL records on disk and
// not its last, with a torn record at the end: the commit is whole in the
// WAL, half in the WBL, and never acknowledged.
//
// wblCutBulk series with one out-of-order sample each come first in the cut
// commit (a marker and a one-sample record each) and push the commit's
// last records across the end of the WBL's first page.
const wblCutBulk = 557

// wblCutInOrder is one in-order sample per series, after all the others.
func wblCutInOrder(base int64) []storage.Point {
	var ps []storage.Point
	for i := range wblCutBulk {
		ps = append(ps, storage.Point{Device: fmt.Sprintf("b%d", i), Time: time.UnixMilli(base + 100_000), Numbers: map[string]float64{"v": float64(base + 100_000)}})
	}
	return append(ps, storage.Point{Device: "x", Time: time.UnixMilli(base + 100_000), Numbers: map[string]float64{"v": float64(base + 100_000)}})
}

// wblCutOutOfOrder is out of order: one sample per bulk series, then 38 of
// x: 32 fill x's out-of-order head chunk, the 33rd cuts it (a marker in
// the middle of the commit's WBL records), and the rest follow it.
func wblCutOutOfOrder(base int64) []storage.Point {
	var ps []storage.Point
	for i := range wblCutBulk {
		ps = append(ps, storage.Point{Device: fmt.Sprintf("b%d", i), Time: time.UnixMilli(base + 1), Numbers: map[string]float64{"v": float64(base + 1)}})
	}
	for i := range 38 {
		ps = append(ps, storage.Point{Device: "x", Time: time.UnixMilli(base + int64(i)), Numbers: map[string]float64{"v": float64(base + int64(i))}})
	}
	return ps
}

// wblCutChild writes to the TSDB in dir in a child process: with mode
// "cut" the in-order batch and then the out-of-order one, with "resend" the
// out-of-order one again (as a middletier delivers again what was not
// acknowledged). It prints each acknowledged batch as tsdbCrashChild does,
// then "done", and waits to be killed (in mode "cut" the kill comes inside
// the second batch's commit; if it has not, the child exits).
func wblCutChild(dir string) int {
	// strace counts system calls per thread: the commits' log writes are
	// made by the goroutine that commits, which stays on this thread.
	runtime.LockOSThread()
	base, _ := strconv.ParseInt(os.Getenv("INGEST_TSDB_CRASH_BASE"), 10, 64)
	db, err := embedded.Open(embedded.Options{Dir: dir}, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	os.Stdout.WriteString("ready\n")
	batches := [][]storage.Point{wblCutOutOfOrder(base)}
	if os.Getenv("INGEST_TSDB_WBLCUT_MODE") == "cut" {
		batches = [][]storage.Point{wblCutInOrder(base), wblCutOutOfOrder(base)}
	}
	for _, ps := range batches {
		if err := db.Write(context.Background(), ps); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		var line []byte
		for _, p := range ps {
			line = fmt.Appendf(line, "A %s %d\n", p.Device, p.Time.UnixMilli())
		}
		os.Stdout.Write(append(line, "E\n"...))
	}
	os.Stdout.WriteString("done\n")
	if os.Getenv("INGEST_TSDB_WBLCUT_MODE") == "cut" {
		return 0 // the injected kill missed; the test fails and needs no kill
	}
	select {}
}

// TestTSDBKillInsideWBLWrite kills a writer inside one commit's write to
// the WBL, deterministically (strace's fault injection kills it on its
// second write to the WBL's first segment: the first is the page holding
// the commit's first records), and checks that nothing acknowledged is
// lost: at the open after the kill (which rewrites a WBL that has markers
// and a torn tail, stripWBLMarkers), after the batch is written again and
// acknowledged and the writer killed, and after another writer opens what
// that kill left and is killed in turn.
func TestTSDBKillInsideWBLWrite(t *testing.T) {
	strace := testkit.Tool(t, "strace", "strace")
	dir := t.TempDir()
	base := tsdbCrashBase()
	env := []string{wblCutChildEnv + "=" + dir, "INGEST_TSDB_CRASH_BASE=" + strconv.FormatInt(base, 10)}
	want := map[string]map[int64]bool{}

	seg := wlog.SegmentName(filepath.Join(dir, "wbl"), 0)
	cmd, sc, stderr := testchild.Start(t, []string{strace, "-f", "-qq", "-o", "/dev/null", "-P", seg,
		"-e", "trace=write", "-e", "inject=write:signal=KILL:when=2"},
		"cut", "ready", append(env, "INGEST_TSDB_WBLCUT_MODE=cut")...)
	done := readAcks(t, sc, want, nil)
	cmd.Wait()
	if done {
		t.Fatalf("the injected kill missed the commit: %s", stderr.String())
	}
	if len(want["x"]) != 1 {
		t.Fatalf("the in-order batch was not acknowledged before the kill: %s", stderr.String())
	}

	// The precondition: the kill cut the out-of-order commit's WBL records
	// after some of x's samples and before others.
	inWAL, inWBL := wblCutSamplesOfX(t, dir, base)
	var walOnly []int64
	for ts := range inWAL {
		if !inWBL[ts] {
			walOnly = append(walOnly, ts)
		}
	}
	t.Logf("after the kill, x's out-of-order samples: %d in the WAL, %d in the WBL, in the WAL only (never acknowledged): %v", len(inWAL), len(inWBL), walOnly)
	if len(inWAL) != 38 || len(inWBL) == 0 || len(walOnly) == 0 {
		t.Fatalf("the kill did not cut the commit's WBL records in the middle (the library's record sizes changed? tune wblCutBulk)")
	}
	checkTSDBHolds(t, dir, 1, want)

	// Written again and acknowledged; a kill; another writer opens what it
	// left (no clean close between), writes again and is killed too.
	for round := 2; round <= 3; round++ {
		cmd, sc, stderr := testchild.Start(t, nil, fmt.Sprintf("resend %d", round), "ready", append(env, "INGEST_TSDB_WBLCUT_MODE=resend")...)
		done := readAcks(t, sc, want, nil)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if !done {
			t.Fatalf("resend %d: the writer stopped early: %s", round, stderr.String())
		}
	}
	if len(want["x"]) != 39 {
		t.Fatalf("x: %d samples acknowledged, want 39", len(want["x"]))
	}
	checkTSDBHolds(t, dir, 3, want)
}

// wblCutSamplesOfX reads the TSDB's WAL and WBL in dir and returns the
// times of x's out-of-order samples found in each.
func wblCutSamplesOfX(t *testing.T, dir string, base int64) (inWAL, inWBL map[int64]bool) {
	t.Helper()
	xref := map[chunks.HeadSeriesRef]bool{}
	inWAL, inWBL = map[int64]bool{}, map[int64]bool{}
	dec := precord.NewDecoder(labels.NewSymbolTable(), nil)
	for _, log := range []struct {
		dir string
		in  map[int64]bool
	}{{filepath.Join(dir, "wal"), inWAL}, {filepath.Join(dir, "wbl"), inWBL}} {
		first, last, err := wlog.Segments(log.dir)
		if err != nil {
			t.Fatal(err)
		}
		for i := first; i <= last; i++ {
			sr, err := wlog.OpenReadSegment(wlog.SegmentName(log.dir, i))
			if err != nil {
				t.Fatal(err)
			}
			// Up to the torn record the kill left at the WBL's end.
			r := wlog.NewReader(wlog.NewSegmentBufReader(sr))
			for r.Next() {
				rec := r.Record()
				switch dec.Type(rec) {
				case precord.Series:
					ss, err := dec.Series(rec, nil)
					if err != nil {
						t.Fatal(err)
					}
					for _, s := range ss {
						if s.Labels.Get("device") == "x" {
							xref[s.Ref] = true
						}
					}
				case precord.Samples, precord.SamplesV2:
					ss, err := dec.Samples(rec, nil)
					if err != nil {
						t.Fatal(err)
					}
					for _, s := range ss {
						if xref[s.Ref] && s.T < base+100_000 {
							log.in[s.T] = true
						}
					}
				}
			}
			sr.Close()
		}
	}
	return inWAL, inWBL
}
