package embedded

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	promstorage "github.com/prometheus/prometheus/storage" // storage is ours in this package (tsdb.go)
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/internal/lifecycle"
)

// APIOptions configure the query API. Zero fields mean their defaults.
type APIOptions struct {
	// Timeout bounds one query (a request's timeout parameter can lower
	// it). Default 2m.
	Timeout time.Duration
	// MaxSamples bounds the samples one query may hold in memory.
	// Default 50,000,000.
	MaxSamples int
	// LookbackDelta is how far back an instant selector looks for a
	// sample. Default 5m.
	LookbackDelta time.Duration
	// MaxSeries bounds the series the series endpoint returns, and
	// the names and values the label endpoints return. Default 100,000.
	MaxSeries int
	// MaxConcurrent bounds the queries that run at once, each holding up
	// to MaxSamples; later ones wait for a slot within their timeout, as
	// Prometheus's --query.max-concurrency. Default 20.
	MaxConcurrent int
	// Healthy reports why the store cannot go on (its writes failed for
	// good); /-/healthy answers 500 with the error then. Nil: always
	// healthy.
	Healthy func() error
	// Ready reports why the store does not answer with complete data yet
	// (catching up, stopping); /-/ready answers 503 then. Nil: always
	// ready.
	Ready func() error
	// Retention is the store's retention, reported by status/runtimeinfo.
	// Zero: not reported.
	Retention time.Duration
	// Flags are the process's command-line flags and their values, reported
	// by status/flags. Nil: none.
	Flags map[string]string
}

// DefaultAPIOptions returns the defaults that zero fields stand for.
func DefaultAPIOptions() APIOptions {
	return APIOptions{Timeout: 2 * time.Minute, MaxSamples: 50_000_000, LookbackDelta: 5 * time.Minute, MaxSeries: 100_000, MaxConcurrent: 20}
}

// API serves, over a Queryable, the part of the Prometheus HTTP API that
// Grafana's Prometheus data source, Grafana's alerting and promtool use, in
// Prometheus's JSON format, for GET and for POST forms:
//
//	/api/v1/query  /api/v1/query_range  /api/v1/query_exemplars  /api/v1/format_query
//	/api/v1/series  /api/v1/labels  /api/v1/label/<name>/values  /api/v1/metadata
//	/api/v1/rules  /api/v1/alerts
//	/api/v1/status/buildinfo  /api/v1/status/runtimeinfo  /api/v1/status/flags
//
// The store has no rules, alerts or exemplars: those endpoints check their
// parameters as Prometheus does and answer empty lists. /api/v1/ itself
// answers the list of endpoints; any other path below it is a JSON error
// of type not_found (404). Beside the API it serves Prometheus's health
// endpoints /-/healthy and /-/ready (GET and HEAD), and redirects / to
// /api/v1/, so that it can be mounted at the root of a listener.
type API struct {
	q      promstorage.Queryable
	opts   APIOptions
	engine *promql.Engine
	parser parser.Parser
	lg     *slog.Logger
	mux    *http.ServeMux
	start  time.Time
}

// apiEndpoints are the API's paths, as /api/v1/ lists them.
var apiEndpoints = []string{
	"/api/v1/query", "/api/v1/query_range", "/api/v1/query_exemplars", "/api/v1/format_query",
	"/api/v1/series", "/api/v1/labels", "/api/v1/label/{name}/values", "/api/v1/metadata",
	"/api/v1/rules", "/api/v1/alerts",
	"/api/v1/status/buildinfo", "/api/v1/status/runtimeinfo", "/api/v1/status/flags",
}

// queryGate is the engine's promql.QueryTracker: it bounds the queries
// that run at once (without one the engine runs every query at once, each
// holding up to MaxSamples), and tracks nothing else.
type queryGate struct{ slots chan struct{} }

func newQueryGate(n int) queryGate { return queryGate{slots: make(chan struct{}, n)} }

func (g queryGate) GetMaxConcurrent() int { return cap(g.slots) }

