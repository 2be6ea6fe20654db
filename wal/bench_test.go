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
// Compare ratios within one run: absolute figures move with the machine.
func BenchmarkAppend(b *testing.B) {
	b.Run("raw-fsync", benchRawFsync)
	for _, n := range []int{1, 16, 256, 1024} {
		b.Run(fmt.Sprintf("appenders=%d", n), func(b *testing.B) { benchAppend(b, n) })
	}
}

// benchRawFsync writes one framed 200-byte record and fsyncs it, b.N times.
func benchRawFsync(b *testing.B) {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "raw"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rec := make([]byte, benchEntry+9)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		t := time.Now()
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	report(b, lat, time.Since(start))
}

func benchAppend(b *testing.B, appenders int) {
	l, err := wal.Open(b.TempDir(), wal.Options{Hop: "bench"}, nil, nil)
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
