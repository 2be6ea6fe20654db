// Package probe serves what every HTTP server of the engine serves beside
// its own paths: /healthz, /readyz and, with a registry, /metrics.
package probe

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options say what the probes report. Zero fields take their defaults.
type Options struct {
	// Healthy says why the process is not healthy, or nil; nil: always
	// healthy. /healthz answers "ok", or the error with status Unhealthy.
	Healthy func() error
	// Unhealthy is /healthz's status when Healthy fails. Default 503.
	Unhealthy int
	// Ready reports whether the server takes work. nil: always.
	// /readyz answers "ready", or 503 "not ready".
	Ready func() bool
	// Gatherer, when set, is served on /metrics.
	Gatherer prometheus.Gatherer
}

// Mount serves the probes on mux.
func Mount(mux *http.ServeMux, o Options) {
	if o.Unhealthy == 0 {
		o.Unhealthy = http.StatusServiceUnavailable
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if o.Healthy != nil {
			if err := o.Healthy(); err != nil {
				http.Error(w, err.Error(), o.Unhealthy)
				return
			}
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if o.Ready != nil && !o.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	if o.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	}
}
