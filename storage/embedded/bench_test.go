package embedded_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

// BenchmarkTSDBWrite measures samples/s into the embedded TSDB: points of
// 1,000 devices, each with 4 numeric fields and 1 string field (5 samples),
// with registry labels, written in batches as a Writer writes them.
// Every Write is durable: its commit, then an fsync of the TSDB's write
// logs; sync-µs/op is the time of that fsync.
func BenchmarkTSDBWrite(b *testing.B) {
	for _, batch := range []int{64, 512, 4096} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			db, reg := openBenchTSDB(b)
			pts := make([]storage.Point, batch)
			next := benchPoints("dev-")
			b.ResetTimer()
			for b.Loop() {
				next(pts)
				if err := db.Write(context.Background(), pts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch*5)/b.Elapsed().Seconds(), "samples/s")
			_, sum := syncStats(b, reg)
			b.ReportMetric(sum*1e6/float64(b.N), "sync-µs/op")
		})
	}
}

// BenchmarkTSDBWriteConcurrent is BenchmarkTSDBWrite with several writers
// at once, as a storage writer's followers of several middletiers write:
// Writes committed while an fsync runs share the next one (writes/sync).
func BenchmarkTSDBWriteConcurrent(b *testing.B) {
	const batch = 512
	for _, writers := range []int{2, 4} {
		b.Run(fmt.Sprintf("writers=%d/batch=%d", writers, batch), func(b *testing.B) {
			db, reg := openBenchTSDB(b)
			work := make(chan struct{})
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					pts := make([]storage.Point, batch)
					next := benchPoints(fmt.Sprintf("w%d-dev-", w)) // one device set per writer
					for range work {
						next(pts)
						if err := db.Write(context.Background(), pts); err != nil {
							b.Error(err)
						}
					}
				})
			}
			b.ResetTimer()
			for range b.N {
				work <- struct{}{}
			}
			close(work)
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N*batch*5)/b.Elapsed().Seconds(), "samples/s")
			syncs, _ := syncStats(b, reg)
			b.ReportMetric(float64(b.N)/syncs, "writes/sync")
		})
	}
}

func openBenchTSDB(b *testing.B) (*embedded.TSDB, *prometheus.Registry) {
	b.Helper()
	reg := prometheus.NewRegistry()
	db, err := embedded.Open(embedded.Options{Dir: b.TempDir()}, reg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db, reg
}

// benchPoints returns a function that fills a batch with the next points,
// of devices named prefix0 to prefix999.
func benchPoints(prefix string) func([]storage.Point) {
	const devices = 1000
	labels := make([]map[string]string, devices)
	for d := range labels {
		labels[d] = map[string]string{"name": fmt.Sprintf("Truck %d", d), "group": fmt.Sprintf("g%d", d%10), "site": "depot-a", "type": "gps"}
	}
	base := time.Now().Add(-time.Hour)
	i := 0
	return func(pts []storage.Point) {
		for j := range pts {
			d := i % devices
			pts[j] = storage.Point{
				Device: fmt.Sprintf("%s%d", prefix, d), Time: base.Add(time.Duration(i/devices) * time.Millisecond), Labels: labels[d],
				Numbers: map[string]float64{"temp": float64(i % 40), "gps.lat": 52.5, "gps.lon": 13.4, "battery": float64(i % 100)},
				Strings: map[string]string{"door": [2]string{"open", "closed"}[i%2]},
			}
			i++
		}
	}
}

// syncStats returns the count and total seconds of the TSDB's write-log
// fsyncs so far.
func syncStats(b *testing.B, reg *prometheus.Registry) (count, seconds float64) {
	b.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ingest_storage_tsdb_wal_sync_duration_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			return float64(h.GetSampleCount()), h.GetSampleSum()
		}
	}
	b.Fatal("no ingest_storage_tsdb_wal_sync_duration_seconds")
	return 0, 0
}
