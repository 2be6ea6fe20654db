package testkit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ingest-io/ingest/storage"
)

// Points returns n points of device, one a second from t0, each with three
// numbers and a string, and registry labels that need escaping in line
// protocol: what the storage sinks' tests write to the stores.
func Points(device string, t0 time.Time, n int) []storage.Point {
	ps := make([]storage.Point, n)
	for i := range ps {
		ps[i] = storage.Point{
			Device:  device,
			Time:    t0.Add(time.Duration(i) * time.Second),
			Labels:  map[string]string{"site": "lab 1", "group": "a,b=c"},
			Numbers: map[string]float64{"temp": float64(i) + 0.25, "gps.lat": -52.5 + float64(i)/1e3, "on": float64(i % 2)},
			Strings: map[string]string{"status": fmt.Sprintf(`ok "%d" \ done`, i%3)},
			Origin:  "fe1",
			Index:   uint64(i) + 1,
		}
	}
	return ps
}

// BenchSink writes to s in a loop, 1000 points a Write (from 100 devices,
// each with three numbers and a string, at times that never repeat), and
// reports samples/s, counting samplesPerPoint per point.
func BenchSink(b *testing.B, s storage.Sink, samplesPerPoint int) {
	const batch = 1000
	next := benchPoints(batch)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := s.Write(context.Background(), next(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch*samplesPerPoint)/b.Elapsed().Seconds(), "samples/s")
}

// benchPoints returns batches of n points from 100 devices, each with three
// numbers and a string (four samples), at times that never repeat.
func benchPoints(n int) func(i int) []storage.Point {
	t0 := time.Now().Add(-30 * time.Minute)
	ps := make([]storage.Point, n)
	devs := make([]string, 100)
	for i := range devs {
		devs[i] = fmt.Sprintf("bench-%03d", i)
	}
	lbls := map[string]string{"site": "lab", "group": "g1"}
	return func(iter int) []storage.Point {
		for j := range ps {
			k := iter*n + j
			ps[j] = storage.Point{
				Device:  devs[k%len(devs)],
				Time:    t0.Add(time.Duration(k/len(devs)) * time.Millisecond),
				Labels:  lbls,
				Numbers: map[string]float64{"temp": float64(k), "gps.lat": 52.1, "on": 1},
				Strings: map[string]string{"status": "ok"},
			}
		}
		return ps
	}
}
