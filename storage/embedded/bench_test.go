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

// BenchmarkTSDBCommit measures what a Write costs before its fsync: one
// transaction's appends and its commit to the TSDB's write logs, for the
// points of BenchmarkTSDBWrite (1,000 devices, 5 samples each). The points
// are built once and only their time and values change between batches, so
// allocs/op are the commit's own. ns/sample is the time per sample.
func BenchmarkTSDBCommit(b *testing.B) {
	for _, batch := range []int{512, 4096} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			db, _ := openBenchTSDB(b)
			pts := make([]storage.Point, batch)
			next := reusedBenchPoints(pts)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				next()
				if err := embedded.Commit(db, context.Background(), pts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch*5), "ns/sample")
		})
	}
}

// reusedBenchPoints fills pts with the points of benchPoints' devices once,
// and returns a function that moves them to their next time and values in
// place, allocating nothing.
func reusedBenchPoints(pts []storage.Point) func() {
	const devices = 1000
	labels := make([]map[string]string, devices)
	for d := range labels {
		labels[d] = map[string]string{"name": fmt.Sprintf("Truck %d", d), "group": fmt.Sprintf("g%d", d%10), "site": "depot-a", "type": "gps"}
	}
	for j := range pts {
		d := j % devices
		pts[j] = storage.Point{
			Device: fmt.Sprintf("dev-%d", d), Labels: labels[d],
			Numbers: map[string]float64{"temp": 0, "gps.lat": 52.5, "gps.lon": 13.4, "battery": 0},
			Strings: map[string]string{"door": "open"},
		}
	}
	// Slot j is device j%devices, its (j/devices)th point in the batch:
	// each batch moves every device's times past the last batch's.
	perBatch := (len(pts) + devices - 1) / devices
	base := time.Now().Add(-time.Hour)
	i := 0
	return func() {
		for j := range pts {
			p := &pts[j]
			p.Time = base.Add(time.Duration(i*perBatch+j/devices) * time.Millisecond)
			p.Numbers["temp"], p.Numbers["battery"] = float64((i+j)%40), float64((i+j)%100)
			p.Strings["door"] = [2]string{"open", "closed"}[(i+j)%2]
		}
		i++
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
