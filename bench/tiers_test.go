package main

import (
	"strings"
	"testing"
)

// sampleOf reads the sample a tier's figures need from a process's
// metrics, and a name that only begins like it is another metric.
func TestSampleOf(t *testing.T) {
	text := `# HELP ingest_middletier_entries_total Entries.
# TYPE ingest_middletier_entries_total counter
ingest_middletier_entries_total_other 7
ingest_middletier_entries_total 1234
ingest_wal_appended_entries_total{hop="middletier"} 55
ingest_wal_appended_entries_total{hop="frontend"} 42
`
	s, err := parseScrape(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, key, value string
		want             float64
	}{
		{"ingest_middletier_entries_total", "", "", 1234},
		{"ingest_wal_appended_entries_total", "hop", "frontend", 42},
		{"ingest_wal_appended_entries_total", "", "", 55},
	} {
		got, ok := sampleOf(s, tc.name, tc.key, tc.value)
		if !ok || got != tc.want {
			t.Errorf("%s{%s=%q}: %v, %v; want %v", tc.name, tc.key, tc.value, got, ok, tc.want)
		}
	}
	if _, ok := sampleOf(s, "ingest_storage_points_written_total", "", ""); ok {
		t.Error("a metric the text lacks was found")
	}
	if _, ok := sampleOf(s, "ingest_wal_appended_entries_total", "hop", "storage"); ok {
		t.Error("a label value the text lacks was found")
	}
}

// FuzzSampleOf: whatever a metrics endpoint answers, it is parsed and
// read or refused, and never panics.
func FuzzSampleOf(f *testing.F) {
	f.Add("ingest_middletier_entries_total 1234\n", "ingest_middletier_entries_total", "", "")
	f.Add(`x{hop="frontend"} 42`+"\n", "x", "hop", "frontend")
	f.Add("x{", "x", "", "")
	f.Add("x", "x", "", "")
	f.Fuzz(func(t *testing.T, text, name, key, value string) {
		s, err := parseScrape(strings.NewReader(text))
		if err != nil {
			return
		}
		sampleOf(s, name, key, value)
	})
}
