package embedded_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"hash/crc32"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/ingest-io/ingest/internal/testchild"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

const (
	tsdbCrashChildEnv = "INGEST_TSDB_CRASH_CHILD"
	tornWALChildEnv   = "INGEST_TSDB_TORN_CHILD"
)

// Every round writes the same devices, and as many of its own; its samples
// lie in its own span of time, so that each round adds new data to series
// that already exist and creates series.
const (
	tsdbCrashDevices = 8
	tsdbCrashWriters = 4
	tsdbCrashSpan    = 100_000 // ms of device time per round
)

// tsdbCrashBase is the device time rounds count from: an hour ago, inside
// the out-of-order window, so that no sample is too old.
func tsdbCrashBase() int64 {
	return time.Now().Add(-time.Hour).Truncate(time.Hour).UnixMilli()
}

// tsdbCrashChild runs in a child process: writers that share the devices'
// series write interleaved timestamps at different paces, so that many of
// their samples are out of order by the time they are committed, and that
// they create the round's new series at once, and print
// every sample a Write returned nil for as "A device t", each batch ending
// with "E", until killed.
func tsdbCrashChild(dir string) int {
	round, _ := strconv.Atoi(os.Getenv("INGEST_TSDB_CRASH_ROUND"))
	base, _ := strconv.ParseInt(os.Getenv("INGEST_TSDB_CRASH_BASE"), 10, 64)
	reg := prometheus.NewRegistry()
	db, err := embedded.Open(embedded.Options{Dir: dir}, reg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var mu sync.Mutex
	say := func(b []byte) {
		mu.Lock()
		defer mu.Unlock()
		os.Stdout.Write(b) // one write per acknowledged batch: whole lines reach the parent before a kill
	}
	say([]byte("ready\n"))
	start := base + int64(round)*tsdbCrashSpan
	for wr := range tsdbCrashWriters {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(round), uint64(wr)))
			var line []byte
			for i := 0; ; {
				n := 1 + rng.IntN(64)
				points := make([]storage.Point, 0, n*tsdbCrashDevices)
				for k := range n {
					t := start + int64((i+k)*tsdbCrashWriters+wr)
					for d := range 2 * tsdbCrashDevices {
						dev := fmt.Sprintf("dev-%d", d)
						if d >= tsdbCrashDevices {
							dev = fmt.Sprintf("r%d-dev-%d", round, d) // series new in this process
						}
						points = append(points, storage.Point{
							Device:  dev,
							Time:    time.UnixMilli(t),
							Numbers: map[string]float64{"v": float64(t)},
						})
					}
				}
				if err := db.Write(context.Background(), points); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(3)
				}
				line = line[:0]
				for _, p := range points {
					line = fmt.Appendf(line, "A %s %d\n", p.Device, p.Time.UnixMilli())
				}
				say(append(line, "E\n"...))
				i += n
				// Writers run at different paces: the slow ones' samples
				// fall behind the fast ones' and go in out of order.
				time.Sleep(time.Duration(rng.IntN(200*(wr+1))) * time.Microsecond)
			}
		}()
	}
	select {}
}

// TestTSDBCrash kills a process that writes to the embedded TSDB from
// several goroutines, many of whose samples are out of order, at random
// moments, again and again, and checks after most kills that every sample
// a Write returned nil for is in the store after it is opened again (the
// check opens and closes it cleanly; after every third kill the next
// writer opens what the kill left, so crashes also follow crashes).
func TestTSDBCrash(t *testing.T) {
	kills := 15
	if testing.Short() {
		kills = 5
	}
	dir := t.TempDir()
	base := tsdbCrashBase()
	want := map[string]map[int64]bool{} // device → acknowledged times
	for round := range kills {
		cmd, sc, stderr := testchild.Start(t, nil, fmt.Sprintf("round %d", round), "ready",
			tsdbCrashChildEnv+"="+dir,
			"INGEST_TSDB_CRASH_ROUND="+strconv.Itoa(round),
			"INGEST_TSDB_CRASH_BASE="+strconv.FormatInt(base, 10))
		// The kill comes 200 ms to 1 s after the first acknowledged batch.
		var timer *time.Timer
		readAcks(t, sc, want, func() {
			if timer == nil {
				timer = time.AfterFunc(time.Duration(200+rand.IntN(800))*time.Millisecond, func() { cmd.Process.Kill() })
			}
		})
		if timer == nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: the child acknowledged nothing: %s", round, stderr.String())
		}
		timer.Stop()
		err := cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != -1 {
			t.Fatalf("round %d: child exited %d before the kill (%v): %s", round, code, err, stderr.String())
		}
		if round%3 == 1 && round < kills-1 {
			// The next child opens what this one's kill left: a crash
			// after a crash, with no clean close between.
			continue
		}
		if keep := os.Getenv("INGEST_TSDB_CRASH_KEEP"); keep != "" {
			os.RemoveAll(keep + ".pre")
			exec.Command("cp", "-a", dir, keep+".pre").Run() // as the kill left it
		}
		checkTSDBHolds(t, dir, round, want)
	}
}

