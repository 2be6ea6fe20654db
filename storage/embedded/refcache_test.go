package embedded

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	promstorage "github.com/prometheus/prometheus/storage"

	"github.com/ingest-io/ingest/storage"
)

// samplesOf returns the samples of every series of s that name matches,
// by the series' labels.
func samplesOf(t *testing.T, s *TSDB, name string) map[string][]float64 {
	t.Helper()
	q, err := s.db.Querier(math.MinInt64, math.MaxInt64)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	set := q.Select(context.Background(), true, nil, labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, name))
	got := map[string][]float64{}
	for set.Next() {
		it := set.At().Iterator(nil)
		var vs []float64
		for it.Next() != 0 {
			_, v := it.At()
			vs = append(vs, v)
		}
		got[set.At().Labels().String()] = vs
	}
	if err := set.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// With room for three series, the cache is dropped and filled again as
// commits go through ten devices' series; every sample is stored, each in
// its own series.
func TestRefCacheBound(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.refs = newRefCache(3)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	lbl := map[string]string{"site": "depot-a"}
	for round := range 4 {
		var pts []storage.Point
		for d := range 10 {
			pts = append(pts, storage.Point{
				Device: fmt.Sprintf("dev-%d", d), Time: t0.Add(time.Duration(round) * time.Second), Labels: lbl,
				Numbers: map[string]float64{"temp": float64(round)},
				Strings: map[string]string{"door": "open"},
			})
		}
		if err := s.Write(context.Background(), pts); err != nil {
			t.Fatal(err)
		}
		if s.refs.n > 3 {
			t.Fatalf("round %d: the cache holds %d series, bound 3", round, s.refs.n)
		}
	}
	temps, doors := samplesOf(t, s, "temp"), samplesOf(t, s, "door_info")
	if len(temps) != 10 || len(doors) != 10 {
		t.Fatalf("%d temp series, %d door_info series, want 10 each", len(temps), len(doors))
	}
	for d := range 10 {
		ls := fmt.Sprintf(`{__name__="temp", device="dev-%d", site="depot-a"}`, d)
		if got := temps[ls]; fmt.Sprint(got) != "[0 1 2 3]" {
			t.Fatalf("%s: %v, want [0 1 2 3]", ls, got)
		}
	}
}

// A reference the head does not know (one of a series its garbage
// collection removed) falls back to the labels the cache keeps with it,
// and the reference of the series the sample went to replaces it.
func TestRefCacheUnknownRef(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	p := func(i int) []storage.Point {
		return []storage.Point{{Device: "dev-1", Time: t0.Add(time.Duration(i) * time.Second), Numbers: map[string]float64{"temp": float64(i)}}}
	}
	if err := s.Write(context.Background(), p(0)); err != nil {
		t.Fatal(err)
	}
	d := s.refs.device(&p(0)[0])
	k := seriesKey{field: "temp"}
	real := d.series[k].ref
	if real == 0 {
		t.Fatal("no reference cached")
	}
	const unknown = promstorage.SeriesRef(1 << 40) // never issued
	d.series[k] = seriesRef{ref: unknown, ls: d.series[k].ls}
	if err := s.Write(context.Background(), p(1)); err != nil {
		t.Fatal(err)
	}
	if got := d.series[k].ref; got != real {
		t.Fatalf("cached reference after the fallback: %d, want the series' %d", got, real)
	}
	if got := samplesOf(t, s, "temp"); len(got) != 1 || fmt.Sprint(got[`{__name__="temp", device="dev-1"}`]) != "[0 1]" {
		t.Fatalf("temp: %v", got)
	}
}

