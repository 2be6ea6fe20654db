package influx

import (
	"testing"

	"github.com/ingest-io/ingest/internal/testkit"
)

// BenchmarkInfluxSink: fields/s into real stores on loopback, 1000 lines of
// four fields per Write (three for VictoriaMetrics, without the string).
func BenchmarkInfluxSink(b *testing.B) {
	b.Run("influxdb", func(b *testing.B) {
		srv := testkit.InfluxDB(b)
		testkit.StorePost(b, srv.URL+"/query", map[string][]string{"q": {"CREATE DATABASE bench"}})
		s, err := New(Options{URL: srv.URL + "/write?db=bench"}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		testkit.BenchSink(b, s, 4)
	})
	b.Run("victoriametrics", func(b *testing.B) {
		s, err := New(Options{URL: testkit.VictoriaMetrics(b).URL + "/write", NoStrings: true}, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		testkit.BenchSink(b, s, 3)
	})
}