// readAcks reads a child's lines until they end or one is "done", which it
// reports. Samples "A device t" count as acknowledged, into want, once the
// end line "E" of their batch is read: a kill may cut the child's write of
// a batch (pipe writes over 4 KiB are not atomic), and a cut line must not
// pass for a sample. onBatch, if set, is called after each whole batch.
func readAcks(t *testing.T, sc *bufio.Scanner, want map[string]map[int64]bool, onBatch func()) (done bool) {
	t.Helper()
	var batch [][2]string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == "A":
			batch = append(batch, [2]string{f[1], f[2]})
			continue
		case len(f) == 1 && f[0] == "done":
			return true
		case len(f) != 1 || f[0] != "E":
			continue
		}
		for _, a := range batch {
			ts, err := strconv.ParseInt(a[1], 10, 64)
			if err != nil {
				t.Fatalf("bad line from the child: %q", a)
			}
			if want[a[0]] == nil {
				want[a[0]] = map[int64]bool{}
			}
			want[a[0]][ts] = true
		}
		batch = batch[:0]
		if onBatch != nil {
			onBatch()
		}
	}
	return false
}

// checkTSDBHolds opens the TSDB in dir and checks that every sample in want
// is there with its value.
func checkTSDBHolds(t *testing.T, dir string, round int, want map[string]map[int64]bool) {
	t.Helper()
	db, err := embedded.Open(embedded.Options{Dir: dir}, nil, nil)
	if err != nil {
		t.Fatalf("round %d: reopen: %v", round, err)
	}
	defer db.Close()
	q, err := db.DB().Querier(math.MinInt64, math.MaxInt64)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	got := map[string]map[int64]float64{}
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchEqual, "__name__", "v"))
	for ss.Next() {
		s := ss.At()
		dev := s.Labels().Get("device")
		m := map[int64]float64{}
		it := s.Iterator(nil)
		for it.Next() != 0 {
			ts, v := it.At()
			m[ts] = v
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		got[dev] = m
	}
	if err := ss.Err(); err != nil {
		t.Fatal(err)
	}
	lost := 0
	var examples []string
	for dev, ts := range want {
		for tm := range ts {
			v, ok := got[dev][tm]
			switch {
			case !ok:
				lost++
				if len(examples) < 10 {
					examples = append(examples, fmt.Sprintf("%s@%d", dev, tm))
				}
			case v != float64(tm):
				t.Fatalf("round %d: %s@%d holds %v", round, dev, tm, v)
			}
		}
	}
	if lost > 0 {
		if keep := os.Getenv("INGEST_TSDB_CRASH_KEEP"); keep != "" {
			exec.Command("cp", "-a", dir, keep).Run()
		}
		t.Fatalf("round %d: %d acknowledged samples missing after the reopen, e.g. %v", round, lost, examples)
	}
}

