package influx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/internal/sinkhttp"
)

func newTestInflux(t *testing.T, u string, reg prometheus.Registerer, opts Options) *Sink {
	t.Helper()
	opts.URL = u
	s, err := New(opts, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// influxDB creates a database (with a retention policy of rp, if not empty)
// named after the test.
func influxDB(t *testing.T, srv *testkit.Store, rp string) string {
	db := strings.NewReplacer("/", "_", "-", "_").Replace(fmt.Sprintf("%s_%d", t.Name(), time.Now().UnixNano()))
	q := fmt.Sprintf("CREATE DATABASE %q", db)
	if rp != "" {
		q += " WITH DURATION " + rp
	}
	testkit.StorePost(t, srv.URL+"/query", url.Values{"q": {q}})
	return db
}

// influxRows reads back what InfluxDB holds for device as "time field=value"
// strings.
func influxRows(t *testing.T, srv *testkit.Store, db, device string) map[string]string {
	rows := testkit.InfluxQuery(t, srv, db, fmt.Sprintf(`SELECT * FROM "ingest" WHERE "device" = '%s'`, strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(device)))
	got := map[string]string{}
	for _, r := range rows {
		ts := r["time"].(json.Number).String()
		for k, v := range r {
			if k == "time" || v == nil {
				continue
			}
			got[ts+" "+k] = fmt.Sprint(v)
		}
	}
	return got
}

func influxWant(ps []storage.Point) map[string]string {
	want := map[string]string{}
	for _, p := range ps {
		ts := fmt.Sprint(p.Time.UnixMilli())
		want[ts+" device"] = p.Device
		for k, v := range p.Labels {
			want[ts+" "+storage.LabelName(k)] = v
		}
		for k, v := range p.Numbers {
			want[ts+" "+k] = fmt.Sprint(v)
		}
		for k, v := range p.Strings {
			want[ts+" "+k] = v
		}
	}
	return want
}

func diffMaps(got, want map[string]string) string {
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			return fmt.Sprintf("%s: got %q, want %q", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			return fmt.Sprintf("unexpected %s = %q", k, g)
		}
	}
	return ""
}

// TestInfluxSinkInfluxDB: names and strings that need escaping come back
// as sent, and a repeated delivery changes nothing.
func TestInfluxSinkInfluxDB(t *testing.T) {
	srv := testkit.InfluxDB(t)
	db := influxDB(t, srv, "")
	reg := prometheus.NewRegistry()
	s := newTestInflux(t, srv.URL+"/write?db="+db, reg, Options{MaxLinesPerRequest: 7})
	dev := `dev 1,a=b\x`
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	ps := testkit.Points(dev, t0, 20)
	ps[0].Strings["multi line"] = "a\nb, \"c\"=d \\"
	ps[0].Numbers["big"] = 1e300
	ps[0].Numbers["tiny"] = -1.5e-300
	ps[0].Labels["x=y z"] = `tag,with=all the\things`
	ps[1].Strings["utf8"] = "Grüße ☃"
	for round := range 2 {
		if err := s.Write(context.Background(), ps); err != nil {
			t.Fatalf("write %d: %v", round, err)
		}
		if d := diffMaps(influxRows(t, srv, db, dev), influxWant(ps)); d != "" {
			t.Fatalf("round %d: %s", round, d)
		}
		if n := len(testkit.InfluxQuery(t, srv, db, `SELECT count("temp") FROM "ingest"`)); n != 1 {
			t.Fatalf("count rows: %d", n)
		}
		rows := testkit.InfluxQuery(t, srv, db, `SELECT count("temp") FROM "ingest"`)
		if c := rows[0]["count"].(json.Number).String(); c != "20" {
			t.Fatalf("round %d: %s points, want 20", round, c)
		}
	}
	if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 40 {
		t.Errorf("lines written: %v, want 40", got)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Requests); got != 6 {
		t.Errorf("requests: %v, want 6 (20 lines in requests of 7, twice)", got)
	}
}

// TestInfluxSinkPointWithoutFields: a point with no field to write (a
// message of reserved members or nulls only) makes no line. When it came
// first in a Write it used to count as a line of its own: written, in
// ingest_storage_external_samples_written_total and in MaxLinesPerRequest,
// and sent on its own as an empty request when the Write held nothing else.
func TestInfluxSinkPointWithoutFields(t *testing.T) {
	srv := testkit.InfluxDB(t)
	db := influxDB(t, srv, "")
	s := newTestInflux(t, srv.URL+"/write?db="+db, nil, Options{MaxLinesPerRequest: 2})
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	ps := testkit.Points("nofields", t0, 2)
	empty := storage.Point{Device: "nofields", Time: t0.Add(-time.Second), Numbers: map[string]float64{}, Strings: map[string]string{}}
	if err := s.Write(context.Background(), append([]storage.Point{empty}, ps...)); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), []storage.Point{empty}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 2 {
		t.Errorf("lines written: %v, want 2", got)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Requests); got != 1 {
		t.Errorf("requests: %v, want 1 (the two lines)", got)
	}
	if d := diffMaps(influxRows(t, srv, db, "nofields"), influxWant(ps)); d != "" {
		t.Error(d)
	}
}

