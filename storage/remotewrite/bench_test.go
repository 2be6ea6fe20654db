package remotewrite

import (
	"testing"

	"github.com/ingest-io/ingest/internal/testkit"
)

// BenchmarkRemoteWriteSink: samples/s into real stores on loopback, 1000
// points (4000 samples) per Write, requests of 2000 samples.
func BenchmarkRemoteWriteSink(b *testing.B) {
	for _, c := range []struct {
		name string
		srv  func(testing.TB) *testkit.Store
	}{{"prometheus", testkit.Prometheus}, {"victoriametrics", testkit.VictoriaMetrics}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := New(Options{URL: c.srv(b).URL + "/api/v1/write"}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			testkit.BenchSink(b, s, 4)
		})
	}
}
