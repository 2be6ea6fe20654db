package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseRuntime(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 1234
go_goroutines_other 5
go_memstats_heap_inuse_bytes 5.24288e+06
go_memstats_heap_sys_bytes 1.048576e+07
go_memstats_heap_released_bytes 2.097152e+06
ingest_wal_depth{hop="frontend"} 3
`
	s, err := parseScrape(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	rt := runtimeOf(s)
	if rt.goroutines != 1234 || rt.heapMiB != 5 || rt.heldMiB() != 8 {
		t.Fatalf("goroutines %d, heap %g MiB, held %g MiB; want 1234, 5, 8", rt.goroutines, rt.heapMiB, rt.heldMiB())
	}
}

func TestParseStatus(t *testing.T) {
	in := "Name:\tingest\nVmRSS:\t  204800 kB\nRssAnon:\t  153600 kB\nRssFile:\t   51200 kB\nRssShmem:\t       0 kB\nThreads:\t12\n"
	m := parseStatus(in)
	if m.rss != 200 || m.anon != 150 || m.file != 50 || m.threads != 12 {
		t.Fatalf("parseStatus = %+v; want rss 200, anon 150, file 50 MiB, 12 threads", m)
	}
	if self := processMemory(0); self != (memory{}) {
		t.Fatalf("processMemory(0) = %+v; want zero for a pid that does not exist", self)
	}
}

// FuzzParseRuntime: whatever an endpoint answers, parsing and reading the
// runtime's figures end without a panic.
func FuzzParseRuntime(f *testing.F) {
	f.Add("go_goroutines 12\ngo_memstats_heap_inuse_bytes 1e6\n")
	f.Add("go_goroutines NaN\n\n go_goroutines")
	f.Fuzz(func(t *testing.T, s string) {
		if sc, err := parseScrape(strings.NewReader(s)); err == nil {
			_ = runtimeOf(sc)
		}
		_ = parseStatus(s)
	})
}

// TestIntervalsCoverTheRun: with -interval, the lines cover the whole of
// the sending, its last part too when the duration is not a whole number
// of intervals: what was acknowledged in it is in a line.
func TestIntervalsCoverTheRun(t *testing.T) {
	c := config{Spawn: binPath, Devices: 4, Rate: 20, Window: 4, Size: 150, Shape: "sensor", Sources: 1,
		Duration: 1500 * time.Millisecond, Interval: time.Second, Drain: 10 * time.Second, Quiet: true,
		JSON: filepath.Join(t.TempDir(), "intervals.json")}
	r := runResult(t, c)
	var acked int64
	for _, iv := range r.Intervals {
		acked += iv.Acked
	}
	// The acknowledgements of the last messages may come in the drain,
	// after the sending and its lines: one a device at most at this rate.
	if len(r.Intervals) != 2 || acked < r.Acked-int64(c.Devices) {
		t.Fatalf("%d interval lines acknowledging %d messages in all, for a run of %v at -interval %v that acknowledged %d: want 2 lines (the second for the last half second) and all but at most %d of them",
			len(r.Intervals), acked, c.Duration, c.Interval, r.Acked, c.Devices)
	}
}
