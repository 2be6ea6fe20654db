package storage

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// benchPoints returns batches of n points from 100 devices, each with three
// numbers and a string (four samples), at times that never repeat.
func benchPoints(n int) func(i int) []Point {
	t0 := time.Now().Add(-30 * time.Minute)
	ps := make([]Point, n)
	devs := make([]string, 100)
	for i := range devs {
		devs[i] = fmt.Sprintf("bench-%03d", i)
	}
	lbls := map[string]string{"site": "lab", "group": "g1"}
	return func(iter int) []Point {
		for j := range ps {
			k := iter*n + j
			ps[j] = Point{
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

func benchSink(b *testing.B, s Sink, samplesPerPoint int) {
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

// BenchmarkRemoteWriteSink: samples/s into real stores on loopback, 1000
// points (4000 samples) per Write, requests of 2000 samples.
func BenchmarkRemoteWriteSink(b *testing.B) {
	for _, c := range []struct {
		name string
		srv  func(testing.TB) *extServer
	}{{"prometheus", prometheusServer}, {"victoriametrics", victoriaServer}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := NewRemoteWriteSink(RemoteWriteOptions{URL: c.srv(b).url + "/api/v1/write"}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			benchSink(b, s, 4)
		})
	}
}

// BenchmarkInfluxSink: fields/s into real stores on loopback, 1000 lines of
// four fields per Write (three for VictoriaMetrics, without the string).
func BenchmarkInfluxSink(b *testing.B) {
	b.Run("influxdb", func(b *testing.B) {
		srv := influxServer(b)
		extPost(b, srv.url+"/query", map[string][]string{"q": {"CREATE DATABASE bench"}})
		s, err := NewInfluxSink(InfluxOptions{URL: srv.url + "/write?db=bench"}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		benchSink(b, s, 4)
	})
	b.Run("victoriametrics", func(b *testing.B) {
		s, err := NewInfluxSink(InfluxOptions{URL: victoriaServer(b).url + "/write", NoStrings: true}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		benchSink(b, s, 3)
	})
}
