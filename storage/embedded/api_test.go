package embedded_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

// grafanaAPI serves the query API over a TSDB holding two samples of
// dev-1, with the options a process gives it; ready and healthy switch
// its probes.
type grafanaAPI struct {
	url            string
	t0             time.Time
	ready, healthy atomic.Pointer[error]
	noRedirect     *http.Client
	data           string
}

func newGrafanaAPI(t *testing.T) *grafanaAPI {
	t.Helper()
	db, _ := openTSDB(t, t.TempDir(), embedded.Options{})
	g := &grafanaAPI{t0: time.Now().Add(-time.Minute).Truncate(time.Second), data: t.TempDir()}
	if err := db.Write(context.Background(), []storage.Point{
		point("dev-1", g.t0, map[string]float64{"temp": 1}, map[string]string{"door": "open"}, map[string]string{"site": "x"}),
		point("dev-1", g.t0.Add(10*time.Second), map[string]float64{"temp": 2}, nil, map[string]string{"site": "x"}),
	}); err != nil {
		t.Fatal(err)
	}
	api := embedded.NewAPI(db.DB(), embedded.APIOptions{
		Retention: 15 * 24 * time.Hour,
		Flags:     map[string]string{"data.dir": g.data, "query.timeout": "2m0s"},
		Ready: func() error {
			if p := g.ready.Load(); p != nil {
				return *p
			}
			return nil
		},
		Healthy: func() error {
			if p := g.healthy.Load(); p != nil {
				return *p
			}
			return nil
		},
	}, nil, nil)
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	g.url = srv.URL
	g.noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return g
}

