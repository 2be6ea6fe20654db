package remotewrite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
	"github.com/ingest-io/ingest/storage/internal/series"
	"github.com/ingest-io/ingest/storage/internal/sinkhttp"
)

// expect is what a Prometheus-style store must hold for testkit.Points:
// series key → samples, by the mapping of docs/storage.md.
func expect(device string, t0 time.Time, n int) map[string][]testkit.Sample {
	want := map[string][]testkit.Sample{}
	for _, p := range testkit.Points(device, t0, n) {
		base := map[string]string{"device": device, "site": "lab 1", "group": "a,b=c"}
		for f, v := range p.Numbers {
			m := maps.Clone(base)
			m["__name__"] = storage.MetricName(f)
			k := testkit.LabelsKey(m)
			want[k] = append(want[k], testkit.Sample{T: p.Time.UnixMilli(), V: strconv.FormatFloat(v, 'f', -1, 64)})
		}
		for f, v := range p.Strings {
			m := maps.Clone(base)
			m["__name__"] = storage.MetricName(f) + "_info"
			m["value"] = v
			k := testkit.LabelsKey(m)
			want[k] = append(want[k], testkit.Sample{T: p.Time.UnixMilli(), V: "1"})
		}
	}
	return want
}

func TestWriteRequestEncoding(t *testing.T) {
	var b seriesBuilder
	b.maxString = 1024
	p := storage.Point{
		Device:  "d1",
		Time:    time.UnixMilli(1_700_000_000_123),
		Labels:  map[string]string{"site": "s", "Zone": "z"},
		Numbers: map[string]float64{"a.b": math.Inf(-1), "c": 0},
		Strings: map[string]string{"s": "x"},
	}
	b.appendPoint(&p)
	// A negative timestamp takes ten bytes as a varint.
	b.samples = append(b.samples, rwSample{lo: b.samples[0].lo, hi: b.samples[0].hi, t: -1, v: 2.5})
	enc := appendWriteRequest(nil, b.labels, b.samples)

	var got []string
	for len(enc) > 0 {
		num, typ, n := protowire.ConsumeTag(enc)
		if n < 0 || num != 1 || typ != protowire.BytesType {
			t.Fatalf("WriteRequest field %d type %d (%d)", num, typ, n)
		}
		enc = enc[n:]
		ts, n := protowire.ConsumeBytes(enc)
		if n < 0 {
			t.Fatal("TimeSeries length")
		}
		enc = enc[n:]
		var ls []labels.Label
		var samples []string
		for len(ts) > 0 {
			num, typ, n := protowire.ConsumeTag(ts)
			ts = ts[n:]
			msg, n := protowire.ConsumeBytes(ts)
			if n < 0 || typ != protowire.BytesType {
				t.Fatalf("TimeSeries field %d", num)
			}
			ts = ts[n:]
			switch num {
			case 1:
				var l labels.Label
				for len(msg) > 0 {
					num, _, n := protowire.ConsumeTag(msg)
					msg = msg[n:]
					v, n := protowire.ConsumeString(msg)
					msg = msg[n:]
					if num == 1 {
						l.Name = v
					} else {
						l.Value = v
					}
				}
				ls = append(ls, l)
			case 2:
				var v float64
				var ts int64
				for len(msg) > 0 {
					num, typ, n := protowire.ConsumeTag(msg)
					msg = msg[n:]
					switch {
					case num == 1 && typ == protowire.Fixed64Type:
						x, n := protowire.ConsumeFixed64(msg)
						msg, v = msg[n:], math.Float64frombits(x)
					case num == 2 && typ == protowire.VarintType:
						x, n := protowire.ConsumeVarint(msg)
						msg, ts = msg[n:], int64(x)
					default:
						t.Fatalf("Sample field %d type %d", num, typ)
					}
				}
				samples = append(samples, fmt.Sprintf("%v@%d", v, ts))
			}
		}
		if !slices.IsSortedFunc(ls, func(a, b labels.Label) int { return cmpString(a.Name, b.Name) }) {
			t.Errorf("labels not sorted: %v", ls)
		}
		got = append(got, labels.New(ls...).String()+" "+fmt.Sprint(samples))
	}
	slices.Sort(got)
	want := []string{
		`{Zone="z", __name__="a_b", device="d1", site="s"} [-Inf@1700000000123]`,
		b.seriesString(b.samples[0]) + " [2.5@-1]",
		`{Zone="z", __name__="c", device="d1", site="s"} [0@1700000000123]`,
		`{Zone="z", __name__="s_info", device="d1", site="s", value="x"} [1@1700000000123]`,
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("decoded\n%v\nwant\n%v", got, want)
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestRemoteWriteSeriesAsTSDB: the remote-write sink makes the same series
// of a point as the embedded TSDB.
func TestRemoteWriteSeriesAsTSDB(t *testing.T) {
	db, err := embedded.Open(embedded.Options{Dir: t.TempDir()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	t0 := time.Now().Truncate(time.Second)
	ps := testkit.Points("same", t0, 3)
	ps[1].Strings["long"] = string(make([]byte, 2000)) // over MaxStringBytes: left out by both
	ps[2].Labels["__name__"] = "x"
	ps[2].Labels["bad-name"] = "y"
	if err := db.Write(context.Background(), ps); err != nil {
		t.Fatal(err)
	}
	q, err := db.DB().Querier(math.MinInt64, math.MaxInt64)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	set := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	var fromTSDB []string
	for set.Next() {
		fromTSDB = append(fromTSDB, set.At().Labels().String())
	}
	if err := set.Err(); err != nil {
		t.Fatal(err)
	}
	b := seriesBuilder{maxString: series.MaxStringBytes}
	seen := map[string]bool{}
	var fromSink []string
	for i := range ps {
		b.appendPoint(&ps[i])
	}
	for _, s := range b.samples {
		k := b.seriesString(s)
		if !seen[k] {
			seen[k] = true
			fromSink = append(fromSink, k)
		}
	}
	slices.Sort(fromTSDB)
	slices.Sort(fromSink)
	if !slices.Equal(fromTSDB, fromSink) {
		t.Errorf("series differ:\ntsdb %q\nsink %q", fromTSDB, fromSink)
	}
	if b.tooLong != 1 {
		t.Errorf("string fields too long: %d, want 1", b.tooLong)
	}
}

func newTestRemoteWrite(t *testing.T, u string, reg prometheus.Registerer, opts Options) *Sink {
	t.Helper()
	opts.URL = u
	s, err := New(opts, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testRemoteWriteStore writes points twice to a remote-write store and checks
// it holds each sample once.
func testRemoteWriteStore(t *testing.T, srv *testkit.Store, path string, read func(selector string) map[string][]testkit.Sample) {
	reg := prometheus.NewRegistry()
	// Small requests: a Write takes several.
	s := newTestRemoteWrite(t, srv.URL+path, reg, Options{MaxSamplesPerRequest: 37})
	dev := fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
	const n = 50
	t0 := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	ps := testkit.Points(dev, t0, n)
	want := expect(dev, t0, n)
	sel := fmt.Sprintf(`{device=%q}`, dev)
	for round := range 2 {
		if err := s.Write(context.Background(), ps); err != nil {
			t.Fatalf("write %d: %v", round, err)
		}
		testkit.Eventually(t, 30*time.Second, "store holds every sample once", func() (bool, string) {
			d := testkit.DiffSamples(read(sel), want)
			return d == "", d
		})
	}
	if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 2*4*n {
		t.Errorf("samples written: %v, want %d", got, 2*4*n)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Requests); got != 2*6 {
		t.Errorf("requests: %v, want 12 (200 samples in requests of 37, twice)", got)
	}
	for _, k := range []string{sinkhttp.KindRetry, sinkhttp.KindRejected, sinkhttp.KindTooOld} {
		if got := testutil.ToFloat64(s.h.Metrics.Errors.WithLabelValues(k)); got != 0 {
			t.Errorf("errors %s: %v", k, got)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "ingest_storage_external_request_duration_seconds", "ingest_storage_external_batch_samples"); err != nil || n != 2 {
		t.Errorf("histograms: %d, %v", n, err)
	}
}

func TestRemoteWritePrometheus(t *testing.T) {
	srv := testkit.Prometheus(t)
	testRemoteWriteStore(t, srv, "/api/v1/write", func(sel string) map[string][]testkit.Sample {
		return testkit.PromRaw(t, srv, sel, time.Now(), time.Hour)
	})
}

func TestRemoteWriteVictoriaMetrics(t *testing.T) {
	srv := testkit.VictoriaMetrics(t)
	testRemoteWriteStore(t, srv, "/api/v1/write", func(sel string) map[string][]testkit.Sample {
		return testkit.VMExport(t, srv, sel)
	})
}

// TestRemoteWritePrometheusTooOld: samples older than Prometheus's
// out-of-order window are dropped and counted; the rest of the Write lands.
func TestRemoteWritePrometheusTooOld(t *testing.T) {
	srv := testkit.Prometheus(t)
	reg := prometheus.NewRegistry()
	s := newTestRemoteWrite(t, srv.URL+"/api/v1/write", reg, Options{MaxSamplesPerRequest: 64})
	dev := fmt.Sprintf("tooold-%d", time.Now().UnixNano())
	now := time.Now().Truncate(time.Second)
	// The head's newest sample: now.
	if err := s.Write(context.Background(), testkit.Points(dev+"-fresh", now, 1)); err != nil {
		t.Fatal(err)
	}
	const nOld, nNew = 40, 10
	old := testkit.Points(dev, now.Add(-testkit.PrometheusOOOWindow-time.Hour), nOld)
	fresh := testkit.Points(dev, now.Add(-time.Minute), nNew)
	mixed := append(slices.Clone(fresh[:5]), old...)
	mixed = append(mixed, fresh[5:]...)
	before := testutil.ToFloat64(s.h.Metrics.Requests)
	if err := s.Write(context.Background(), mixed); err != nil {
		t.Fatalf("write with too old samples: %v", err)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindTooOld)); got != 4*nOld {
		t.Errorf("dropped too old: %v, want %d", got, 4*nOld)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 4*(1+nNew) {
		t.Errorf("samples written: %v, want %d", got, 4*(1+nNew))
	}
	// 200 samples in requests of 64 (4 of them); splitting finds the newest
	// too-old sample in about log2(64) steps per request holding old ones.
	if req := testutil.ToFloat64(s.h.Metrics.Requests) - before; req > 4+3*2*7 {
		t.Errorf("%v requests to drop %d too old samples", req, 4*nOld)
	}
	want := expect(dev, now.Add(-time.Minute), nNew)
	got := testkit.PromRaw(t, srv, fmt.Sprintf(`{device=%q}`, dev), now, 3*time.Hour)
	if d := testkit.DiffSamples(got, want); d != "" {
		t.Error(d)
	}
	// Again: nothing new, no error.
	if err := s.Write(context.Background(), mixed); err != nil {
		t.Fatalf("write again: %v", err)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindTooOld)); got != 2*4*nOld {
		t.Errorf("dropped too old after a repeat: %v, want %d", got, 2*4*nOld)
	}
}

// faultProxy forwards to a store, answering the first requests with the
// statuses in fail instead.
type faultProxy struct {
	fail  []int
	n     atomic.Int64
	proxy *httputil.ReverseProxy
}

func (f *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := int(f.n.Add(1)) - 1
	if i < len(f.fail) {
		io.Copy(io.Discard, r.Body)
		if f.fail[i] == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		http.Error(w, "injected", f.fail[i])
		return
	}
	f.proxy.ServeHTTP(w, r)
}

// serveLoopback serves h on 127.0.0.1 until the test ends.
func serveLoopback(t *testing.T, h http.Handler) string {
	t.Helper()
	ln := testkit.Listen(t)
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return "http://" + ln.Addr().String()
}

func newFaultProxy(t *testing.T, target string, fail ...int) (*faultProxy, string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	f := &faultProxy{fail: fail, proxy: httputil.NewSingleHostReverseProxy(u)}
	f.proxy.Transport = tr
	return f, serveLoopback(t, f)
}

// TestRemoteWriteRetries: 5xx and 429 are retried (429 after its
// Retry-After) until the store takes the samples.
func TestRemoteWriteRetries(t *testing.T) {
	srv := testkit.Prometheus(t)
	f, u := newFaultProxy(t, srv.URL, 503, 500, 429)
	reg := prometheus.NewRegistry()
	s := newTestRemoteWrite(t, u+"/api/v1/write", reg, Options{HTTPOptions: HTTPOptions{MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second}})
	dev := fmt.Sprintf("retries-%d", time.Now().UnixNano())
	t0 := time.Now().Truncate(time.Second)
	start := time.Now()
	if err := s.Write(context.Background(), testkit.Points(dev, t0, 5)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("write took %v, less than the 429's Retry-After", d)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Errors.WithLabelValues(sinkhttp.KindRetry)); got != 3 {
		t.Errorf("retries: %v, want 3", got)
	}
	if got := f.n.Load(); got != 4 {
		t.Errorf("requests: %d, want 4", got)
	}
	if d := testkit.DiffSamples(testkit.PromRaw(t, srv, fmt.Sprintf(`{device=%q}`, dev), t0.Add(time.Minute), time.Hour), expect(dev, t0, 5)); d != "" {
		t.Error(d)
	}
}

// TestRemoteWriteRefused: a 4xx about the request itself is not retried and
// drops nothing; Write says so.
func TestRemoteWriteRefused(t *testing.T) {
	srv := testkit.Prometheus(t)
	f, u := newFaultProxy(t, srv.URL, 401, 404)
	s := newTestRemoteWrite(t, u+"/api/v1/write", nil, Options{})
	ps := testkit.Points("refused", time.Now(), 3)
	for _, status := range []int{401, 404} {
		err := s.Write(context.Background(), ps)
		var ke *storage.KindError
		var se *StatusError
		if !errors.As(err, &ke) || ke.Kind != "rejected" || !errors.As(err, &se) || se.Status != status {
			t.Fatalf("write through %d: %v", status, err)
		}
	}
	if got := f.n.Load(); got != 2 {
		t.Errorf("requests: %d, want 2 (no retry)", got)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindRejected)); got != 0 {
		t.Errorf("dropped: %v", got)
	}
	if err := s.Write(context.Background(), ps); err != nil {
		t.Fatalf("write once the store takes it: %v", err)
	}
}

// TestRemoteWriteRetryBound: a store that never answers well makes Write
// return "unavailable" after MaxRetryTime, and a cancelled context at once.
func TestRemoteWriteRetryBound(t *testing.T) {
	ln := testkit.Listen(t)
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every request fails to connect
	s := newTestRemoteWrite(t, "http://"+addr+"/api/v1/write", nil, Options{HTTPOptions: HTTPOptions{
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxRetryTime: 300 * time.Millisecond,
	}})
	err := s.Write(context.Background(), testkit.Points("bound", time.Now(), 1))
	var ke *storage.KindError
	if !errors.As(err, &ke) || ke.Kind != "unavailable" {
		t.Fatalf("write to nothing: %v", err)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Errors.WithLabelValues(sinkhttp.KindRetry)); got < 2 {
		t.Errorf("retries: %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Write(ctx, testkit.Points("bound", time.Now(), 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with a cancelled context: %v", err)
	}
	s.Close()
	if err := s.Write(context.Background(), nil); !errors.Is(err, sinkhttp.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

func TestJudgeRemoteWrite(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		want   sinkhttp.Verdict
	}{
		{204, "", sinkhttp.OK},
		{200, "", sinkhttp.OK},
		{429, "", sinkhttp.Retry},
		{503, "", sinkhttp.Retry},
		{500, "too old sample", sinkhttp.TooOld}, // Prometheus before 2.45
		{400, "out of bounds", sinkhttp.TooOld},
		{400, "out of order sample", sinkhttp.TooOld},
		{400, "too old sample", sinkhttp.TooOld},
		{400, "out of bounds: timestamp is too far in the future", sinkhttp.Rejected},
		{400, "duplicate sample for timestamp", sinkhttp.Rejected},
		{400, "snappy: corrupt input", sinkhttp.Fail},
		{400, "proto: illegal wireType 7", sinkhttp.Fail},
		// Mimir refuses one sample and names its series, whose labels may
		// spell anything: taken for undecodable, the batch would be retried
		// for ever.
		{400, `the sample has been rejected because another sample with the same timestamp, but a different value, has already been ingested (err-mimir-sample-duplicate-timestamp). The affected sample has timestamp 2026-12-07T14:00:00Z and is from series {__name__="protocol_version", device="d1"}`, sinkhttp.Rejected},
		{409, "add 1 samples: out of order sample", sinkhttp.TooOld}, // Thanos Receive
		{409, "conflict", sinkhttp.Rejected},
		{401, "", sinkhttp.Fail},
		{404, "", sinkhttp.Fail},
	} {
		if got := judgeRemoteWrite(sinkhttp.Answer{Status: c.status, Body: []byte(c.body)}); got != c.want {
			t.Errorf("%d %q: %v, want %v", c.status, c.body, got, c.want)
		}
	}
}

func FuzzJudgeRemoteWrite(f *testing.F) {
	f.Add(400, []byte("too old sample"))
	f.Add(500, []byte("out of bounds"))
	f.Add(400, []byte("out of bounds: timestamp is too far in the future"))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		v := judgeRemoteWrite(sinkhttp.Answer{Status: status, Body: body})
		if status/100 == 2 && v != sinkhttp.OK {
			t.Fatalf("%d: %v", status, v)
		}
		if v == sinkhttp.TooOld && !rwTooOld(body) {
			t.Fatal("too old without a too-old phrase")
		}
		if rwBoundIsGlobal(body) && !rwTooOld(body) {
			t.Fatal("a global bound that is not too old")
		}
	})
}

// FuzzWriteRequestSnappy: every encoded request is valid snappy around a
// protobuf of the right shape.
func FuzzWriteRequestSnappy(f *testing.F) {
	f.Add("d", "k", "v", "field", int64(1700000000000), 1.5)
	f.Fuzz(func(t *testing.T, dev, k, v, field string, ts int64, val float64) {
		p := storage.Point{Device: dev, Time: time.UnixMilli(ts), Labels: map[string]string{k: v}, Numbers: map[string]float64{field: val}}
		b := seriesBuilder{maxString: 1024}
		b.appendPoint(&p)
		pb := appendWriteRequest(nil, b.labels, b.samples)
		dec, err := snappy.Decode(nil, snappy.Encode(nil, pb))
		if err != nil || string(dec) != string(pb) {
			t.Fatalf("snappy round trip: %v", err)
		}
		n := 0
		for len(pb) > 0 {
			num, typ, m := protowire.ConsumeField(pb)
			if m < 0 || num != 1 || typ != protowire.BytesType {
				t.Fatalf("field %d type %d: %d", num, typ, m)
			}
			pb = pb[m:]
			n++
		}
		if n != len(b.samples) {
			t.Fatalf("%d series, want %d", n, len(b.samples))
		}
	})
}

// TestRemoteWriteSameTimeFirstKept: of two messages of a device with one
// timestamp and different values, the store keeps the first, as the
// embedded TSDB does, whatever else the Write carries (Prometheus keeps
// the first sample of a series at a time in a request).
func TestRemoteWriteSameTimeFirstKept(t *testing.T) {
	srv := testkit.Prometheus(t)
	s := newTestRemoteWrite(t, srv.URL+"/api/v1/write", nil, Options{})
	dev := fmt.Sprintf("sametime-%d", time.Now().UnixNano())
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	var ps []storage.Point
	want := map[string][]testkit.Sample{}
	for d := range 64 {
		name := fmt.Sprintf("%s-%d", dev, d)
		for v := range 3 {
			ps = append(ps, storage.Point{Device: name, Time: t0, Numbers: map[string]float64{"v": float64(v + 1)}})
			// Others, newer and older, for the Write to put in order.
			ps = append(ps, storage.Point{Device: dev + "-other", Time: t0.Add(time.Duration((d*3+v)%7-3) * time.Second), Numbers: map[string]float64{"w": 1}})
		}
		k := testkit.LabelsKey(map[string]string{"__name__": storage.MetricName("v"), "device": name})
		want[k] = []testkit.Sample{{T: t0.UnixMilli(), V: "1"}}
	}
	if err := s.Write(context.Background(), ps); err != nil {
		t.Fatal(err)
	}
	got := testkit.PromRaw(t, srv, fmt.Sprintf(`{__name__=%q, device=~%q}`, storage.MetricName("v"), dev+"-[0-9]+"), t0.Add(time.Minute), time.Hour)
	if d := testkit.DiffSamples(got, want); d != "" {
		t.Error(d)
	}
}
