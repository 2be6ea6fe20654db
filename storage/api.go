package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
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
	promstorage "github.com/prometheus/prometheus/storage"
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
}

// DefaultAPIOptions returns the defaults that zero fields stand for.
func DefaultAPIOptions() APIOptions {
	return APIOptions{Timeout: 2 * time.Minute, MaxSamples: 50_000_000, LookbackDelta: 5 * time.Minute, MaxSeries: 100_000}
}

// API serves, over a Queryable, the part of the Prometheus HTTP API that
// Grafana's Prometheus data source and promtool use, in Prometheus's JSON
// format, for GET and for POST forms:
//
//	/api/v1/query  /api/v1/query_range  /api/v1/series  /api/v1/labels
//	/api/v1/label/<name>/values  /api/v1/metadata  /api/v1/status/buildinfo
type API struct {
	q      promstorage.Queryable
	opts   APIOptions
	engine *promql.Engine
	parser parser.Parser
	lg     *slog.Logger
	mux    *http.ServeMux
}

// NewAPI returns the query API over q. reg and lg may be nil; the PromQL
// engine's metrics (prometheus_engine_*) go to reg.
func NewAPI(q promstorage.Queryable, opts APIOptions, reg prometheus.Registerer, lg *slog.Logger) *API {
	d := DefaultAPIOptions()
	if opts.Timeout <= 0 {
		opts.Timeout = d.Timeout
	}
	if opts.MaxSamples <= 0 {
		opts.MaxSamples = d.MaxSamples
	}
	if opts.LookbackDelta <= 0 {
		opts.LookbackDelta = d.LookbackDelta
	}
	if opts.MaxSeries <= 0 {
		opts.MaxSeries = d.MaxSeries
	}
	p := parser.NewParser(parser.Options{})
	elg := lg
	if elg == nil {
		elg = slog.New(slog.DiscardHandler)
	}
	a := &API{
		q: q, opts: opts, parser: p, lg: lg,
		engine: promql.NewEngine(promql.EngineOpts{
			Logger: elg, Reg: reg, MaxSamples: opts.MaxSamples, Timeout: opts.Timeout,
			LookbackDelta: opts.LookbackDelta, EnableAtModifier: true, EnableNegativeOffset: true,
			Parser: p,
		}),
		mux: http.NewServeMux(),
	}
	a.mux.HandleFunc("/api/v1/query", a.query)
	a.mux.HandleFunc("/api/v1/query_range", a.queryRange)
	a.mux.HandleFunc("/api/v1/series", a.series)
	a.mux.HandleFunc("/api/v1/labels", a.labelNames)
	a.mux.HandleFunc("/api/v1/label/{name}/values", a.labelValues)
	a.mux.HandleFunc("/api/v1/metadata", a.metadata)
	a.mux.HandleFunc("/api/v1/status/buildinfo", a.buildinfo)
	return a
}

// ServeHTTP serves the API's paths; others are 404.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Prometheus's error types, and the status codes it answers them with.
const (
	errBadData   = "bad_data"
	errExec      = "execution"
	errTimeout   = "timeout"
	errCanceled  = "canceled"
	errInternal  = "internal"
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
	ctx, cancel, err := a.queryContext(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return
	}
	defer cancel()
	qry, err := a.engine.NewInstantQuery(ctx, a.q, a.queryOpts(r), r.FormValue("query"), ts)
	if err != nil {
		a.fail(w, errBadData, fmt.Errorf("parse query: %w", err))
		return
	}
	a.exec(w, ctx, qry)
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
	// As Prometheus: at most 11,000 points per series.
	if end.Sub(start)/step > 11000 {
		a.fail(w, errBadData, errors.New("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"))
		return
	}
	ctx, cancel, err := a.queryContext(r)
	if err != nil {
		a.fail(w, errBadData, err)
		return
	}
	defer cancel()
	qry, err := a.engine.NewRangeQuery(ctx, a.q, a.queryOpts(r), r.FormValue("query"), start, end, step)
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
		c, cancel := context.WithTimeout(ctx, d)
		return c, cancel, nil
	}
	return ctx, func() {}, nil
}

func (a *API) queryOpts(r *http.Request) promql.QueryOpts {
	lookback := time.Duration(0)
	if s := r.FormValue("lookback_delta"); s != "" {
		if d, err := parseDuration(s); err == nil && d > 0 {
			lookback = d
		}
	}
	return promql.NewPrometheusQueryOpts(false, lookback, nil)
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

// matchers parses the match[] selectors.
func (a *API) matchers(r *http.Request) ([][]*labels.Matcher, error) {
	var sets [][]*labels.Matcher
	for _, s := range r.Form["match[]"] {
		ms, err := a.parser.ParseMetricSelector(s)
		if err != nil {
			return nil, fmt.Errorf("parse match[] %q: %w", s, err)
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
	names, warnings, err := collect(sets, func(ms []*labels.Matcher) ([]string, []string, error) {
		v, ws, err := q.LabelNames(r.Context(), &promstorage.LabelHints{Limit: limit + 1}, ms...)
		s, _ := ws.AsStrings("", 10, 0)
		return v, s, err
	})
	if err != nil {
		a.fail(w, errExec, err)
		return
	}
	if len(names) > limit {
		names = names[:limit]
		warnings = append(warnings, "results truncated due to limit")
	}
	a.respond(w, names, warnings, nil)
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
	values, warnings, err := collect(sets, func(ms []*labels.Matcher) ([]string, []string, error) {
		v, ws, err := q.LabelValues(r.Context(), name, &promstorage.LabelHints{Limit: limit + 1}, ms...)
		s, _ := ws.AsStrings("", 10, 0)
		return v, s, err
	})
	if err != nil {
		a.fail(w, errExec, err)
		return
	}
	if len(values) > limit {
		values = values[:limit]
		warnings = append(warnings, "results truncated due to limit")
	}
	a.respond(w, values, warnings, nil)
}

// collect runs get for each matcher set (once with none if there are
// none) and returns the sorted union.
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
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
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
		if d >= float64(math.MaxInt64) || d <= float64(math.MinInt64) {
			return 0, fmt.Errorf("cannot parse %q to a valid duration: overflows", s)
		}
		return time.Duration(d), nil
	}
	if d, err := model.ParseDuration(s); err == nil {
		return time.Duration(d), nil
	}
	return 0, fmt.Errorf("cannot parse %q to a valid duration", s)
}
