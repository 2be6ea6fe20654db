package wal_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/wal"
)

const benchEntry = 200

// BenchmarkAppend measures append latency and throughput with 1 to 1024
// concurrent appenders of 200-byte entries, beside a raw write+fsync loop on
// the same file system in the same run: the floor group commit builds on.
// raw-overwrite-fdatasync is the floor of preallocated segments (spare.go),
// and the prealloc=off runs are the log with segments that grow as they are
// written. Compare ratios within one run: absolute figures move with the
// machine.
func BenchmarkAppend(b *testing.B) {
	b.Run("raw-fsync", benchRawFsync)
	b.Run("raw-overwrite-fdatasync", benchRawOverwrite)
	for _, n := range []int{1, 16, 256, 1024} {
		b.Run(fmt.Sprintf("appenders=%d", n), func(b *testing.B) { benchAppend(b, n, wal.Options{Hop: "bench"}) })
	}
	for _, n := range []int{1, 256} {
		b.Run(fmt.Sprintf("appenders=%d,prealloc=off", n), func(b *testing.B) {
			benchAppend(b, n, wal.Options{Hop: "bench", NoPreallocate: true})
		})
	}
}

// benchRawFsync writes one framed 200-byte record and fsyncs it, b.N times.
func benchRawFsync(b *testing.B) {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rawLoop(b, f, f.Sync)
}

// benchRawOverwrite writes one framed 200-byte record into a file of zeros
// written and fsynced beforehand, and fdatasyncs it, b.N times.
func benchRawOverwrite(b *testing.B) {
	size := int64(benchEntry+9) * int64(b.N)
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		if _, err := f.Write(zeros[:min(int64(len(zeros)), size-off)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		b.Fatal(err)
	}
	rawLoop(b, f, func() error { return wal.Datasync(f) })
}

// rawLoop writes one framed 200-byte record to f and syncs it, b.N times,
// and reports the latencies.
func rawLoop(b *testing.B, f *os.File, sync func() error) {
	rec := make([]byte, benchEntry+9)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		t := time.Now()
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := sync(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	report(b, lat, time.Since(start))
}

func benchAppend(b *testing.B, appenders int, opts wal.Options) {
	l, err := wal.Open(b.TempDir(), opts, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	per := (b.N + appenders - 1) / appenders
	lats := make([][]time.Duration, appenders)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for g := range appenders {
		wg.Go(func() {
			data := make([]byte, benchEntry)
			lat := make([]time.Duration, 0, per)
			for range per {
				t := time.Now()
				if _, err := l.Append(context.Background(), data); err != nil {
					b.Error(err)
					return
				}
				lat = append(lat, time.Since(t))
			}
			lats[g] = lat
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	report(b, slices.Concat(lats...), elapsed)
}

func report(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))].Microseconds())
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "entries/s")
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkOpen measures how long opening a log takes: every entry of every
// segment is read and verified.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	l, err := wal.Open(dir, wal.Options{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	batch := make([][]byte, 1024)
	for i := range batch {
		batch[i] = make([]byte, benchEntry)
	}
	const bytes = 256 << 20
	for range bytes / (benchEntry * len(batch)) {
		if _, err := l.AppendBatch(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(bytes)
	b.ResetTimer()
	for range b.N {
		l, err := wal.Open(dir, wal.Options{}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		l.Close()
	}
}