// Insert waits for a slot, or for the query's context to end.
func (g queryGate) Insert(ctx context.Context, _ string) (int, error) {
	select {
	case g.slots <- struct{}{}:
		return 0, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (g queryGate) Delete(int) { <-g.slots }

func (queryGate) Close() error { return nil }

// noStepSubqueryInterval is the step of a subquery that gives none:
// Prometheus's default global evaluation_interval.
const noStepSubqueryInterval = time.Minute

// NewAPI returns the query API over q. reg and lg may be nil; the PromQL
// engine's metrics (prometheus_engine_*) go to reg.
func NewAPI(q promstorage.Queryable, opts APIOptions, reg prometheus.Registerer, lg *slog.Logger) *API {
	d := DefaultAPIOptions()
	defaults.FillPositive(&opts, d)
	p := parser.NewParser(parser.Options{})
	elg := lg
	elg = lifecycle.Logger(elg)
	a := &API{
		q: q, opts: opts, parser: p, lg: lg,
		engine: promql.NewEngine(promql.EngineOpts{
			Logger: elg, Reg: reg, MaxSamples: opts.MaxSamples, Timeout: opts.Timeout,
			ActiveQueryTracker: newQueryGate(opts.MaxConcurrent),
			LookbackDelta:      opts.LookbackDelta, EnableAtModifier: true, EnableNegativeOffset: true,
			Parser: p,
			// A subquery without a step ([1h:]) steps at this interval,
			// Prometheus's global evaluation_interval by default; without
			// it the engine calls a nil function (a runtime panic it
			// recovers, answered 422).
			NoStepSubqueryIntervalFn: func(int64) int64 { return noStepSubqueryInterval.Milliseconds() },
		}),
		mux:   http.NewServeMux(),
		start: time.Now(),
	}
	for path, h := range map[string]http.HandlerFunc{
		"/api/v1/query":               a.query,
		"/api/v1/query_range":         a.queryRange,
		"/api/v1/query_exemplars":     a.queryExemplars,
		"/api/v1/format_query":        a.formatQuery,
		"/api/v1/series":              a.series,
		"/api/v1/labels":              a.labelNames,
		"/api/v1/label/{name}/values": a.labelValues,
		"/api/v1/metadata":            a.metadata,
		"/api/v1/rules":               a.rules,
		"/api/v1/alerts":              a.alerts,
		"/api/v1/status/buildinfo":    a.buildinfo,
		"/api/v1/status/runtimeinfo":  a.runtimeinfo,
		"/api/v1/status/flags":        a.flags,
	} {
		a.mux.HandleFunc(path, h)
	}
	a.mux.HandleFunc("/api/v1/", a.index)
	a.mux.HandleFunc("/-/healthy", a.healthy)
	a.mux.HandleFunc("/-/ready", a.ready)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		http.Redirect(w, r, "/api/v1/", http.StatusFound)
	})
	return a
}

// ServeHTTP serves the API's paths, the health endpoints and the redirect
// from /.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Prometheus's error types, and the status codes it answers them with.
const (
	errBadData   = "bad_data"
	errExec      = "execution"
	errTimeout   = "timeout"
	errCanceled  = "canceled"
	errInternal  = "internal"
	errNotFound  = "not_found"
	errNotAllows = "method_not_allowed"
)

