package main

import (
	"strings"
	"testing"
)

// counterIn reads the sample a tier's figures need from a process's
// metrics, and a name that only begins like it is another metric.
func TestCounterIn(t *testing.T) {
	text := `# HELP ingest_middletier_entries_total Entries.
# TYPE ingest_middletier_entries_total counter
ingest_middletier_entries_total_other 7
ingest_middletier_entries_total 1234
ingest_wal_appended_entries_total{hop="middletier"} 55
ingest_wal_appended_entries_total{hop="frontend"} 42
`
	for _, tc := range []struct {
		name, label string
		want        float64
	}{
		{"ingest_middletier_entries_total", "", 1234},
		{"ingest_wal_appended_entries_total", `hop="frontend"`, 42},
		{"ingest_wal_appended_entries_total", "", 55},
	} {
		got, err := counterIn(strings.NewReader(text), tc.name, tc.label)
		if err != nil || got != tc.want {
			t.Errorf("%s{%s}: %v, %v; want %v", tc.name, tc.label, got, err, tc.want)
		}
	}
	if _, err := counterIn(strings.NewReader(text), "ingest_storage_points_written_total", ""); err == nil {
		t.Error("a metric the text lacks was found")
	}
}

// FuzzCounterIn: whatever a metrics endpoint answers, counterIn returns a
// value or an error, and never panics.
func FuzzCounterIn(f *testing.F) {
	f.Add("ingest_middletier_entries_total 1234\n", "ingest_middletier_entries_total", "")
	f.Add(`x{hop="frontend"} 42`+"\n", "x", `hop="frontend"`)
	f.Add("x{", "x", "")
	f.Add("x", "x", "")
	f.Fuzz(func(t *testing.T, text, name, label string) {
		counterIn(strings.NewReader(text), name, label)
	})
}