// tornWALChild writes to the TSDB in dir in a child process: per device,
// 300 samples in order (the head cuts chunks of them), then 100 out of
// order, one Write each (the write-behind log gets their samples and the
// markers of the chunks cut from them), prints "done" and waits to be
// killed. The chunks are still in the head's write buffer when it dies.
func tornWALChild(dir string) int {
	base, _ := strconv.ParseInt(os.Getenv("INGEST_TSDB_CRASH_BASE"), 10, 64)
	db, err := embedded.Open(embedded.Options{Dir: dir}, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for _, ts := range tornWALTimes(base) {
		var points []storage.Point
		for d := range 4 {
			points = append(points, storage.Point{Device: fmt.Sprintf("dev-%d", d), Time: time.UnixMilli(ts), Numbers: map[string]float64{"v": float64(ts)}})
		}
		if err := db.Write(context.Background(), points); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
	}
	os.Stdout.WriteString("done\n")
	select {}
}

// tornWALTimes are the times tornWALChild writes, in its order.
func tornWALTimes(base int64) []int64 {
	var ts []int64
	for i := range 300 {
		ts = append(ts, base+10_000+int64(i)) // in order
	}
	for i := range 100 {
		ts = append(ts, base+int64(i)) // out of order
	}
	return ts
}

// TestTSDBTornWAL opens, twice, a TSDB whose writer was SIGKILLed and
// whose WAL ends in a torn record, as a kill in the middle of a commit
// leaves it, and checks that the out-of-order samples are there both
// times. The TSDB on its own repairs such a WAL at open but then skips the
// write-behind log's replay, so the first open misses them (recoverTSDB,
// repairWAL).
func TestTSDBTornWAL(t *testing.T) {
	dir := t.TempDir()
	base := tsdbCrashBase()
	cmd, _, _ := testchild.Start(t, nil, "writer", "done", tornWALChildEnv+"="+dir, "INGEST_TSDB_CRASH_BASE="+strconv.FormatInt(base, 10))
	cmd.Process.Kill()
	cmd.Wait()
	want := map[string]map[int64]bool{}
	for d := range 4 {
		dev := fmt.Sprintf("dev-%d", d)
		want[dev] = map[int64]bool{}
		for _, ts := range tornWALTimes(base) {
			want[dev][ts] = true
		}
	}

	// A record's first fragment and nothing after it at the end of the
	// WAL, as it writes a record longer than what is left of a page: type
	// 2 (first), length, CRC32C, data to the end of the 32 KiB page. (The
	// WAL's reader takes a fragment that ends inside a page for padding,
	// not for a torn record.)
	walDir := filepath.Join(dir, "wal")
	segs, err := os.ReadDir(walDir)
	if err != nil || len(segs) == 0 {
		t.Fatalf("wal segments: %v %v", segs, err)
	}
	last := filepath.Join(walDir, segs[len(segs)-1].Name())
	st, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	const page = 32 << 10
	pad := make([]byte, (page-st.Size()%page)%page) // to a page boundary
	data := bytes.Repeat([]byte("a commit cut short "), page)[:page-7]
	frag := binary.BigEndian.AppendUint16(append(pad, 2), uint16(len(data)))
	frag = binary.BigEndian.AppendUint32(frag, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
	frag = append(frag, data...)
	f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(frag); err != nil {
		t.Fatal(err)
	}
	f.Close()

	checkTSDBHolds(t, dir, 0, want)
	checkTSDBHolds(t, dir, 1, want)
}

// TestTSDBDamageAfterCleanClose damages a write log of a TSDB that was
// closed cleanly (a bad sector, a stray write: no crash leaves damage
// after a clean close, which fsynced the logs whole) and opens it: Open
// must refuse it, naming the log, rather than let the library's repair cut
// the log at the damage, which drops every acknowledged sample after it
// (here all of them: the damage is in the first record) and starts. Two
// lives write, each closing cleanly, so that each log has two segments
// and the damage is before the last: what Open refuses after a crash too,
// as the last open checks.
func TestTSDBDamageAfterCleanClose(t *testing.T) {
	for _, log := range []string{"wal", "wbl"} {
		t.Run(log, func(t *testing.T) {
			dir := t.TempDir()
			want := map[string]map[int64]bool{}
			for life := range 2 {
				db, err := embedded.Open(embedded.Options{Dir: dir}, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				// In order, then out of order (the write-behind log's).
				for _, ts := range tornWALTimes(tsdbCrashBase() + int64(life)*1000) {
					var points []storage.Point
					for d := range 4 {
						dev := fmt.Sprintf("dev-%d", d)
						points = append(points, storage.Point{Device: dev, Time: time.UnixMilli(ts), Numbers: map[string]float64{"v": float64(ts)}})
						if want[dev] == nil {
							want[dev] = map[int64]bool{}
						}
						want[dev][ts] = true
					}
					if err := db.Write(context.Background(), points); err != nil {
						t.Fatal(err)
					}
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
			}
			logDir := filepath.Join(dir, log)
			segs, err := os.ReadDir(logDir)
			if err != nil || len(segs) < 2 {
				t.Fatalf("%s segments: %v %v, want two or more", log, segs, err)
			}
			first := filepath.Join(logDir, segs[0].Name())
			f, err := os.OpenFile(first, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, 20); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0xff
			if _, err := f.WriteAt(b, 20); err != nil {
				t.Fatal(err)
			}
			f.Close()

			// Twice as closed cleanly, then as after a crash (no clean
			// mark): damage before the log's newest segment is no
			// crash's either.
			for try := range 3 {
				if try == 2 {
					if err := os.Remove(filepath.Join(dir, "ingest-closed-cleanly")); err != nil {
						t.Fatal(err)
					}
				}
				db, err := embedded.Open(embedded.Options{Dir: dir}, nil, nil)
				if err == nil {
					db.Close()
					checkTSDBHolds(t, dir, try, want) // says how many the repair dropped
					t.Fatalf("open %d: a TSDB whose %s was damaged before its last segment opened", try, log)
				}
				if !strings.Contains(err.Error(), logDir) {
					t.Fatalf("open %d: %v; want an error naming %s", try, err, logDir)
				}
			}
		})
	}
}
