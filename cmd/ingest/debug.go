package main

import (
	"net/http"
	"net/http/pprof"
)

// pprofHandlers are the Go runtime's profiling endpoints under
// /debug/pprof/ (go tool pprof http://host:port/debug/pprof/profile), by
// http.ServeMux pattern, when --debug.pprof is set; nil when it is not.
// They are served on every HTTP port of the process, beside /metrics:
// whoever reaches the port can profile the process, and a CPU profile or a
// trace costs CPU while it runs, so they are off by default.
func (p *process) pprofHandlers() map[string]http.Handler {
	if !p.pprof {
		return nil
	}
	return map[string]http.Handler{
		"/debug/pprof/":        http.HandlerFunc(pprof.Index), // and the named profiles: heap, allocs, goroutine, block, mutex…
		"/debug/pprof/cmdline": http.HandlerFunc(pprof.Cmdline),
		"/debug/pprof/profile": http.HandlerFunc(pprof.Profile),
		"/debug/pprof/symbol":  http.HandlerFunc(pprof.Symbol),
		"/debug/pprof/trace":   http.HandlerFunc(pprof.Trace),
	}
}

// mountPprof adds pprofHandlers to mux.
func (p *process) mountPprof(mux *http.ServeMux) {
	for pattern, h := range p.pprofHandlers() {
		mux.Handle(pattern, h)
	}
}
