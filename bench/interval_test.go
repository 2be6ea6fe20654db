package main

import (
	"strings"
	"testing"
)

func TestParseRuntime(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 1234
go_goroutines_other 5
go_memstats_heap_inuse_bytes 5.24288e+06
ingest_wal_depth{hop="frontend"} 3
`
	g, heap := parseRuntime(strings.NewReader(in))
	if g != 1234 || heap != 5 {
		t.Fatalf("goroutines %d, heap %g MiB; want 1234, 5", g, heap)
	}
}

// FuzzParseRuntime: whatever an endpoint answers, parsing ends without a
// panic.
func FuzzParseRuntime(f *testing.F) {
	f.Add("go_goroutines 12\ngo_memstats_heap_inuse_bytes 1e6\n")
	f.Add("go_goroutines NaN\n\n go_goroutines")
	f.Fuzz(func(t *testing.T, s string) {
		g, heap := parseRuntime(strings.NewReader(s))
		_, _ = g, heap
	})
}