// TestInfluxSinkInfluxDBTooOld: points older than the retention policy are
// dropped and counted; the others land.
func TestInfluxSinkInfluxDBTooOld(t *testing.T) {
	srv := testkit.InfluxDB(t)
	db := influxDB(t, srv, "1h")
	reg := prometheus.NewRegistry()
	s := newTestInflux(t, srv.URL+"/write?db="+db, reg, Options{})
	now := time.Now().Truncate(time.Second)
	fresh := testkit.Points("fresh", now.Add(-time.Minute), 5)
	old := testkit.Points("fresh", now.Add(-3*time.Hour), 8)
	for round := range 2 {
		if err := s.Write(context.Background(), append(append([]storage.Point{}, old...), fresh...)); err != nil {
			t.Fatalf("write %d: %v", round, err)
		}
		if d := diffMaps(influxRows(t, srv, db, "fresh"), influxWant(fresh)); d != "" {
			t.Fatal(d)
		}
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindTooOld)); got != 16 {
		t.Errorf("dropped too old: %v, want 16", got)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Errors.WithLabelValues(sinkhttp.KindTooOld)); got != 2 {
		t.Errorf("too old answers: %v, want 2", got)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 10 {
		t.Errorf("lines written: %v, want 10", got)
	}
}

// TestInfluxSinkRejected: a line the store cannot take (a field of another
// type than stored) is dropped and counted, the rest of the Write lands; a
// store that keeps refusing lines (a device sending what it cannot take, at
// every Write) is logged at most every 10 s, not once per refusal; a
// missing database fails the Write and drops nothing.
func TestInfluxSinkRejected(t *testing.T) {
	srv := testkit.InfluxDB(t)
	db := influxDB(t, srv, "")
	var logs testkit.Logs
	s, err := New(Options{URL: srv.URL + "/write?db=" + db}, nil, logs.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	ps := testkit.Points("typed", t0, 4)
	if err := s.Write(context.Background(), ps[:1]); err != nil {
		t.Fatal(err)
	}
	ps[2].Numbers = map[string]float64{}
	ps[2].Strings = map[string]string{"temp": "warm"} // temp is a float field
	if err := s.Write(context.Background(), ps); err != nil {
		t.Fatalf("write with a conflicting line: %v", err)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindRejected)); got != 1 {
		t.Errorf("dropped rejected: %v, want 1", got)
	}
	want := influxWant([]storage.Point{ps[0], ps[1], ps[3]})
	if d := diffMaps(influxRows(t, srv, db, "typed"), want); d != "" {
		t.Error(d)
	}
	for i := range 19 {
		p := testkit.Points("typed", t0.Add(time.Duration(10+i)*time.Second), 1)
		p[0].Numbers = map[string]float64{}
		p[0].Strings = map[string]string{"temp": "warm"}
		if err := s.Write(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindRejected)); got != 20 {
		t.Errorf("dropped rejected after 19 more: %v, want 20", got)
	}
	if n := logs.Count("level=WARN"); n != 1 {
		t.Errorf("%d warnings for 20 refused lines, want 1:\n%s", n, logs.String())
	}

	missing := newTestInflux(t, srv.URL+"/write?db=nodb_"+db, nil, Options{Name: "missing"})
	err = missing.Write(context.Background(), ps[:1])
	var ke *storage.KindError
	if !errorsAs(err, &ke) || ke.Kind != "rejected" {
		t.Fatalf("write to a missing database: %v", err)
	}
	if got := testutil.ToFloat64(missing.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindRejected)); got != 0 {
		t.Errorf("dropped: %v", got)
	}
}

