package storage_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/ingest-io/ingest/storage"
)

const tsdbCrashChildEnv = "INGEST_TSDB_CRASH_CHILD"

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
// every sample a Write returned nil for as "A device t", until killed.
func tsdbCrashChild(dir string) int {
	round, _ := strconv.Atoi(os.Getenv("INGEST_TSDB_CRASH_ROUND"))
	base, _ := strconv.ParseInt(os.Getenv("INGEST_TSDB_CRASH_BASE"), 10, 64)
	reg := prometheus.NewRegistry()
	db, err := storage.OpenTSDB(storage.TSDBOptions{Dir: dir}, reg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
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
				say(line)
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
// moments, again and again, and checks after each kill that every sample a
// Write returned nil for is in the store after it is opened again.
func TestTSDBCrash(t *testing.T) {
	kills := 15
	if testing.Short() {
		kills = 5
	}
	dir := t.TempDir()
	base := tsdbCrashBase()
	want := map[string]map[int64]bool{} // device → acknowledged times
	for round := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), tsdbCrashChildEnv+"="+dir,
			"INGEST_TSDB_CRASH_ROUND="+strconv.Itoa(round),
			"INGEST_TSDB_CRASH_BASE="+strconv.FormatInt(base, 10))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		if !sc.Scan() || sc.Text() != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: child did not start: %s", round, stderr.String())
		}
		timer := time.AfterFunc(time.Duration(200+rand.IntN(800))*time.Millisecond, func() { cmd.Process.Kill() })
		n := 0
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || f[0] != "A" {
				continue
			}
			ts, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				t.Fatalf("round %d: %q", round, sc.Text())
			}
			if want[f[1]] == nil {
				want[f[1]] = map[int64]bool{}
			}
			want[f[1]][ts] = true
			n++
		}
		timer.Stop()
		err = cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != -1 {
			t.Fatalf("round %d: child exited %d before the kill (%v): %s", round, code, err, stderr.String())
		}
		if n == 0 {
			t.Fatalf("round %d: nothing acknowledged before the kill: %s", round, stderr.String())
		}
		checkTSDBHolds(t, dir, round, want)
	}
}

// checkTSDBHolds opens the TSDB in dir and checks that every sample in want
// is there with its value.
func checkTSDBHolds(t *testing.T, dir string, round int, want map[string]map[int64]bool) {
	t.Helper()
	db, err := storage.OpenTSDB(storage.TSDBOptions{Dir: dir}, nil, nil)
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
		t.Fatalf("round %d: %d acknowledged samples missing after a SIGKILL and a reopen, e.g. %v", round, lost, examples)
	}
}