// call makes one request: GET with params in the URL, or POST with them as
// a form, as Grafana sends each endpoint. It returns the status, the
// headers and the body.
func (g *grafanaAPI) call(t *testing.T, method, path string, params url.Values) (int, http.Header, []byte) {
	t.Helper()
	var req *http.Request
	var err error
	if method == http.MethodPost {
		req, err = http.NewRequest(method, g.url+path, strings.NewReader(params.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	} else {
		u := g.url + path
		if len(params) > 0 {
			u += "?" + params.Encode()
		}
		req, err = http.NewRequest(method, u, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp, err := g.noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// success makes the call and decodes a success answer's data into data.
func (g *grafanaAPI) success(t *testing.T, method, path string, params url.Values, data any) {
	t.Helper()
	code, h, b := g.call(t, method, path, params)
	var r struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil || code != 200 || r.Status != "success" || h.Get("Content-Type") != "application/json" {
		t.Fatalf("%s %s %v: %d %q %s (%v)", method, path, params, code, h.Get("Content-Type"), b, err)
	}
	if err := json.Unmarshal(r.Data, data); err != nil {
		t.Fatalf("%s %s: data %s: %v", method, path, r.Data, err)
	}
}

// TestAPIGrafanaCalls makes the calls Grafana's Prometheus data source and
// Grafana's alerting make, with their methods and parameters (from
// Grafana's source: pkg/promlib for the backend, packages/grafana-prometheus
// for the query editor, the alerting proxy's rules and alerts routes), and
// checks each answer has the shape Grafana reads.
func TestAPIGrafanaCalls(t *testing.T) {
	g := newGrafanaAPI(t)
	secs := func(t time.Time) string { return strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', -1, 64) }
	now := time.Now()

	// Saving the data source: the health check, an instant query of 1+1
	// at 4 s after the epoch (POST, the data source's default method),
	// then buildinfo, whose empty features make Grafana take the store
	// for Prometheus (not Mimir, whose ruler API it would then call).
	var q struct {
		ResultType string `json:"resultType"`
		Result     [2]any `json:"result"`
	}
	g.success(t, "POST", "/api/v1/query", url.Values{"query": {"1+1"}, "time": {"4"}}, &q)
	if q.ResultType != "scalar" || q.Result[0] != 4.0 || q.Result[1] != "2" {
		t.Errorf("health check query: %+v", q)
	}
	var bi struct {
		Version   string            `json:"version"`
		Features  map[string]string `json:"features"`
		GoVersion string            `json:"goVersion"`
	}
	g.success(t, "GET", "/api/v1/status/buildinfo", nil, &bi)
	if !strings.HasPrefix(bi.Version, "3.") || len(bi.Features) != 0 || bi.GoVersion == "" {
		t.Errorf("buildinfo %+v", bi)
	}

	// Opening the query editor: recording rules (GET), and whether
	// exemplars are available: a query "test" with start and end in
	// milliseconds, as the editor sends them. Success means available.
	var rules struct {
		Groups []any `json:"groups"`
	}
	g.success(t, "GET", "/api/v1/rules", nil, &rules)
	if rules.Groups == nil || len(rules.Groups) != 0 {
		t.Errorf("rules: groups %v, want []", rules.Groups)
	}
	var ex []any
	g.success(t, "GET", "/api/v1/query_exemplars", url.Values{"query": {"test"},
		"start": {strconv.FormatInt(now.Add(-30*time.Minute).UnixMilli(), 10)}, "end": {strconv.FormatInt(now.UnixMilli(), 10)}}, &ex)
	if ex == nil || len(ex) != 0 {
		t.Errorf("query_exemplars: %v, want []", ex)
	}
	// A panel with exemplars on: the backend asks with start and end in
	// seconds, by POST.
	ex = nil
	g.success(t, "POST", "/api/v1/query_exemplars", url.Values{"query": {`rate(temp{device="dev-1"}[5m])`},
		"start": {secs(g.t0)}, "end": {secs(now)}}, &ex)
	if ex == nil || len(ex) != 0 {
		t.Errorf("query_exemplars by POST: %v, want []", ex)
	}

	// The metrics browser and autocompletion: metadata (GET only), label
	// names and series (POST), label values (GET only).
	var meta map[string][]struct{ Type, Help, Unit string }
	g.success(t, "GET", "/api/v1/metadata", url.Values{"limit": {"40000"}}, &meta)
	if len(meta["temp"]) != 1 || meta["temp"][0].Type != "gauge" {
		t.Errorf("metadata %+v", meta)
	}
	var names []string
	g.success(t, "POST", "/api/v1/labels", url.Values{"start": {secs(now.Add(-time.Hour))}, "end": {secs(now)},
		"match[]": {`{__name__="temp"}`}, "limit": {"40000"}}, &names)
	if strings.Join(names, " ") != "__name__ device site" {
		t.Errorf("labels %v", names)
	}
	var series []map[string]string
	g.success(t, "POST", "/api/v1/series", url.Values{"start": {secs(now.Add(-time.Hour))}, "end": {secs(now)},
		"match[]": {`door_info`}, "limit": {"40000"}}, &series)
	if len(series) != 1 || series[0]["value"] != "open" {
		t.Errorf("series %v", series)
	}
	var values []string
	g.success(t, "GET", "/api/v1/label/device/values", url.Values{"start": {secs(now.Add(-time.Hour))}, "end": {secs(now)},
		"match[]": {`temp`}}, &values)
	if strings.Join(values, " ") != "dev-1" {
		t.Errorf("label values %v", values)
	}
	// The range query of a panel (POST, step in seconds).
	var rq struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Values [][2]any `json:"values"`
		} `json:"result"`
	}
	g.success(t, "POST", "/api/v1/query_range", url.Values{"query": {"temp"}, "start": {secs(g.t0)}, "end": {secs(g.t0.Add(10 * time.Second))},
		"step": {"5"}, "timeout": {"30s"}}, &rq)
	if rq.ResultType != "matrix" || len(rq.Result) != 1 || len(rq.Result[0].Values) != 3 {
		t.Errorf("query_range %+v", rq)
	}
	// A subquery without a step ([5m:], as in max_over_time(rate(x[1m])[1h:]))
	// is evaluated at Prometheus's default evaluation interval, 1m: five
	// steps in the five minutes before 300.5 s.
	var sq struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	g.success(t, "POST", "/api/v1/query", url.Values{"query": {"count_over_time(vector(1)[5m:])"}, "time": {"300.5"}}, &sq)
	if sq.ResultType != "vector" || len(sq.Result) != 1 || sq.Result[0].Value[1] != "5" {
		t.Errorf("subquery without a step: %+v, want 5", sq)
	}

	// Grafana's alerting lists a Prometheus data source's rules and alerts.
	g.success(t, "GET", "/api/v1/rules", url.Values{"type": {"alert"}}, &rules)
	var alerts struct {
		Alerts []any `json:"alerts"`
	}
	g.success(t, "GET", "/api/v1/alerts", nil, &alerts)
	if alerts.Alerts == nil || len(alerts.Alerts) != 0 {
		t.Errorf("alerts: %v, want []", alerts.Alerts)
	}

	// The query editor's "format query" (GET and POST).
	var formatted string
	for _, m := range []string{"GET", "POST"} {
		g.success(t, m, "/api/v1/format_query", url.Values{"query": {`sum( temp{device="dev-1"} )by(site)`}}, &formatted)
		if formatted != `sum by (site) (temp{device="dev-1"})` {
			t.Errorf("%s format_query: %q", m, formatted)
		}
	}

	// The status pages Grafana's Prometheus client knows (GET only).
	var ri map[string]any
	g.success(t, "GET", "/api/v1/status/runtimeinfo", nil, &ri)
	for _, k := range []string{"startTime", "CWD", "hostname", "serverTime", "reloadConfigSuccess", "lastConfigTime",
		"corruptionCount", "goroutineCount", "GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG", "storageRetention"} {
		if _, ok := ri[k]; !ok {
			t.Errorf("runtimeinfo has no %s: %v", k, ri)
		}
	}
	if ri["storageRetention"] != "15d" || ri["reloadConfigSuccess"] != true {
		t.Errorf("runtimeinfo %v", ri)
	}
	var flags map[string]string
	g.success(t, "GET", "/api/v1/status/flags", nil, &flags)
	if flags["data.dir"] != g.data || len(flags) != 2 {
		t.Errorf("flags %v", flags)
	}
}

// TestAPIPrometheusClient reads the endpoints with Prometheus's own Go API
// client, which decodes every answer into its typed results.
func TestAPIPrometheusClient(t *testing.T) {
	g := newGrafanaAPI(t)
	c, err := promapi.NewClient(promapi.Config{Address: g.url})
	if err != nil {
		t.Fatal(err)
	}
	api := promv1.NewAPI(c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := time.Now()

	if bi, err := api.Buildinfo(ctx); err != nil || !strings.HasPrefix(bi.Version, "3.") {
		t.Errorf("buildinfo %+v: %v", bi, err)
	}
	if ri, err := api.Runtimeinfo(ctx); err != nil || ri.StorageRetention != "15d" || ri.GOMAXPROCS < 1 || time.Since(ri.StartTime) > time.Minute {
		t.Errorf("runtimeinfo %+v: %v", ri, err)
	}
	if f, err := api.Flags(ctx); err != nil || f["query.timeout"] != "2m0s" {
		t.Errorf("flags %v: %v", f, err)
	}
	if r, err := api.Rules(ctx, nil); err != nil || r.Groups == nil || len(r.Groups) != 0 {
		t.Errorf("rules %+v: %v", r, err)
	}
	if a, err := api.Alerts(ctx); err != nil || len(a.Alerts) != 0 {
		t.Errorf("alerts %+v: %v", a, err)
	}
	if e, err := api.QueryExemplars(ctx, `temp`, now.Add(-time.Hour), now); err != nil || len(e) != 0 {
		t.Errorf("exemplars %+v: %v", e, err)
	}
	// The client hands back format_query's data undecoded: a JSON string.
	if s, err := api.FormatQuery(ctx, `rate( temp[5m] )`); err != nil || s != `"rate(temp[5m])"` {
		t.Errorf("format_query %s: %v", s, err)
	}
	if _, err := api.FormatQuery(ctx, `rate(`); err == nil {
		t.Error("format_query of a broken query succeeded")
	} else {
		var perr *promv1.Error
		if !errors.As(err, &perr) || perr.Type != promv1.ErrBadData {
			t.Errorf("format_query of a broken query: %v, want bad_data", err)
		}
	}
	if v, _, _, err := api.Query(ctx, `temp`, g.t0.Add(10*time.Second)); err != nil || v.String() != `temp{device="dev-1", site="x"} => 2 @[`+fmt.Sprint(g.t0.Unix()+10)+`]` {
		t.Errorf("query %v: %v", v, err)
	}
}

// TestAPIErrorsAndProbes: every error below /api/v1/ is JSON in
// Prometheus's error shape; the root and /api/v1/ answer; the health
// endpoints answer as Prometheus's do.
func TestAPIErrorsAndProbes(t *testing.T) {
	g := newGrafanaAPI(t)
	for _, c := range []struct {
		method, path string
		params       url.Values
		code         int
		typ          string
	}{
		{"GET", "/api/v1/no_such_endpoint", nil, 404, "not_found"},
		{"POST", "/api/v1/targets", nil, 404, "not_found"},
		{"GET", "/api/v1/label/device", nil, 404, "not_found"},
		{"GET", "/api/v1/status/config", nil, 404, "not_found"},
		{"DELETE", "/api/v1/rules", nil, 405, "method_not_allowed"},
		{"GET", "/api/v1/rules", url.Values{"type": {"bogus"}}, 400, "bad_data"},
		{"GET", "/api/v1/rules", url.Values{"match[]": {"{"}}, 400, "bad_data"},
		{"GET", "/api/v1/format_query", url.Values{"query": {"sum("}}, 400, "bad_data"},
		{"GET", "/api/v1/query_exemplars", url.Values{"query": {"temp"}, "start": {"10"}, "end": {"5"}}, 400, "bad_data"},
		{"GET", "/api/v1/query_exemplars", url.Values{"query": {"temp{"}}, 400, "bad_data"},
		// A step under the engine's millisecond is none: it used to reach
		// the engine, which divided by it (a runtime panic, logged with its
		// stack, answered 422).
		{"GET", "/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"100"}, "end": {"100.001"}, "step": {"0.0000001"}}, 400, "bad_data"},
		{"POST", "/api/v1/query_range", url.Values{"query": {"vector(1)"}, "start": {"100"}, "end": {"100"}, "step": {"0.0009"}}, 400, "bad_data"},
		// A match[] whose every matcher matches the empty label value
		// selects every series: Prometheus refuses it ("match[] must
		// contain at least one non-empty matcher"), as a query's selector.
		{"GET", "/api/v1/series", url.Values{"match[]": {`{site=""}`}}, 400, "bad_data"},
		{"POST", "/api/v1/series", url.Values{"match[]": {"temp", `{__name__=~".*"}`}}, 400, "bad_data"},
		{"GET", "/api/v1/labels", url.Values{"match[]": {`{device=~".*"}`}}, 400, "bad_data"},
		{"GET", "/api/v1/label/device/values", url.Values{"match[]": {`{site!="x"}`}}, 400, "bad_data"},
		// A timeout that is not positive, and a lookback_delta that does
		// not parse, are the request's error (Prometheus: 400 bad_data),
		// not a query that timed out at once (503) or a query run with the
		// default look-back as if the parameter had not been given (200).
		{"GET", "/api/v1/query", url.Values{"query": {"temp"}, "timeout": {"0"}}, 400, "bad_data"},
		{"POST", "/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"100"}, "end": {"200"}, "step": {"10"}, "timeout": {"-1s"}}, 400, "bad_data"},
		{"GET", "/api/v1/query", url.Values{"query": {"temp"}, "timeout": {"NaN"}}, 400, "bad_data"},
		{"GET", "/api/v1/query", url.Values{"query": {"temp"}, "lookback_delta": {"five minutes"}}, 400, "bad_data"},
		{"POST", "/api/v1/query_range", url.Values{"query": {"temp"}, "start": {"100"}, "end": {"200"}, "step": {"10"}, "lookback_delta": {"NaN"}}, 400, "bad_data"},
	} {
		code, h, b := g.call(t, c.method, c.path, c.params)
		var r testkit.PromResult
		err := json.Unmarshal(b, &r)
		if err != nil || code != c.code || r.Status != "error" || r.ErrorType != c.typ || r.Error == "" || h.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s %v: %d %q %s, want %d %s in JSON", c.method, c.path, c.params, code, h.Get("Content-Type"), b, c.code, c.typ)
		}
	}

	// / leads to /api/v1/, which lists the endpoints; each of them answers.
	if code, h, _ := g.call(t, "GET", "/", nil); code != http.StatusFound || h.Get("Location") != "/api/v1/" {
		t.Errorf("GET /: %d to %q", code, h.Get("Location"))
	}
	if code, h, _ := g.call(t, "GET", "/api/v1", nil); code/100 != 3 || h.Get("Location") != "/api/v1/" {
		t.Errorf("GET /api/v1: %d to %q", code, h.Get("Location"))
	}
	var index struct {
		Endpoints []string `json:"endpoints"`
		Health    []string `json:"health"`
	}
	g.success(t, "GET", "/api/v1/", nil, &index)
	if len(index.Endpoints) < 13 || strings.Join(index.Health, " ") != "/-/healthy /-/ready" {
		t.Fatalf("index %+v", index)
	}
	for _, e := range index.Endpoints {
		code, _, b := g.call(t, "GET", strings.Replace(e, "{name}", "device", 1), url.Values{"query": {"temp"}, "match[]": {"temp"},
			"start": {fmt.Sprint(g.t0.Unix())}, "end": {fmt.Sprint(g.t0.Unix() + 10)}, "step": {"1"}})
		if code != 200 {
			t.Errorf("GET %s, listed at /api/v1/: %d %s", e, code, b)
		}
	}
	if code, _, _ := g.call(t, "GET", "/graph", nil); code != 404 {
		t.Errorf("GET /graph: %d", code)
	}

	probe := func(method, path string, wantCode int, wantBody string) {
		t.Helper()
		code, _, b := g.call(t, method, path, nil)
		if code != wantCode || string(b) != wantBody {
			t.Errorf("%s %s: %d %q, want %d %q", method, path, code, b, wantCode, wantBody)
		}
	}
	probe("GET", "/-/healthy", 200, "ingest is Healthy.\n")
	probe("HEAD", "/-/healthy", 200, "")
	probe("GET", "/-/ready", 200, "ingest is Ready.\n")
	probe("HEAD", "/-/ready", 200, "")
	probe("POST", "/-/ready", 405, "Method Not Allowed\n")

	notReady := errors.New("catching up with the middletiers")
	g.ready.Store(&notReady)
	probe("GET", "/-/ready", 503, "Service Unavailable: catching up with the middletiers\n")
	probe("HEAD", "/-/ready", 503, "")
	probe("GET", "/-/healthy", 200, "ingest is Healthy.\n")
	failed := errors.New("tsdb failed: fsync: input/output error")
	g.healthy.Store(&failed)
	probe("GET", "/-/healthy", 500, "Internal Server Error: tsdb failed: fsync: input/output error\n")
	g.ready.Store(nil)
	probe("GET", "/-/ready", 200, "ingest is Ready.\n")
}

// TestAPIEmptyLabelsAreEmptyLists: when no label name or value matches,
// /api/v1/label/<name>/values and /api/v1/labels answer "data":[] as
// Prometheus does (web/api/v1), not null: clients index the list
// (Grafana's variable queries, promtool).
func TestAPIEmptyLabelsAreEmptyLists(t *testing.T) {
	db, _ := openTSDB(t, t.TempDir(), embedded.Options{})
	if err := db.Write(context.Background(), []storage.Point{point("d", time.Now().Add(-time.Minute), map[string]float64{"temp": 1}, nil, nil)}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	for _, q := range []string{
		"/api/v1/label/nosuchlabel/values",
		"/api/v1/labels?match[]=nosuchmetric",
		"/api/v1/label/device/values?match[]=nosuchmetric",
	} {
		resp, err := http.Get(srv.URL + q)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"data":[]`) {
			t.Errorf("GET %s answered %d %s, want \"data\":[] as Prometheus", q, resp.StatusCode, b)
		}
	}
}

// TestAPIQueryConcurrencyBounded: the engine ran every query at once, each
// up to MaxSamples (50 million samples) in memory, so a dashboard's panels
// (or anyone who can reach the API) asking together had no bound on the
// memory they held; Prometheus runs 20 at a time (--query.max-concurrency)
// and queues the rest. The engine reports its bound in
// prometheus_engine_queries_concurrent_max (-1: none).
func TestAPIQueryConcurrencyBounded(t *testing.T) {
	db, _ := openTSDB(t, t.TempDir(), embedded.Options{})
	if err := db.Write(context.Background(), []storage.Point{point("d", time.Now().Add(-time.Minute), map[string]float64{"temp": 1}, nil, nil)}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		opts embedded.APIOptions
		want float64
	}{{embedded.APIOptions{}, 20}, {embedded.APIOptions{MaxConcurrent: 3}, 3}} {
		reg := prometheus.NewRegistry()
		srv := httptest.NewServer(embedded.NewAPI(db.DB(), c.opts, reg, nil))
		if got := testkit.Metric(t, reg, "prometheus_engine_queries_concurrent_max"); got != c.want {
			t.Errorf("%+v: prometheus_engine_queries_concurrent_max %v, want %v", c.opts, got, c.want)
		}
		// More queries than the bound, at once: every one is answered.
		errs := make(chan error, 10)
		for range 10 {
			go func() {
				resp, err := http.Get(srv.URL + "/api/v1/query?query=" + url.QueryEscape("count_over_time(temp[10m])"))
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("%d %s", resp.StatusCode, b)
					}
				}
				errs <- err
			}()
		}
		for range 10 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		srv.Close()
	}
}
