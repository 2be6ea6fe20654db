package embedded_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

func openTSDB(t *testing.T, dir string, opts embedded.Options) (*embedded.TSDB, *prometheus.Registry) {
	t.Helper()
	opts.Dir = dir
	reg := prometheus.NewRegistry()
	db, err := embedded.Open(opts, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, reg
}

func point(dev string, at time.Time, n map[string]float64, s map[string]string, lbl map[string]string) storage.Point {
	return storage.Point{Device: dev, Time: at, Numbers: n, Strings: s, Labels: lbl}
}

func TestTSDBWriteAndQuery(t *testing.T) {
	db, _ := openTSDB(t, t.TempDir(), embedded.Options{})
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()

	t0 := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	lbl := map[string]string{"name": "Boiler 1", "site": "Berlin", "fw.version": "1.2"}
	pts := []storage.Point{
		point("dev-1", t0, map[string]float64{"temp": 21.5, "gps.lat": 52.5, "ok": 1}, map[string]string{"door": "open"}, lbl),
		point("dev-1", t0.Add(time.Second), map[string]float64{"temp": 22}, map[string]string{"door": "closed"}, lbl),
		point("dev-2", t0, map[string]float64{"temp": 19}, nil, nil),
	}
	if err := db.Write(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(2 * time.Second)
	if v := testkit.PromScalar(t, srv.URL, `temp{device="dev-1"}`, at); v != "22" {
		t.Fatalf("temp of dev-1 = %q", v)
	}
	if v := testkit.PromScalar(t, srv.URL, `gps_lat{site="Berlin",name="Boiler 1",fw_version="1.2"}`, at); v != "52.5" {
		t.Fatalf("gps_lat with registry labels = %q", v)
	}
	res := testkit.PromInstant(t, srv.URL, `door_info{device="dev-1"}`, at)
	if len(res) != 2 { // both values are within the lookback
		t.Fatalf("door_info: %+v", res)
	}
	// The current value of a string field: the series with the newest sample.
	res = testkit.PromInstant(t, srv.URL, `topk by (device) (1, timestamp(door_info))`, at)
	if len(res) != 1 || res[0].Metric["value"] != "closed" {
		t.Fatalf("current door: %+v", res)
	}
	res = testkit.PromInstant(t, srv.URL, `topk by (device) (1, timestamp(door_info))`, t0)
	if len(res) != 1 || res[0].Metric["value"] != "open" {
		t.Fatalf("door at t0: %+v", res)
	}
	if v := testkit.PromScalar(t, srv.URL, `count(temp)`, at); v != "2" {
		t.Fatalf("count(temp) = %q", v)
	}
}

// TestTSDBIdempotent writes the same points again — in order, out of order,
// after a compaction into blocks and after a restart — and counts every
// sample once.
func TestTSDBIdempotent(t *testing.T) {
	dir := t.TempDir()
	db, reg := openTSDB(t, dir, embedded.Options{})
	ctx := context.Background()
	// Three hours back, one sample a minute: the head will cut a block.
	t0 := time.Now().Add(-3 * time.Hour).Truncate(time.Minute)
	var pts []storage.Point
	for i := range 180 {
		pts = append(pts, point("dev-1", t0.Add(time.Duration(i)*time.Minute), map[string]float64{"v": float64(i)}, map[string]string{"s": fmt.Sprint(i % 3)}, nil))
	}
	if err := db.Write(ctx, pts); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	end := t0.Add(180 * time.Minute)
	count := func(what string) {
		t.Helper()
		if v := testkit.PromScalar(t, srv.URL, `count_over_time(v[4h])`, end); v != "180" {
			t.Fatalf("%s: count_over_time(v) = %q, want 180", what, v)
		}
		if v := testkit.PromScalar(t, srv.URL, `sum(count_over_time(s_info[4h]))`, end); v != "180" {
			t.Fatalf("%s: count of s_info = %q, want 180", what, v)
		}
		if v := testkit.PromScalar(t, srv.URL, `sum_over_time(v[4h])`, end); v != fmt.Sprint(179*180/2) {
			t.Fatalf("%s: sum_over_time(v) = %q", what, v)
		}
	}
	count("first write")

	// The last point again: an in-order repeat with the same value.
	if err := db.Write(ctx, pts[len(pts)-1:]); err != nil {
		t.Fatalf("repeat of the newest sample: %v", err)
	}
	count("newest repeated")
	// Everything again: out-of-order repeats.
	if err := db.Write(ctx, pts); err != nil {
		t.Fatalf("repeat of every sample: %v", err)
	}
	count("all repeated")
	// Into blocks, then again: repeats of samples already in a block.
	if err := db.DB().Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Write(ctx, pts); err != nil {
		t.Fatalf("repeat after compaction: %v", err)
	}
	count("repeated after compaction")
	if got := testutil.ToFloat64(dropped(t, reg)); got != 0 {
		t.Fatalf("%v samples dropped for repeats", got)
	}

	// A different value at a timestamp already taken is dropped and counted.
	bad := point("dev-1", pts[len(pts)-1].Time, map[string]float64{"v": -1}, nil, nil)
	if err := db.Write(ctx, []storage.Point{bad}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(dropped(t, reg)); got != 1 {
		t.Fatalf("dropped %v, want 1", got)
	}
	// So is one within a Write: the first is kept, and a repeat of it is
	// none. (One behind the series' newest sample, out of order, the head
	// drops at Commit and does not report: docs/storage.md.)
	t1, t2 := end.Add(time.Minute), end.Add(2*time.Minute)
	if err := db.Write(ctx, []storage.Point{
		point("dev-1", t1, map[string]float64{"v": 1}, nil, nil),
		point("dev-1", t1, map[string]float64{"v": 1}, nil, nil),
		point("dev-1", t1, map[string]float64{"v": 2}, nil, nil),
		point("dev-1", t2, map[string]float64{"v": 3}, nil, nil),
		point("dev-1", t2, map[string]float64{"w.x": 1}, nil, nil),
		point("dev-1", t2, map[string]float64{"w_x": 2}, nil, nil), // w.x's series
	}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(dropped(t, reg)); got != 3 {
		t.Fatalf("dropped %v after a Write with two values at one timestamp twice, want 3", got)
	}
	if v := testkit.PromScalar(t, srv.URL, `v`, t1); v != "1" {
		t.Fatalf("v at the taken timestamp = %q, want the first value, 1", v)
	}
	srv.Close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db2, _ := openTSDB(t, dir, embedded.Options{})
	srv = httptest.NewServer(embedded.NewAPI(db2.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	if err := db2.Write(ctx, pts); err != nil {
		t.Fatalf("repeat after reopening: %v", err)
	}
	count("after reopening")
}

func dropped(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	t.Helper()
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, mf := range mfs {
			if mf.GetName() == "ingest_storage_dropped_samples_total" {
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("sum", "sum", nil, nil), prometheus.CounterValue, sum)
	})
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(f, ch) }
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// TestTSDBLateData: data hours late lands in the store, within the
// out-of-order window; data older than the window is dropped and counted.
func TestTSDBLateData(t *testing.T) {
	db, reg := openTSDB(t, t.TempDir(), embedded.Options{OutOfOrderWindow: 24 * time.Hour})
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	if err := db.Write(ctx, []storage.Point{point("dev-1", now, map[string]float64{"v": 1}, nil, nil)}); err != nil {
		t.Fatal(err)
	}
	late := now.Add(-5 * time.Hour)
	if err := db.Write(ctx, []storage.Point{point("dev-1", late, map[string]float64{"v": 5}, nil, nil),
		point("dev-9", late, map[string]float64{"v": 9}, nil, nil)}); err != nil {
		t.Fatal(err)
	}
	if v := testkit.PromScalar(t, srv.URL, `v{device="dev-1"}`, late); v != "5" {
		t.Fatalf("5 h late sample of a known series: %q", v)
	}
	if v := testkit.PromScalar(t, srv.URL, `v{device="dev-9"}`, late); v != "9" {
		t.Fatalf("5 h late sample of a new series: %q", v)
	}
	if err := db.Write(ctx, []storage.Point{point("dev-1", now.Add(-25*time.Hour), map[string]float64{"v": 25}, nil, nil)}); err != nil {
		t.Fatalf("too old a sample fails the batch: %v", err)
	}
	if got := testutil.ToFloat64(dropped(t, reg)); got != 1 {
		t.Fatalf("dropped %v, want 1", got)
	}
}

// TestTSDBDroppedLoggedAtIntervals: a device whose data the store can
// never hold (a clock hours behind, or stuck on one timestamp with
// changing values) has samples dropped at every write for as long as it
// sends. Every one is counted; the warning comes once per interval, with
// what was dropped since, not once a write. Before, each write that
// dropped a sample logged "storage: samples dropped": a line per batch,
// for as long as the device sent.
func TestTSDBDroppedLoggedAtIntervals(t *testing.T) {
	var logs testkit.Logs
	reg := prometheus.NewRegistry()
	db, err := embedded.Open(embedded.Options{Dir: t.TempDir(), OutOfOrderWindow: time.Hour}, reg, logs.Logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	if err := db.Write(ctx, []storage.Point{point("dev-1", now, map[string]float64{"v": 1}, nil, nil)}); err != nil {
		t.Fatal(err)
	}
	const writes = 50
	for i := range writes {
		// One sample too old, and one at the time already stored with
		// another value.
		if err := db.Write(ctx, []storage.Point{point("dev-1", now.Add(-2*time.Hour-time.Duration(i)*time.Second), map[string]float64{"v": 2}, nil, nil),
			point("dev-1", now, map[string]float64{"v": float64(i + 2)}, nil, nil)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(dropped(t, reg)); got != 2*writes {
		t.Fatalf("dropped %v, want %d", got, 2*writes)
	}
	if logged := logs.Count("storage: samples dropped"); logged != 1 {
		t.Fatalf("%d writes that each dropped samples logged %d warnings, want 1 (within the interval):\n%s", writes, logged, logs.String())
	}
}

func TestAPIEndpoints(t *testing.T) {
	db, _ := openTSDB(t, t.TempDir(), embedded.Options{})
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	if err := db.Write(context.Background(), []storage.Point{
		point("dev-1", t0, map[string]float64{"temp": 1}, map[string]string{"door": "open"}, map[string]string{"site": "x"}),
		point("dev-1", t0.Add(10*time.Second), map[string]float64{"temp": 2}, nil, map[string]string{"site": "x"}),
	}); err != nil {
		t.Fatal(err)
	}
	want := func(path string, params url.Values, sub string) {
		t.Helper()
		r := testkit.PromGet(t, srv.URL, path, params)
		if r.Status != "success" || !strings.Contains(string(r.Data), sub) {
			t.Fatalf("%s %v: %s %s %s; want %s", path, params, r.Status, r.Error, r.Data, sub)
		}
	}
	want("/api/v1/labels", nil, `["__name__","device","site","value"]`)
	want("/api/v1/label/__name__/values", nil, `["door_info","temp"]`)
	want("/api/v1/label/device/values", url.Values{"match[]": {"temp"}}, `["dev-1"]`)
	want("/api/v1/series", url.Values{"match[]": {`{device="dev-1"}`}}, `{"__name__":"door_info","device":"dev-1","site":"x","value":"open"}`)
	want("/api/v1/metadata", nil, `"temp":[{"type":"gauge"`)
	want("/api/v1/status/buildinfo", nil, `"version":"3.`)
	want("/api/v1/query_range", url.Values{"query": {"temp"}, "start": {fmt.Sprint(t0.Unix())}, "end": {fmt.Sprint(t0.Unix() + 10)}, "step": {"5"}},
		fmt.Sprintf(`"resultType":"matrix","result":[{"metric":{"__name__":"temp","device":"dev-1","site":"x"},"values":[[%d,"1"],[%d,"1"],[%d,"2"]]`, t0.Unix(), t0.Unix()+5, t0.Unix()+10))
	want("/api/v1/query", url.Values{"query": {"1+1"}}, `"resultType":"scalar"`)

	// POST forms, as promtool and Grafana send them.
	resp, err := http.PostForm(srv.URL+"/api/v1/query", url.Values{"query": {"temp"}, "time": {t0.Add(10 * time.Second).Format(time.RFC3339)}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"value":[`+fmt.Sprint(t0.Unix()+10)+`,"2"]`) {
		t.Fatalf("POST query: %s", b)
	}

	// Errors in Prometheus's format and codes.
	for _, c := range []struct {
		path   string
		params url.Values
		code   int
		typ    string
	}{
		{"/api/v1/query", url.Values{"query": {"temp{"}}, 400, "bad_data"},
		{"/api/v1/query", url.Values{"query": {"temp"}, "time": {"yesterday"}}, 400, "bad_data"},
		{"/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"10"}, "end": {"5"}, "step": {"1"}}, 400, "bad_data"},
		{"/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"0"}, "end": {"100000"}, "step": {"1"}}, 400, "bad_data"},
		{"/api/v1/series", nil, 400, "bad_data"},
		{"/api/v1/query", url.Values{"query": {`label_replace(temp, "x", "$1", "device", "(")`}}, 422, "execution"},
	} {
		resp, err := http.Get(srv.URL + c.path + "?" + c.params.Encode())
		if err != nil {
			t.Fatal(err)
		}
		var r testkit.PromResult
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != c.code || r.Status != "error" || r.ErrorType != c.typ {
			t.Errorf("%s %v: %d %+v, want %d %s", c.path, c.params, resp.StatusCode, r, c.code, c.typ)
		}
	}
}

// TestTSDBNameCollision: two fields that make one series ("a.b" and "a_b")
// store the same one on every delivery: the first in name order.
func TestTSDBNameCollision(t *testing.T) {
	db, reg := openTSDB(t, t.TempDir(), embedded.Options{})
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	at := time.Now().Add(-time.Minute).Truncate(time.Second)
	for range 3 {
		if err := db.Write(context.Background(), []storage.Point{point("dev-1", at, map[string]float64{"a_b": 2, "a.b": 1}, nil, nil)}); err != nil {
			t.Fatal(err)
		}
		if v := testkit.PromScalar(t, srv.URL, `a_b`, at); v != "1" {
			t.Fatalf("a_b = %q, want the value of \"a.b\"", v)
		}
	}
	// Within one transaction the TSDB drops the second sample at commit
	// without a word; on later deliveries the append says so.
	if got := testutil.ToFloat64(dropped(t, reg)); got != 2 {
		t.Fatalf("dropped %v, want 2", got)
	}
}

// TestTSDBBlockDuration: with a short block duration the head cuts a block
// and drops it from memory once it holds more than one and a half of it;
// with the default it keeps everything; under a minute is refused.
func TestTSDBBlockDuration(t *testing.T) {
	// Ten minutes of samples, one every ten seconds, for 20 devices.
	t0 := time.Now().Add(-10 * time.Minute).Truncate(time.Minute)
	var pts []storage.Point
	for i := range 60 {
		for d := range 20 {
			pts = append(pts, point(fmt.Sprintf("dev-%d", d), t0.Add(time.Duration(i)*10*time.Second), map[string]float64{"v": float64(i)}, nil, nil))
		}
	}
	short, _ := openTSDB(t, t.TempDir(), embedded.Options{BlockDuration: time.Minute})
	long, _ := openTSDB(t, t.TempDir(), embedded.Options{})
	for _, db := range []*embedded.TSDB{short, long} {
		if err := db.Write(context.Background(), pts); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, "a block cut from the head with a 1m block duration", 30*time.Second, func() bool {
		return len(short.DB().Blocks()) > 0 && short.DB().Head().MinTime() > t0.UnixMilli()
	})
	if n := len(long.DB().Blocks()); n != 0 || long.DB().Head().MinTime() != t0.UnixMilli() {
		t.Fatalf("default block duration: %d blocks, head from %d; want 0 blocks and the head from %d", n, long.DB().Head().MinTime(), t0.UnixMilli())
	}
	if _, err := embedded.Open(embedded.Options{Dir: t.TempDir(), BlockDuration: 30 * time.Second}, nil, nil); err == nil || !strings.Contains(err.Error(), "under a minute") {
		t.Fatalf("Open with a 30s block duration: %v; want an error naming the minimum", err)
	}
}

// openRecovering is embedded.Open with a panic (the library's MustRegister
// meeting a collector already registered) turned into an error, so that it
// fails the test instead of aborting the package's tests.
func openRecovering(opts embedded.Options, reg prometheus.Registerer) (db *embedded.TSDB, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return embedded.Open(opts, reg, nil)
}

// TestTSDBReopenSameRegistry: Close, and an Open that fails, leave nothing
// registered with reg, the library's own metrics (prometheus_tsdb_*)
// included: the same registry opens the TSDB again in the same process.
func TestTSDBReopenSameRegistry(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	registered := func() []string {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, mf := range mfs {
			names = append(names, mf.GetName())
		}
		return names
	}
	db, err := openRecovering(embedded.Options{Dir: dir}, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if names := registered(); len(names) != 0 {
		t.Errorf("after Close, still registered: %v", names)
	}
	db, err = openRecovering(embedded.Options{Dir: dir}, reg)
	if err != nil {
		t.Fatalf("reopen with the same registry after Close: %v", err)
	}
	db.Close()

	// An Open that fails after the library registered its metrics (a
	// collector of the same name is in the way of ingest_storage_tsdb_failed)
	// unregisters them too.
	// (The same help: a registry remembers a name's help for good.)
	blocker := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ingest_storage_tsdb_failed",
		Help: "1 once a write to the embedded TSDB's write logs or an fsync of them has failed: every later write fails until the writer restarts (its /healthz fails).",
	})
	reg.MustRegister(blocker)
	if _, err := openRecovering(embedded.Options{Dir: dir}, reg); err == nil || !strings.Contains(err.Error(), "register metrics") {
		t.Fatalf("Open with ingest_storage_tsdb_failed taken: %v; want a register error", err)
	}
	reg.Unregister(blocker)
	if names := registered(); len(names) != 0 {
		t.Errorf("after a failed Open, still registered: %v", names)
	}
	db, err = openRecovering(embedded.Options{Dir: dir}, reg)
	if err != nil {
		t.Fatalf("reopen with the same registry after a failed Open: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}