func TestInfluxSinkVictoriaMetrics(t *testing.T) {
	srv := testkit.VictoriaMetrics(t)
	reg := prometheus.NewRegistry()
	s := newTestInflux(t, srv.URL+"/write", reg, Options{MaxLinesPerRequest: 7, NoStrings: true})
	dev := fmt.Sprintf("influx-vm-%d", time.Now().UnixNano())
	t0 := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	const n = 20
	ps := testkit.Points(dev, t0, n)
	want := map[string][]testkit.Sample{}
	for _, p := range ps {
		for f, v := range p.Numbers {
			k := testkit.LabelsKey(map[string]string{"__name__": "ingest_" + f, "device": dev, "site": "lab 1", "group": "a,b=c"})
			want[k] = append(want[k], testkit.Sample{T: p.Time.UnixMilli(), V: fmt.Sprint(v)})
		}
	}
	for round := range 2 {
		if err := s.Write(context.Background(), ps); err != nil {
			t.Fatalf("write %d: %v", round, err)
		}
		testkit.Eventually(t, 30*time.Second, "store holds every sample once", func() (bool, string) {
			d := testkit.DiffSamples(testkit.VMExport(t, srv, fmt.Sprintf(`{device=%q}`, dev)), want)
			return d == "", d
		})
	}
	if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 2*n {
		t.Errorf("lines written: %v, want %d", got, 2*n)
	}
}

// TestInfluxSinkRedirectNotStored: a store behind a front that redirects
// the write endpoint with 301, 302 or 303 (an ingress moving it, an
// authenticating proxy sending the client to its sign-in page) has not
// taken the lines. Followed, such a redirect turns the POST into a GET
// without a body, which VictoriaMetrics's /write answers 204: the Write
// returned nil with nothing stored, and the writer committed the records
// for good. The Write must fail instead, as for any answer that refuses
// the request itself; a 307 or 308, which keeps the method and the body,
// is followed and lands.
func TestInfluxSinkRedirectNotStored(t *testing.T) {
	srv := testkit.VictoriaMetrics(t)
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusPermanentRedirect} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			ln := testkit.Listen(t)
			front := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, srv.URL+r.URL.RequestURI(), code)
			})}
			done := make(chan struct{})
			go func() { defer close(done); front.Serve(ln) }()
			t.Cleanup(func() { front.Close(); <-done })

			s := newTestInflux(t, "http://"+ln.Addr().String()+"/write", nil, Options{NoStrings: true})
			dev := fmt.Sprintf("redirect-%d-%d", code, time.Now().UnixNano())
			ps := testkit.Points(dev, time.Now().Add(-time.Minute).Truncate(time.Second), 3)
			err := s.Write(context.Background(), ps)
			if code == http.StatusPermanentRedirect {
				if err != nil {
					t.Fatalf("write through a %d: %v", code, err)
				}
				testkit.Eventually(t, 30*time.Second, "the store holds the lines", func() (bool, string) {
					got := testkit.VMExport(t, srv, fmt.Sprintf(`{device=%q}`, dev))
					return len(got) > 0, fmt.Sprint(got)
				})
				return
			}
			var ke *storage.KindError
			if !errorsAs(err, &ke) || ke.Kind != "rejected" {
				got := testkit.VMExport(t, srv, fmt.Sprintf(`{device=%q}`, dev))
				t.Fatalf("write answered %d: %v (want a rejected KindError); the store holds %d series of the device", code, err, len(got))
			}
			if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 0 {
				t.Errorf("lines counted written: %v", got)
			}
		})
	}
}

