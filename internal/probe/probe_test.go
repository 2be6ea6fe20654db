package probe_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/probe"
)

// TestMount: /healthz and /readyz follow Healthy and Ready as they change,
// /metrics serves the Gatherer's metrics, and other methods are refused.
func TestMount(t *testing.T) {
	var failed atomic.Pointer[error]
	var ready atomic.Bool
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "probe_test_total", Help: "a counter"}))
	mux := http.NewServeMux()
	probe.Mount(mux, probe.Options{
		Healthy: func() error {
			if err := failed.Load(); err != nil {
				return *err
			}
			return nil
		},
		Unhealthy: http.StatusInternalServerError,
		Ready:     ready.Load,
		Gatherer:  reg,
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	check := func(method, path string, code int, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != code || !strings.Contains(string(b), body) {
			t.Fatalf("%s %s: %d %q, want %d and %q", method, path, resp.StatusCode, b, code, body)
		}
	}
	check("GET", "/healthz", 200, "ok\n")
	check("GET", "/readyz", 503, "not ready")
	ready.Store(true)
	check("GET", "/readyz", 200, "ready\n")
	err := errors.New("wal failed: disk gone")
	failed.Store(&err)
	check("GET", "/healthz", 500, "wal failed: disk gone")
	check("GET", "/metrics", 200, "probe_test_total 0")
	check("POST", "/healthz", 405, "")

	// Without Healthy, Ready or a Gatherer: healthy, ready, no /metrics.
	bare := http.NewServeMux()
	probe.Mount(bare, probe.Options{})
	srv2 := httptest.NewServer(bare)
	defer srv2.Close()
	for path, code := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 404} {
		resp, err := http.Get(srv2.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Fatalf("bare %s: %d, want %d", path, resp.StatusCode, code)
		}
	}
}
