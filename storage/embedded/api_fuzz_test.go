package embedded

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/storage"
)

// FuzzParseTime: a time parameter either fails or gives a time: unix
// seconds to the millisecond, RFC 3339 as written.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"1700000000", "1700000000.123", "-1.5", "4", "2025-06-01T12:00:00Z",
		"2025-06-01T12:00:00.123456789+02:00", minTime.Format(time.RFC3339Nano), maxTime.Format(time.RFC3339Nano),
		"NaN", "Inf", "1e300", "yesterday", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseTime(s)
		if err != nil {
			return
		}
		if fl, ferr := strconv.ParseFloat(s, 64); ferr == nil {
			if math.Abs(fl) < 1e12 {
				if ms := float64(got.UnixMilli()); math.Abs(ms-fl*1000) > 1 {
					t.Fatalf("%q: %v (%v ms), want %v s to the millisecond", s, got, ms, fl)
				}
			}
			return
		}
		if got.Year() >= 0 && got.Year() <= 9999 {
			again, err := parseTime(got.Format(time.RFC3339Nano))
			if err != nil || !again.Equal(got) {
				t.Fatalf("%q: %v, which parses back as %v (%v)", s, got, again, err)
			}
		}
	})
}

// FuzzParseDuration: a duration parameter either fails or gives a
// duration: seconds as written, or a Prometheus duration, which is never
// negative.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"5", "0.25", "-1", "30s", "5m", "1h30m", "1y", "1e300", "NaN", "", "5x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseDuration(s)
		if err != nil {
			return
		}
		if fl, ferr := strconv.ParseFloat(s, 64); ferr == nil {
			if want := fl * float64(time.Second); math.Abs(float64(got)-want) > math.Max(1, math.Abs(want)*1e-9) {
				t.Fatalf("%q: %v, want %v s", s, got, fl)
			}
			return
		}
		if got < 0 {
			t.Fatalf("%q: negative %v", s, got)
		}
	})
}

// apiPaths are the paths FuzzAPI asks, by index.
var apiPaths = []string{
	"/api/v1/query", "/api/v1/query_range", "/api/v1/query_exemplars", "/api/v1/format_query",
	"/api/v1/series", "/api/v1/labels", "/api/v1/label/device/values", "/api/v1/label/U__a_2e_b/values",
	"/api/v1/metadata", "/api/v1/rules", "/api/v1/alerts", "/api/v1/status/buildinfo",
	"/api/v1/status/runtimeinfo", "/api/v1/status/flags", "/api/v1/", "/api/v1/nothing",
}

// FuzzAPI asks the query API with any parameters, in the query string or
// as a POST form, and checks that every answer below /api/v1/ is JSON in
// Prometheus's shape: success with 200, or an error whose type goes with
// its status code as Prometheus's do.
func FuzzAPI(f *testing.F) {
	db, err := Open(Options{Dir: f.TempDir()}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	t0 := time.Unix(1_700_000_000, 0)
	if err := db.Write(context.Background(), []storage.Point{
		{Device: "dev-1", Time: t0, Numbers: map[string]float64{"temp": 1}, Strings: map[string]string{"door": "open"}, Labels: map[string]string{"site": "x"}},
		{Device: "dev-1", Time: t0.Add(10 * time.Second), Numbers: map[string]float64{"temp": 2}, Labels: map[string]string{"site": "x"}},
	}); err != nil {
		f.Fatal(err)
	}
	api := NewAPI(db.DB(), APIOptions{Timeout: time.Second, MaxSamples: 100_000}, nil, nil)
	codes := map[string]int{errBadData: 400, errExec: 422, errTimeout: 503, errCanceled: 503, errInternal: 500, errNotFound: 404, errNotAllows: 405}

	for _, c := range []struct {
		path uint8
		post bool
		q    string
	}{
		{0, true, "query=1%2B1&time=4"},
		{0, false, "query=temp&time=1700000010"},
		{1, true, "query=temp&start=1700000000&end=1700000010&step=5&timeout=30s"},
		{1, false, "query=temp&start=10&end=5&step=1"},
		{2, false, "query=test&start=1700000000000&end=1700000010000"},
		{3, true, "query=sum(+temp+)by(site)"},
		{4, true, "match[]=door_info&start=1700000000&end=1700000100&limit=40000"},
		{5, true, "match[]=%7B__name__%3D%22temp%22%7D&limit=1"},
		{6, false, "match[]=temp"},
		{8, false, "limit=40000&metric=temp"},
		{9, false, "type=alert&match[]=%7B"},
		{15, false, ""},
	} {
		f.Add(c.path, c.post, c.q)
	}
	f.Fuzz(func(t *testing.T, path uint8, post bool, q string) {
		p := apiPaths[int(path)%len(apiPaths)]
		var r *http.Request
		if post {
			r = httptest.NewRequest(http.MethodPost, p, strings.NewReader(q))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		} else {
			r = httptest.NewRequest(http.MethodGet, p, nil)
			r.URL.RawQuery = q
		}
		w := httptest.NewRecorder()
		api.ServeHTTP(w, r)
		var res struct {
			Status    string          `json:"status"`
			ErrorType string          `json:"errorType"`
			Error     string          `json:"error"`
			Data      json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%s %s: %d %q %q: not JSON (%v)", r.Method, p, w.Code, w.Header().Get("Content-Type"), w.Body.Bytes(), err)
		}
		switch res.Status {
		case "success":
			if w.Code != http.StatusOK || res.Data == nil {
				t.Fatalf("%s %s?%s: success with %d, data %s", r.Method, p, q, w.Code, res.Data)
			}
		case "error":
			if want, ok := codes[res.ErrorType]; !ok || w.Code != want || res.Error == "" {
				t.Fatalf("%s %s?%s: %d error %q %q", r.Method, p, q, w.Code, res.ErrorType, res.Error)
			}
		default:
			t.Fatalf("%s %s?%s: %d status %q", r.Method, p, q, w.Code, res.Status)
		}
	})
}