func TestInfluxLine(t *testing.T) {
	s := &Sink{opts: Options{Measurement: "m e,a"}}
	p := storage.Point{
		Device:  "d,1 =x",
		Time:    time.UnixMilli(1700000000123),
		Labels:  map[string]string{"site": `end\`, "empty": ""},
		Numbers: map[string]float64{"a.b": 1, "nan": nan(), "": 3, "c": -2.5e-7},
		Strings: map[string]string{"s": "q\"\\\nx", "w=x y,z": "v"},
	}
	b, rejected, tooLong := s.appendLine(nil, &p)
	want := `m\ e\,a,device=d\,1\ \=x,site=end\_ a.b=1,c=-2.5e-07,s="q\"\\` + "\n" + `x",w\=x\ y\,z="v" 1700000000123` + "\n"
	if string(b) != want {
		t.Errorf("line\n%s\nwant\n%s", b, want)
	}
	if rejected != 2 || tooLong != 0 {
		t.Errorf("rejected %d, too long %d", rejected, tooLong)
	}
	if b, _, _ := s.appendLine(nil, &storage.Point{Device: "d", Numbers: map[string]float64{"x": nan()}}); len(b) != 0 {
		t.Errorf("a point with no field: %q", b)
	}
}

func nan() float64 { var z float64; return z / z }

func TestParseInfluxError(t *testing.T) {
	for _, c := range []struct {
		body string
		want influxError
		ok   bool
	}{
		{`{"error":"partial write: points beyond retention policy dropped=3"}`, influxError{Message: "partial write: points beyond retention policy dropped=3", Partial: true, Dropped: 3, BeyondRetention: true}, true},
		{`{"error":"partial write: field type conflict: input field \"x\" on measurement \"m\" is type string, already exists as type float dropped=1"}`, influxError{Message: `partial write: field type conflict: input field "x" on measurement "m" is type string, already exists as type float dropped=1`, Partial: true, Dropped: 1}, true},
		{`{"error":"unable to parse 'x': bad timestamp"}`, influxError{Message: "unable to parse 'x': bad timestamp"}, true},
		{`{"code":"unprocessable entity","message":"failure writing points to database: partial write: points beyond retention policy dropped=2"}`,
			influxError{Message: "failure writing points to database: partial write: points beyond retention policy dropped=2", Partial: true, Dropped: 2, BeyondRetention: true}, true},
		{`{"code":"invalid","message":"unable to parse 'x': bad timestamp"}`, influxError{Message: "unable to parse 'x': bad timestamp"}, true},
		{"cannot parse line\n", influxError{Message: "cannot parse line"}, true},
		{`{"error":"partial write: dropped=x"}`, influxError{Message: "partial write: dropped=x"}, true},
		{`{"error":"partial write: unable to parse 'b temp=2 10413792000000': time outside range -9223372036854775806 - 9223372036854775806\nunable to parse 'c,site=a\\ temp=2 1': invalid tag format dropped=0"}`,
			influxError{Message: "partial write: unable to parse 'b temp=2 10413792000000': time outside range -9223372036854775806 - 9223372036854775806\nunable to parse 'c,site=a\\ temp=2 1': invalid tag format dropped=0", Partial: true, Unparsed: 2}, true},
		{``, influxError{}, false},
	} {
		got, ok := parseInfluxError([]byte(c.body))
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %+v %v, want %+v %v", c.body, got, ok, c.want, c.ok)
		}
	}
}

func FuzzParseInfluxError(f *testing.F) {
	f.Add([]byte(`{"error":"partial write: points beyond retention policy dropped=3"}`))
	f.Add([]byte(`{"error":"unable to parse 'x': bad timestamp"}`))
	f.Add([]byte(`partial write: x dropped=-1`))
	f.Fuzz(func(t *testing.T, body []byte) {
		e, ok := parseInfluxError(body)
		if e.Dropped < 0 || e.Unparsed < 0 || (!e.Partial && (e.Dropped != 0 || e.BeyondRetention || e.Unparsed != 0)) {
			t.Fatalf("%+v", e)
		}
		if !ok && (e.Partial || e.Message != "") {
			t.Fatalf("nothing said, yet %+v", e)
		}
		v := judgeInflux(sinkhttp.Answer{Status: 400, Body: body})
		if v == sinkhttp.TooOld && !e.BeyondRetention {
			t.Fatalf("too old without a retention drop: %+v", e)
		}
	})
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// TestInfluxTrailingBackslash: a tag value, a device or a field key that
// ends in a backslash neither loses its point nor swallows the fields after
// it. InfluxDB 1.x reads any separator after a backslash as escaped, so no
// escaping ends a name with one: the sink appends '_' to it.
func TestInfluxTrailingBackslash(t *testing.T) {
	srv := testkit.InfluxDB(t)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	for _, c := range []struct{ where, v, stored string }{
		{"label", `C:\data\`, `C:\data\_`},
		{"device", `dev\`, `dev\_`},
		{"field", `k\`, `k\_`},
		{"label", `two\\`, `two\\_`},
	} {
		db := influxDB(t, srv, "")
		s := newTestInflux(t, srv.URL+"/write?db="+db, nil, Options{Name: fmt.Sprint("s", time.Now().UnixNano())})
		p := storage.Point{Device: "d", Time: t0, Labels: map[string]string{"site": "x"}, Numbers: map[string]float64{"temp": 1}, Strings: map[string]string{}}
		want := map[string]string{"device": "d", "site": "x", "temp": "1"}
		switch c.where {
		case "label":
			p.Labels["site"] = c.v
			want["site"] = c.stored
		case "field":
			p.Numbers[c.v] = 2
			want[c.stored] = "2"
		case "device":
			p.Device = c.v
			want["device"] = c.stored
		}
		if err := s.Write(context.Background(), []storage.Point{p}); err != nil {
			t.Fatalf("%s %q: %v", c.where, c.v, err)
		}
		rows := testkit.InfluxQuery(t, srv, db, `SELECT * FROM "ingest"`)
		if len(rows) != 1 || fmt.Sprint(rows[0]["temp"]) != "1" {
			t.Errorf("%s %q: InfluxDB holds %v; want one row with temp=1", c.where, c.v, rows)
			continue
		}
		got := map[string]string{}
		for k, v := range rows[0] {
			if k != "time" && v != nil {
				got[k] = fmt.Sprint(v)
			}
		}
		if d := diffMaps(got, want); d != "" {
			t.Errorf("%s %q: %s", c.where, c.v, d)
		}
		for _, r := range []string{sinkhttp.KindRejected, sinkhttp.KindTooOld, sinkhttp.DropStringTooLong} {
			if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(r)); got != 0 {
				t.Errorf("%s %q: dropped %s: %v", c.where, c.v, r, got)
			}
		}
	}
}

// TestInfluxUnparsedLineCounted: InfluxDB 1.x answers a request where some
// lines do not parse (here: times past 2262, outside its range) with
// "partial write: unable to parse ... dropped=0" after storing the others;
// the sink counts those lines as dropped (rejected), not as written.
func TestInfluxUnparsedLineCounted(t *testing.T) {
	srv := testkit.InfluxDB(t)
	db := influxDB(t, srv, "")
	s := newTestInflux(t, srv.URL+"/write?db="+db, nil, Options{})
	t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	far := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
	ps := []storage.Point{
		{Device: "good", Time: t0, Numbers: map[string]float64{"temp": 1}},
		{Device: "bad", Time: far, Labels: map[string]string{"site": `C:\data\`}, Numbers: map[string]float64{"temp": 2}},
		{Device: "good", Time: t0.Add(time.Millisecond), Numbers: map[string]float64{"temp": 3}},
		{Device: "bad", Time: far.Add(time.Millisecond), Numbers: map[string]float64{"temp": 4}},
	}
	if err := s.Write(context.Background(), ps); err != nil {
		t.Fatal(err)
	}
	rows := testkit.InfluxQuery(t, srv, db, `SELECT * FROM "ingest"`)
	dropped := 0.0
	for _, r := range []string{sinkhttp.KindRejected, sinkhttp.KindTooOld, sinkhttp.DropStringTooLong} {
		dropped += testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(r))
	}
	written := testutil.ToFloat64(s.h.Metrics.Samples)
	t.Logf("store holds %d rows; sink counted %v written, %v dropped", len(rows), written, dropped)
	if len(rows) < len(ps) && dropped == 0 {
		t.Fatalf("the store holds %d of %d lines, yet the sink counted %v written and %v dropped", len(rows), len(ps), written, dropped)
	}
	if len(rows) != 2 || written != 2 || dropped != 2 {
		t.Errorf("store holds %d rows, sink counted %v written and %v dropped; want 2, 2, 2", len(rows), written, dropped)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindRejected)); got != 2 {
		t.Errorf("dropped rejected: %v, want 2", got)
	}
}

// TestInfluxTimeKey: InfluxDB reserves the key time. A field named time
// (a device that sends its own clock as {"time": ...}) was sent as it is:
// InfluxDB 1.x answers 204 and stores the line without it, so the field
// was counted written and never stored (1.8 and later refuse the whole
// line, the device's other fields with it); a registry label named time
// made InfluxDB refuse every line of the device ("invalid tag key"), its
// fields all dropped. The field is dropped and counted as rejected, the
// tag left out, and the rest of each line lands.
func TestInfluxTimeKey(t *testing.T) {
	srv := testkit.InfluxDB(t)
	db := influxDB(t, srv, "")
	s := newTestInflux(t, srv.URL+"/write?db="+db, nil, Options{})
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	ps := []storage.Point{
		{Device: "field", Time: t0, Numbers: map[string]float64{"temp": 1, "time": 1700000000}, Strings: map[string]string{}},
		{Device: "tag", Time: t0, Labels: map[string]string{"time": "utc", "site": "lab"}, Numbers: map[string]float64{"temp": 2}, Strings: map[string]string{}},
		{Device: "string", Time: t0, Numbers: map[string]float64{"temp": 3}, Strings: map[string]string{"time": "noon"}},
	}
	if err := s.Write(context.Background(), ps); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{
		"field":  {"device": "field", "temp": "1"},
		"tag":    {"device": "tag", "site": "lab", "temp": "2"},
		"string": {"device": "string", "temp": "3"},
	}
	ts := fmt.Sprint(t0.UnixMilli())
	for dev, w := range want {
		wm := map[string]string{}
		for k, v := range w {
			wm[ts+" "+k] = v
		}
		if d := diffMaps(influxRows(t, srv, db, dev), wm); d != "" {
			t.Errorf("device %s: %s", dev, d)
		}
	}
	if got := testutil.ToFloat64(s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindRejected)); got != 2 {
		t.Errorf("dropped rejected: %v, want 2 (the fields named time)", got)
	}
	if got := testutil.ToFloat64(s.h.Metrics.Samples); got != 3 {
		t.Errorf("lines written: %v, want 3", got)
	}
}