// A truncation of the head (its oldest time rises) drops the cache; the
// series the head removed are written again by their labels.
func TestRefCacheHeadTruncation(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), BlockDuration: time.Minute}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Minute)
	write := func(dev string, from, to int) {
		t.Helper()
		var pts []storage.Point
		for i := from; i < to; i++ {
			pts = append(pts, storage.Point{Device: dev, Time: t0.Add(time.Duration(i) * time.Second), Numbers: map[string]float64{"temp": float64(i)}})
		}
		if err := s.Write(ctx, pts); err != nil {
			t.Fatal(err)
		}
	}
	write("old", 0, 60)    // only in the first minute: dropped from the head by its truncation
	write("live", 0, 5*60) // five minutes: the head cuts blocks
	if err := s.db.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	mint := s.db.Head().MinTime()
	if mint <= t0.UnixMilli() {
		t.Fatalf("the head was not truncated: its oldest time %d, the first sample's %d", mint, t0.UnixMilli())
	}
	if n := s.db.Head().NumSeries(); n != 1 {
		t.Fatalf("the head holds %d series after its truncation, want 1 (old removed)", n)
	}
	if s.refs.n != 2 {
		t.Fatalf("the cache holds %d series before the next commit, want 2", s.refs.n)
	}
	write("live", 5*60, 5*60+1)
	if s.refs.n != 1 {
		t.Fatalf("the cache holds %d series after the truncation and a commit of one, want 1", s.refs.n)
	}
	write("old", 5*60, 5*60+1) // a series the head removed: made again from its labels
	got := samplesOf(t, s, "temp")
	if n := len(got[`{__name__="temp", device="old"}`]); n != 61 {
		t.Fatalf("old: %d samples, want 61", n)
	}
	if n := len(got[`{__name__="temp", device="live"}`]); n != 5*60+1 {
		t.Fatalf("live: %d samples, want %d", n, 5*60+1)
	}
}

// A different value at a timestamp an earlier point of the same Write took
// is dropped and counted duplicate_timestamp, also when the cache is dropped
// between the two points (its bound reached mid-Write) and when the two
// points' registry labels differ only in labels no series carries (an
// empty value, a name series.Base leaves out), or in names that sort apart
// only before they are made valid: they are one series. Each
// such series holds the first value, and the samples counted appended are
// those the head keeps.
func TestRefCacheDuplicateWithinWrite(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := Open(Options{Dir: t.TempDir()}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.refs = newRefCache(2)
	at := time.Now().Add(-time.Hour).Truncate(time.Second)
	v := func(dev string, x float64, lbl map[string]string) storage.Point {
		return storage.Point{Device: dev, Time: at, Labels: lbl, Numbers: map[string]float64{"v": x}}
	}
	pts := []storage.Point{
		v("dev-a", 1, nil),
		v("dev-b", 1, nil),
		v("dev-c", 1, nil), // the third series: the cache is dropped
		v("dev-a", 2, nil), // dev-a's point at the same time, after the drop
		v("dev-d", 1, map[string]string{"site": "depot-a"}),
		v("dev-d", 2, map[string]string{"site": "depot-a", "room": ""}), // the same series
		v("dev-d", 3, map[string]string{"site": "depot-a", "value": "x"}),
		// One series, though the names sort apart before they are made
		// valid ("a-b" before "a_a", "a_b" after it).
		v("dev-e", 1, map[string]string{"a-b": "x", "a_a": "y"}),
		v("dev-e", 2, map[string]string{"a_b": "x", "a_a": "y"}),
	}
	if err := s.Write(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	got := samplesOf(t, s, "v")
	want := map[string]string{
		`{__name__="v", device="dev-a"}`:                   "[1]",
		`{__name__="v", device="dev-b"}`:                   "[1]",
		`{__name__="v", device="dev-c"}`:                   "[1]",
		`{__name__="v", device="dev-d", site="depot-a"}`:   "[1]",
		`{__name__="v", a_a="y", a_b="x", device="dev-e"}`: "[1]",
	}
	if len(got) != len(want) {
		t.Fatalf("series %v, want %v", got, want)
	}
	for ls, w := range want {
		if fmt.Sprint(got[ls]) != w {
			t.Fatalf("%s: %v, want %s", ls, got[ls], w)
		}
	}
	if n := testutil.ToFloat64(s.m.dropped.WithLabelValues("tsdb", "duplicate_timestamp")); n != 4 {
		t.Fatalf("%v samples counted duplicate_timestamp, want 4 (dev-a's second, dev-d's second and third, dev-e's second)", n)
	}
	if n := testutil.ToFloat64(s.m.samples); n != 5 {
		t.Fatalf("%v samples counted appended, want the 5 the head holds", n)
	}
}
