package storage_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/storage"
)

// BenchmarkTSDBWrite measures samples/s into the embedded TSDB: points of
// 1,000 devices, each with 4 numeric fields and 1 string field (5 samples),
// with registry labels, written in batches as a Subscriber writes them.
func BenchmarkTSDBWrite(b *testing.B) {
	for _, batch := range []int{64, 512, 4096} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			db, err := storage.OpenTSDB(storage.TSDBOptions{Dir: b.TempDir()}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			const devices = 1000
			labels := make([]map[string]string, devices)
			for d := range labels {
				labels[d] = map[string]string{"name": fmt.Sprintf("Truck %d", d), "group": fmt.Sprintf("g%d", d%10), "site": "depot-a", "type": "gps"}
			}
			base := time.Now().Add(-time.Hour)
			pts := make([]storage.Point, batch)
			i := 0
			b.ResetTimer()
			for b.Loop() {
				for j := range pts {
					d := i % devices
					pts[j] = storage.Point{
						Device: fmt.Sprintf("dev-%d", d), Time: base.Add(time.Duration(i/devices) * time.Millisecond), Labels: labels[d],
						Numbers: map[string]float64{"temp": float64(i % 40), "gps.lat": 52.5, "gps.lon": 13.4, "battery": float64(i % 100)},
						Strings: map[string]string{"door": [2]string{"open", "closed"}[i%2]},
					}
					i++
				}
				if err := db.Write(context.Background(), pts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch*5)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
