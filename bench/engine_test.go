package main

import (
	"math"
	"strings"
	"testing"
)

func TestBucketQuantile(t *testing.T) {
	bounds := []float64{0.001, 0.01, 0.1}
	cum := []float64{50, 90, 100}
	for _, c := range []struct {
		p, want float64
	}{
		{0.5, 0.001},               // the 50th of 100 is the last in the first bucket
		{0.25, 0.0005},             // halfway into the first bucket, from 0
		{0.7, 0.001 + 0.009*20/40}, // 20 of the second bucket's 40
		{0.99, 0.01 + 0.09*9/10},
		{1, 0.1},
	} {
		if got := bucketQuantile(c.p, bounds, cum, 100); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	// Past the last bound: 10 observations above 0.1 s.
	if got := bucketQuantile(0.95, bounds, cum, 110); !math.IsInf(got, 1) {
		t.Errorf("past the last bucket: %v", got)
	}
}

const beforeText = `# TYPE ingest_wal_fsync_duration_seconds histogram
ingest_wal_fsync_duration_seconds_bucket{hop="frontend",le="0.001"} 10
ingest_wal_fsync_duration_seconds_bucket{hop="frontend",le="0.01"} 10
ingest_wal_fsync_duration_seconds_bucket{hop="frontend",le="+Inf"} 10
ingest_wal_fsync_duration_seconds_sum{hop="frontend"} 0.005
ingest_wal_fsync_duration_seconds_count{hop="frontend"} 10
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 1000
`

const afterText = `# TYPE ingest_wal_fsync_duration_seconds histogram
ingest_wal_fsync_duration_seconds_bucket{hop="frontend",le="0.001"} 60
ingest_wal_fsync_duration_seconds_bucket{hop="frontend",le="0.01"} 110
ingest_wal_fsync_duration_seconds_bucket{hop="frontend",le="+Inf"} 110
ingest_wal_fsync_duration_seconds_sum{hop="frontend"} 0.5
ingest_wal_fsync_duration_seconds_count{hop="frontend"} 110
ingest_wal_fsync_duration_seconds_bucket{hop="middletier",le="0.001"} 4
ingest_wal_fsync_duration_seconds_bucket{hop="middletier",le="0.01"} 4
ingest_wal_fsync_duration_seconds_bucket{hop="middletier",le="+Inf"} 4
ingest_wal_fsync_duration_seconds_sum{hop="middletier"} 0.002
ingest_wal_fsync_duration_seconds_count{hop="middletier"} 4
# TYPE ingest_storage_delivery_latency_seconds histogram
ingest_storage_delivery_latency_seconds_bucket{le="0.01"} 99
ingest_storage_delivery_latency_seconds_bucket{le="0.1"} 100
ingest_storage_delivery_latency_seconds_bucket{le="+Inf"} 100
ingest_storage_delivery_latency_seconds_sum 0.5
ingest_storage_delivery_latency_seconds_count 100
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 401000
`

// TestEngineDelta: the figures are what the histograms gained between the
// scrapes, by hop, and the allocations per acknowledged message.
func TestEngineDelta(t *testing.T) {
	before, err := parseScrape(strings.NewReader(beforeText))
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseScrape(strings.NewReader(afterText))
	if err != nil {
		t.Fatal(err)
	}
	f := engineDelta(before, after, after, 200)
	if f == nil {
		t.Fatal("no figures")
	}
	fe := f.Fsync["frontend"]
	// 100 new syncs: 50 under 1 ms, 50 between 1 and 10 ms.
	if fe == nil || fe.Count != 100 || math.Abs(fe.P50-1) > 1e-9 || math.Abs(fe.P99-(1+9*49.0/50)) > 1e-9 {
		t.Errorf("frontend fsync %+v", fe)
	}
	if mt := f.Fsync["middletier"]; mt == nil || mt.Count != 4 || mt.P99 > 1 {
		t.Errorf("middletier fsync %+v (no earlier scrape of it: all 4 are new)", mt)
	}
	if d := f.StoreDelivery; d == nil || d.Count != 100 || math.Abs(d.P99-10) > 1e-9 || d.P999 <= 10 {
		t.Errorf("store delivery %+v", d)
	}
	if f.AllocPerMsg != 2000 {
		t.Errorf("alloc per message %v, want 2000", f.AllocPerMsg)
	}
	if engineDelta(nil, after, after, 1) != nil || engineDelta(before, nil, nil, 1) != nil {
		t.Error("figures without both scrapes")
	}
}

// FuzzEngineDelta: whatever an endpoint serves, the figures are computed
// or left out, never a panic.
func FuzzEngineDelta(f *testing.F) {
	f.Add(beforeText, afterText)
	f.Add(afterText, beforeText)
	f.Add("", "x_bucket{le=\"1\"} NaN\n")
	f.Fuzz(func(t *testing.T, a, b string) {
		sa, err := parseScrape(strings.NewReader(a))
		if err != nil {
			return
		}
		sb, err := parseScrape(strings.NewReader(b))
		if err != nil {
			return
		}
		engineDelta(sa, sb, sb, 7)
	})
}
