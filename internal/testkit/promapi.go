package testkit

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// PromResult is the part of an answer of the Prometheus HTTP API that the
// tests read.
type PromResult struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
	Warnings  []string        `json:"warnings"`
}

// PromGet GETs path with params from the Prometheus HTTP API at base and
// decodes the answer, success or error.
func PromGet(t testing.TB, base, path string, params url.Values) PromResult {
	t.Helper()
	resp, err := http.Get(base + path + "?" + params.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r PromResult
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v: %s", path, err, b)
	}
	return r
}

// PromSample is one sample of an instant vector.
type PromSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// PromInstant runs the instant query q at the given time through the
// Prometheus HTTP API at base, and fails the test unless it answers a
// vector.
func PromInstant(t testing.TB, base, q string, at time.Time) []PromSample {
	t.Helper()
	r := PromGet(t, base, "/api/v1/query", url.Values{"query": {q}, "time": {fmt.Sprint(float64(at.UnixMilli()) / 1000)}})
	if r.Status != "success" {
		t.Fatalf("query %s: %s %s", q, r.ErrorType, r.Error)
	}
	var d struct {
		ResultType string       `json:"resultType"`
		Result     []PromSample `json:"result"`
	}
	if err := json.Unmarshal(r.Data, &d); err != nil {
		t.Fatal(err)
	}
	if d.ResultType != "vector" {
		t.Fatalf("query %s: result type %s", q, d.ResultType)
	}
	return d.Result
}

// PromScalar returns the one sample's value of an instant query, or "" if
// there is none; more than one fails the test.
func PromScalar(t testing.TB, base, q string, at time.Time) string {
	t.Helper()
	res := PromInstant(t, base, q, at)
	switch len(res) {
	case 0:
		return ""
	case 1:
		return res[0].Value[1].(string)
	}
	t.Fatalf("query %s: %d samples", q, len(res))
	return ""
}