type response struct {
	Status    string   `json:"status"`
	Data      any      `json:"data,omitempty"`
	ErrorType string   `json:"errorType,omitempty"`
	Error     string   `json:"error,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
	Infos     []string `json:"infos,omitempty"`
}

func (a *API) respond(w http.ResponseWriter, data any, warnings, infos []string) {
	b, err := json.Marshal(&response{Status: "success", Data: data, Warnings: warnings, Infos: infos})
	if err != nil {
		a.fail(w, errInternal, fmt.Errorf("encode response: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (a *API) fail(w http.ResponseWriter, typ string, err error) {
	code := http.StatusInternalServerError
	switch typ {
	case errBadData:
		code = http.StatusBadRequest
	case errExec:
		code = http.StatusUnprocessableEntity
	case errTimeout, errCanceled:
		code = http.StatusServiceUnavailable
	case errNotFound:
		code = http.StatusNotFound
	case errNotAllows:
		code = http.StatusMethodNotAllowed
	}
	b, _ := json.Marshal(&response{Status: "error", ErrorType: typ, Error: err.Error()})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(b)
}

// form parses the query string and, for POST, the form body.
func (a *API) form(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		a.fail(w, errNotAllows, fmt.Errorf("method %s not allowed", r.Method))
		return false
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<20)
	if err := r.ParseForm(); err != nil {
		a.fail(w, errBadData, fmt.Errorf("parse form: %w", err))
		return false
	}
	return true
}

// queryData is the data of a query or query_range answer.
type queryData struct {
	ResultType parser.ValueType `json:"resultType"`
	Result     parser.Value     `json:"result"`
}

func (a *API) query(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	ts, err := parseTimeParam(r, "time", time.Now())
	if err != nil {
		a.fail(w, errBadData, err)
		return
	}
	a.runQuery(w, r, func(ctx context.Context, opts promql.QueryOpts) (promql.Query, error) {
		return a.engine.NewInstantQuery(ctx, a.q, opts, r.FormValue("query"), ts)
	})
}

func (a *API) queryRange(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	start, err := parseTime(r.FormValue("start"))
	if err != nil {
		a.fail(w, errBadData, fmt.Errorf("parse start: %w", err))
		return
	}
	end, err := parseTime(r.FormValue("end"))
	if err != nil {
		a.fail(w, errBadData, fmt.Errorf("parse end: %w", err))
		return
	}
	if end.Before(start) {
		a.fail(w, errBadData, errors.New("end timestamp must not be before start time"))
		return
	}
	step, err := parseDuration(r.FormValue("step"))
	if err != nil {
		a.fail(w, errBadData, fmt.Errorf("parse step: %w", err))
		return
	}
	if step <= 0 {
		a.fail(w, errBadData, errors.New("zero or negative query resolution step widths are not accepted. Try a positive integer"))
		return
	}
	if step < time.Millisecond {
		// The engine steps in whole milliseconds: a shorter step is 0
		// there, which it divides by (a runtime panic it recovers and logs
		// with its stack).
		a.fail(w, errBadData, errors.New("query resolution step widths under a millisecond are not accepted: timestamps are milliseconds"))
		return
	}
	// As Prometheus: at most 11,000 points per series.
	if end.Sub(start)/step > 11000 {
		a.fail(w, errBadData, errors.New("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"))
		return
	}
	a.runQuery(w, r, func(ctx context.Context, opts promql.QueryOpts) (promql.Query, error) {
		return a.engine.NewRangeQuery(ctx, a.q, opts, r.FormValue("query"), start, end, step)
	})
}

// runQuery makes the query newQuery returns, under the timeout and with
// the look-back the request asks for, and answers its result.
func (a *API) runQuery(w http.ResponseWriter, r *http.Request, newQuery func(context.Context, promql.QueryOpts) (promql.Query, error)) {
	ctx, cancel, err := a.queryContext(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return
	}
	defer cancel()
	opts, err := a.queryOpts(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return
	}
	qry, err := newQuery(ctx, opts)
	if err != nil {
		a.fail(w, errBadData, fmt.Errorf("parse query: %w", err))
		return
	}
	a.exec(w, ctx, qry)
}

func (a *API) queryContext(r *http.Request) (context.Context, context.CancelFunc, error) {
	ctx := r.Context()
	if to := r.FormValue("timeout"); to != "" {
		d, err := parseDuration(to)
		if err != nil {
			return nil, nil, fmt.Errorf("parse timeout: %w", err)
		}
		if d <= 0 {
			return nil, nil, fmt.Errorf("invalid parameter \"timeout\": timeout must be positive, got %s", d)
		}
		c, cancel := context.WithTimeout(ctx, d)
		return c, cancel, nil
	}
	return ctx, func() {}, nil
}

// queryOpts reads lookback_delta: one that does not parse is the request's
// error, as in Prometheus; zero or less is the engine's default.
func (a *API) queryOpts(r *http.Request) (promql.QueryOpts, error) {
	lookback := time.Duration(0)
	if s := r.FormValue("lookback_delta"); s != "" {
		d, err := parseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("error parsing lookback delta duration: %w", err)
		}
		lookback = max(d, 0)
	}
	return promql.NewPrometheusQueryOpts(false, lookback, nil), nil
}

func (a *API) exec(w http.ResponseWriter, ctx context.Context, qry promql.Query) {
	defer qry.Close()
	res := qry.Exec(ctx)
	if res.Err != nil {
		var (
			eqc promql.ErrQueryCanceled
			eqt promql.ErrQueryTimeout
			est promql.ErrStorage
		)
		switch {
		case errors.As(res.Err, &eqc):
			a.fail(w, errCanceled, res.Err)
		case errors.As(res.Err, &eqt):
			a.fail(w, errTimeout, res.Err)
		case errors.As(res.Err, &est):
			a.fail(w, errInternal, res.Err)
		default:
			a.fail(w, errExec, res.Err)
		}
		return
	}
	switch v := res.Value.(type) { // Prometheus answers [] for nothing, not null
	case promql.Vector:
		if v == nil {
			res.Value = promql.Vector{}
		}
	case promql.Matrix:
		if v == nil {
			res.Value = promql.Matrix{}
		}
	}
	warnings, infos := res.Warnings.AsStrings(qry.String(), 10, 10)
	a.respond(w, &queryData{ResultType: res.Value.Type(), Result: res.Value}, warnings, infos)
}

// matchers parses the match[] selectors. As Prometheus, it refuses a
// selector whose every matcher matches the empty value ({site=""},
// {__name__=~".*"}): it would select every series of the store.
func (a *API) matchers(r *http.Request) ([][]*labels.Matcher, error) {
	var sets [][]*labels.Matcher
	for _, s := range r.Form["match[]"] {
		ms, err := a.parser.ParseMetricSelector(s)
		if err != nil {
			return nil, fmt.Errorf("parse match[] %q: %w", s, err)
		}
		if !slices.ContainsFunc(ms, func(m *labels.Matcher) bool { return m != nil && !m.Matches("") }) {
			return nil, errors.New("match[] must contain at least one non-empty matcher")
		}
		sets = append(sets, ms)
	}
	return sets, nil
}

// timeRange reads start and end, by default everything.
func timeRange(r *http.Request) (start, end time.Time, err error) {
	if start, err = parseTimeParam(r, "start", minTime); err != nil {
		return
	}
	if end, err = parseTimeParam(r, "end", maxTime); err != nil {
		return
	}
	if end.Before(start) {
		err = errors.New("end timestamp must not be before start time")
	}
	return
}

func (a *API) querier(w http.ResponseWriter, r *http.Request) (promstorage.Querier, [][]*labels.Matcher, bool) {
	if !a.form(w, r) {
		return nil, nil, false
	}
	start, end, err := timeRange(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return nil, nil, false
	}
	sets, err := a.matchers(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return nil, nil, false
	}
	q, err := a.q.Querier(timestamp(start), timestamp(end))
	if err != nil {
		a.fail(w, errInternal, fmt.Errorf("open querier: %w", err))
		return nil, nil, false
	}
	return q, sets, true
}

func (a *API) limit(r *http.Request) (int, error) {
	limit := a.opts.MaxSeries
	if s := r.FormValue("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("parse limit %q: want a non-negative integer", s)
		}
		if n > 0 {
			limit = min(limit, n)
		}
	}
	return limit, nil
}

func (a *API) series(w http.ResponseWriter, r *http.Request) {
	q, sets, ok := a.querier(w, r)
	if !ok {
		return
	}
	defer q.Close()
	if len(sets) == 0 {
		a.fail(w, errBadData, errors.New("no match[] parameter provided"))
		return
	}
	limit, err := a.limit(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return
	}
	start, end, _ := timeRange(r)
	hints := &promstorage.SelectHints{Start: timestamp(start), End: timestamp(end), Func: "series", Limit: limit + 1}
	var set promstorage.SeriesSet
	if len(sets) == 1 {
		set = q.Select(r.Context(), false, hints, sets[0]...)
	} else {
		var all []promstorage.SeriesSet
		for _, ms := range sets {
			all = append(all, q.Select(r.Context(), true, hints, ms...))
		}
		set = promstorage.NewMergeSeriesSet(all, 0, promstorage.ChainedSeriesMerge)
	}
	out := []labels.Labels{}
	var warnings []string
	for set.Next() {
		if len(out) == limit {
			warnings = append(warnings, "results truncated due to limit")
			break
		}
		out = append(out, set.At().Labels())
	}
	if err := set.Err(); err != nil {
		a.fail(w, errExec, err)
		return
	}
	ws, _ := set.Warnings().AsStrings("", 10, 0)
	a.respond(w, out, append(warnings, ws...), nil)
}

func (a *API) labelNames(w http.ResponseWriter, r *http.Request) {
	a.labelQuery(w, r, func(q promstorage.Querier, hints *promstorage.LabelHints, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
		return q.LabelNames(r.Context(), hints, ms...)
	})
}

func (a *API) labelValues(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if strings.HasPrefix(name, "U__") {
		name = model.UnescapeName(name, model.ValueEncodingEscaping)
	}
	if !model.UTF8Validation.IsValidLabelName(name) {
		a.fail(w, errBadData, fmt.Errorf("invalid label name: %q", name))
		return
	}
	a.labelQuery(w, r, func(q promstorage.Querier, hints *promstorage.LabelHints, ms []*labels.Matcher) ([]string, annotations.Annotations, error) {
		return q.LabelValues(r.Context(), name, hints, ms...)
	})
}

// labelQuery answers a request for label names or for the values of one
// label: get runs for each matcher set of the request, and the sorted
// union is answered, at most limit of it.
func (a *API) labelQuery(w http.ResponseWriter, r *http.Request, get func(promstorage.Querier, *promstorage.LabelHints, []*labels.Matcher) ([]string, annotations.Annotations, error)) {
	q, sets, ok := a.querier(w, r)
	if !ok {
		return
	}
	defer q.Close()
	limit, err := a.limit(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return
	}
	hints := &promstorage.LabelHints{Limit: limit + 1}
	out, warnings, err := collect(sets, func(ms []*labels.Matcher) ([]string, []string, error) {
		v, ws, err := get(q, hints, ms)
		s, _ := ws.AsStrings("", 10, 0)
		return v, s, err
	})
	if err != nil {
		a.fail(w, errExec, err)
		return
	}
	if len(out) > limit {
		out = out[:limit]
		warnings = append(warnings, "results truncated due to limit")
	}
	a.respond(w, out, warnings, nil)
}

// collect runs get for each matcher set (once with none if there are
// none) and returns the sorted union, never nil: Prometheus answers an
// empty list as [], not null.
func collect(sets [][]*labels.Matcher, get func([]*labels.Matcher) ([]string, []string, error)) ([]string, []string, error) {
	if len(sets) == 0 {
		sets = [][]*labels.Matcher{nil}
	}
	seen := map[string]bool{}
	var warnings []string
	for _, ms := range sets {
		vs, ws, err := get(ms)
		if err != nil {
			return nil, nil, err
		}
		warnings = append(warnings, ws...)
		for _, v := range vs {
			seen[v] = true
		}
	}
	out := slices.AppendSeq(make([]string, 0, len(seen)), maps.Keys(seen))
	slices.Sort(out)
	return out, warnings, nil
}

// metadataEntry is one metric's metadata, as Prometheus gives it.
type metadataEntry struct {
	Type string `json:"type"`
	Help string `json:"help"`
	Unit string `json:"unit"`
}

// metadata describes every metric in the store: a numeric field is a
// gauge, a string field's <field>_info series is an info metric.
func (a *API) metadata(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	limit := -1
	if s := r.FormValue("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			a.fail(w, errBadData, fmt.Errorf("parse limit %q: %w", s, err))
			return
		}
		limit = n
	}
	q, err := a.q.Querier(math.MinInt64, math.MaxInt64)
	if err != nil {
		a.fail(w, errInternal, fmt.Errorf("open querier: %w", err))
		return
	}
	defer q.Close()
	names, _, err := q.LabelValues(r.Context(), model.MetricNameLabel, nil)
	if err != nil {
		a.fail(w, errExec, err)
		return
	}
	out := map[string][]metadataEntry{}
	metric := r.FormValue("metric")
	for _, n := range names {
		if metric != "" && n != metric {
			continue
		}
		if limit >= 0 && len(out) >= limit {
			break
		}
		if strings.HasSuffix(n, "_info") {
			out[n] = []metadataEntry{{Type: "info", Help: "String field " + strings.TrimSuffix(n, "_info") + " of device messages: 1 with the string in the label value."}}
		} else {
			out[n] = []metadataEntry{{Type: "gauge", Help: "Numeric field " + n + " of device messages."}}
		}
	}
	a.respond(w, out, nil, nil)
}

// promVersion is the version buildinfo reports; Grafana reads it to choose
// the API features it uses. It is the version of the Prometheus whose query
// engine is embedded: module v0.3xx.y is Prometheus 3.xx.y.
var promVersion = func() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			var minor, patch int
			if d.Path == "github.com/prometheus/prometheus" {
				if _, err := fmt.Sscanf(d.Version, "v0.3%d.%d", &minor, &patch); err == nil {
					return fmt.Sprintf("3.%d.%d", minor, patch)
				}
			}
		}
	}
	return "3.0.0"
}()

func (a *API) buildinfo(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	a.respond(w, map[string]string{
		"version":   promVersion,
		"revision":  "",
		"branch":    "",
		"buildUser": "",
		"buildDate": "",
		"goVersion": runtime.Version(),
	}, nil, nil)
}

// index answers /api/v1/ with the API's endpoints, and any other path
// below it that no endpoint serves with a not_found error, as JSON: a
// client that mistypes a path gets an answer it can parse. The address is
// the one the engine logs for the API; it answers JSON rather than
// redirecting to the status page because the page is served elsewhere (on
// the live feed's listener, which the API cannot know behind a Service)
// or not at all (the storage tier alone), and because what asks an API's
// address is as often a program as a browser.
func (a *API) index(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/" {
		a.fail(w, errNotFound, fmt.Errorf("unknown API endpoint %s", r.URL.Path))
		return
	}
	if !a.form(w, r) {
		return
	}
	a.respond(w, map[string]any{
		"name":      "ingest",
		"api":       "Prometheus HTTP API v1 over the embedded store",
		"endpoints": apiEndpoints,
		"health":    []string{"/-/healthy", "/-/ready"},
	}, nil, nil)
}

// healthy and ready answer as Prometheus's /-/healthy and /-/ready do:
// 200 with a line of text (no body for HEAD), else a line saying why.
func (a *API) healthy(w http.ResponseWriter, r *http.Request) {
	probe(w, r, a.opts.Healthy, "Healthy", http.StatusInternalServerError)
}

func (a *API) ready(w http.ResponseWriter, r *http.Request) {
	probe(w, r, a.opts.Ready, "Ready", http.StatusServiceUnavailable)
}

func probe(w http.ResponseWriter, r *http.Request, check func() error, state string, failCode int) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if check != nil {
		if err := check(); err != nil {
			w.WriteHeader(failCode)
			if r.Method == http.MethodGet {
				fmt.Fprintf(w, "%s: %v\n", http.StatusText(failCode), err)
			}
			return
		}
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		fmt.Fprintf(w, "ingest is %s.\n", state)
	}
}

// queryExemplars checks its parameters as Prometheus does; the store keeps
// no exemplars, so the answer is always an empty list. Grafana asks it
// whether exemplars are available: a success says they are, and there are
// none to show.
func (a *API) queryExemplars(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	if _, _, err := timeRange(r); err != nil {
		a.fail(w, errBadData, err)
		return
	}
	if _, err := a.parser.ParseExpr(r.FormValue("query")); err != nil {
		a.fail(w, errBadData, fmt.Errorf("invalid parameter \"query\": %w", err))
		return
	}
	a.respond(w, []struct{}{}, nil, nil)
}

// formatQuery answers the query pretty-printed, as Prometheus does.
func (a *API) formatQuery(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	expr, err := a.parser.ParseExpr(r.FormValue("query"))
	if err != nil {
		a.fail(w, errBadData, fmt.Errorf("invalid parameter \"query\": %w", err))
		return
	}
	a.respond(w, expr.Pretty(0), nil, nil)
}

// rules answers no rule groups: the store evaluates no rules. Its
// parameters are checked as Prometheus checks them.
func (a *API) rules(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	if typ := strings.ToLower(r.FormValue("type")); typ != "" && typ != "alert" && typ != "record" {
		a.fail(w, errBadData, fmt.Errorf("invalid parameter \"type\": not supported value %q", typ))
		return
	}
	if _, err := a.matchers(r); err != nil {
		a.fail(w, errBadData, err)
		return
	}
	a.respond(w, map[string][]struct{}{"groups": {}}, nil, nil)
}

// alerts answers no alerts: the store evaluates no alerting rules.
func (a *API) alerts(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	a.respond(w, map[string][]struct{}{"alerts": {}}, nil, nil)
}

// runtimeInfo is status/runtimeinfo's answer, member for member as
// Prometheus gives it. The store has no configuration to reload: the
// last configuration is the one it started with.
type runtimeInfo struct {
	StartTime           time.Time `json:"startTime"`
	CWD                 string    `json:"CWD"`
	Hostname            string    `json:"hostname"`
	ServerTime          time.Time `json:"serverTime"`
	ReloadConfigSuccess bool      `json:"reloadConfigSuccess"`
	LastConfigTime      time.Time `json:"lastConfigTime"`
	CorruptionCount     int64     `json:"corruptionCount"`
	GoroutineCount      int       `json:"goroutineCount"`
	GOMAXPROCS          int       `json:"GOMAXPROCS"`
	GOMEMLIMIT          int64     `json:"GOMEMLIMIT"`
	GOGC                string    `json:"GOGC"`
	GODEBUG             string    `json:"GODEBUG"`
	StorageRetention    string    `json:"storageRetention"`
}

func (a *API) runtimeinfo(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	info := runtimeInfo{
		StartTime:           a.start.UTC(),
		ServerTime:          time.Now().UTC(),
		ReloadConfigSuccess: true,
		LastConfigTime:      a.start.UTC(),
		GoroutineCount:      runtime.NumGoroutine(),
		GOMAXPROCS:          runtime.GOMAXPROCS(0),
		GOMEMLIMIT:          debug.SetMemoryLimit(-1),
		GOGC:                os.Getenv("GOGC"),
		GODEBUG:             os.Getenv("GODEBUG"),
	}
	info.CWD, _ = os.Getwd()
	info.Hostname, _ = os.Hostname()
	if a.opts.Retention > 0 {
		info.StorageRetention = model.Duration(a.opts.Retention).String()
	}
	a.respond(w, &info, nil, nil)
}

func (a *API) flags(w http.ResponseWriter, r *http.Request) {
	if !a.form(w, r) {
		return
	}
	flags := a.opts.Flags
	if flags == nil {
		flags = map[string]string{}
	}
	a.respond(w, flags, nil, nil)
}

var (
	// minTime and maxTime are the bounds Prometheus uses for an open range.
	minTime = time.Unix(math.MinInt64/1000+62135596801, 0).UTC()
	maxTime = time.Unix(math.MaxInt64/1000-62135596801, 999999999).UTC()
)

func timestamp(t time.Time) int64 {
	switch {
	case t.Equal(minTime):
		return math.MinInt64
	case t.Equal(maxTime):
		return math.MaxInt64
	}
	return t.UnixMilli()
}

func parseTimeParam(r *http.Request, name string, def time.Time) (time.Time, error) {
	s := r.FormValue(name)
	if s == "" {
		return def, nil
	}
	t, err := parseTime(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse %s: %w", name, err)
	}
	return t, nil
}

// parseTime reads a time as Prometheus does: unix seconds with an optional
// fraction, or RFC 3339.
func parseTime(s string) (time.Time, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1000))*int64(time.Millisecond)).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	switch s {
	case minTime.Format(time.RFC3339Nano):
		return minTime, nil
	case maxTime.Format(time.RFC3339Nano):
		return maxTime, nil
	}
	return time.Time{}, fmt.Errorf("cannot parse %q to a valid timestamp", s)
}

// parseDuration reads a duration as Prometheus does: seconds with an
// optional fraction, or a Prometheus duration ("5m", "1h30m").
func parseDuration(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		d := f * float64(time.Second)
		// NaN passes every comparison: refused as Prometheus does.
		if math.IsNaN(d) || d >= float64(math.MaxInt64) || d <= float64(math.MinInt64) {
			return 0, fmt.Errorf("cannot parse %q to a valid duration: overflows", s)
		}
		return time.Duration(d), nil
	}
	if d, err := model.ParseDuration(s); err == nil {
		return time.Duration(d), nil
	}
	return 0, fmt.Errorf("cannot parse %q to a valid duration", s)
}
