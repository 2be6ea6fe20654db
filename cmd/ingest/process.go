package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ingest-io/ingest/internal/bodyread"
	"github.com/ingest-io/ingest/internal/certfile"
	"github.com/ingest-io/ingest/internal/dirlock"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/metricset"
	"github.com/ingest-io/ingest/internal/probe"
	"github.com/ingest-io/ingest/status"
	"github.com/ingest-io/ingest/wal"
)

// stage orders a process's shutdown: parts of an earlier stage stop first,
// so that what a part hands on is taken by parts still running (devices
// drain into the frontend's WAL, the uplink hands that WAL to the
// middletier, the storage writer takes what the middletier holds).
type stage int

const (
	stageDevices stage = iota // the frontend: not ready, stop accepting, drain devices with a close code
	stageUplink               // the uplink: flush the frontend's WAL downstream, then stop
	stageReaders              // the live feed (readers closed with 1001) and the status page
	stageWriter               // the storage writer: catch up with the middletier, then stop
	stageRouter               // the middletier
	stageSupport              // the device registry's reloads
	stageHTTP                 // health, metrics and query endpoints: last, to be watched while the rest stop
)

// part is one running piece of a process.
type part struct {
	name  string
	stage stage
	// run runs until its context ends, and owns every goroutine it starts.
	run func(ctx context.Context) error
	// settle, if set, is called when the part's turn to stop comes, before
	// its context ends: it waits, within a deadline of its own, for what
	// the part carries to be delivered. ended is closed if run returns
	// meanwhile.
	settle func(ended <-chan struct{})
}

// process is one ingest process: its parts, stopped in stage order, and
// what they hold, released last.
type process struct {
	lg *slog.Logger
	// reg holds every collector of the process; reg.Gatherer() gathers
	// those the status page reads alone (status.Metrics).
	reg *metricset.Subset
	// stopping turns true when shutdown begins: every readiness check of
	// the process fails from then on.
	stopping atomic.Bool

	// announce is the level of the line each tier logs once built, with
	// its addresses: info for a tier alone, debug in ingest all, which
	// logs one line with every address.
	announce slog.Level

	parts   []part
	closers []closer // released in reverse order

	// tls, if set, is the certificate the listeners made by listenTLS
	// serve.
	tls *certfile.Reloader

	// pprof serves the profiling endpoints on the process's HTTP ports
	// (--debug.pprof).
	pprof bool
}

// built logs, at p.announce, that a tier is built and where it listens.
func (p *process) built(msg string, args ...any) {
	p.lg.Log(context.Background(), p.announce, msg, args...)
}

type closer struct {
	name  string
	close func() error
}

// newProcess returns a process with a fresh metrics registry holding the
// Go runtime's and the process's collectors.
func newProcess(lg *slog.Logger) *process {
	reg := metricset.NewSubset(prometheus.NewRegistry(), status.Metrics())
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &process{lg: lg, reg: reg}
}

func (p *process) add(pt part) { p.parts = append(p.parts, pt) }

// onClose registers what to release once every part has stopped, or when
// the process is not started: components first, their WALs and stores
// after them (the reverse of the order they were opened in).
func (p *process) onClose(name string, f func() error) {
	p.closers = append(p.closers, closer{name, f})
}

// close releases everything registered with onClose, in reverse order.
func (p *process) close() error {
	var errs []error
	for _, c := range slices.Backward(p.closers) {
		if err := c.close(); err != nil {
			p.lg.Error("close "+c.name, "err", err)
			errs = append(errs, fmt.Errorf("close %s: %w", c.name, err))
		}
	}
	p.closers = nil
	return errors.Join(errs...)
}

type running struct {
	part
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// run runs every part until ctx ends or a part returns by itself (a
// failure), then stops them stage by stage: an earlier stage's parts are
// settled, their contexts ended, and waited for before the next stage's.
// Then it releases what was registered with onClose. It returns what the
// parts and the releases returned.
func (p *process) run(ctx context.Context) error {
	ended := make(chan string, len(p.parts))
	rs := make([]*running, len(p.parts))
	var wg sync.WaitGroup
	for i, pt := range p.parts {
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		r := &running{part: pt, cancel: cancel, done: make(chan struct{})}
		rs[i] = r
		wg.Go(func() {
			defer close(r.done)
			r.err = pt.run(pctx)
			ended <- pt.name
		})
	}
	select {
	case <-ctx.Done():
		p.lg.Info("shutting down")
	case name := <-ended:
		p.lg.Warn("shutting down: "+name+" stopped", "err", errOf(rs, name))
	}
	p.stopping.Store(true)
	errs := p.stop(rs)
	wg.Wait()
	return errors.Join(append(errs, p.close())...)
}

func errOf(rs []*running, name string) error {
	for _, r := range rs {
		if r.name == name {
			return r.err
		}
	}
	return nil
}

// stop stops the running parts in stage order and returns their errors.
func (p *process) stop(rs []*running) []error {
	slices.SortStableFunc(rs, func(a, b *running) int { return int(a.stage) - int(b.stage) })
	var errs []error
	for i := 0; i < len(rs); {
		j := i
		for j < len(rs) && rs[j].stage == rs[i].stage {
			j++
		}
		group := rs[i:j]
		for _, r := range group {
			if r.settle != nil {
				r.settle(r.done)
			}
		}
		for _, r := range group {
			r.cancel()
		}
		for _, r := range group {
			start := time.Now()
			<-r.done
			p.lg.Debug(r.name+" stopped", "after", time.Since(start).Round(time.Millisecond))
			if r.err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.name, r.err))
			}
		}
		i = j
	}
	return errs
}

// waitFor waits until cond holds, ended is closed, or timeout passes, and
// reports whether cond held. It checks cond every 10ms: the conditions it
// waits on (a WAL's release mark) have no channel to wait on.
func waitFor(cond func() bool, timeout time.Duration, ended <-chan struct{}) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ended:
			return cond()
		case <-t.C:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// settleWAL returns a settle function that waits, up to timeout, until
// every entry of log is released downstream (or log has failed), and logs
// what stays in the WAL if it is not.
func (p *process) settleWAL(what string, log *wal.Log, timeout time.Duration) func(<-chan struct{}) {
	return func(ended <-chan struct{}) {
		start := time.Now()
		if waitFor(func() bool { return log.Released() >= log.LastIndex() || log.Err() != nil }, timeout, ended) {
			p.lg.Info(what+" flushed", "after", time.Since(start).Round(time.Millisecond))
			return
		}
		p.lg.Warn(what+" not flushed: what is left stays in the WAL for the next start",
			"timeout", timeout, "entries", log.LastIndex()-log.Released())
	}
}

// listen binds addr, the value of the flag called flag; its error names
// both: "listen 127.0.0.1:8080 (--listen): address already in use".
func listen(flag, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s (--%s): %w", addr, flag, rootCause(err))
	}
	return ln, nil
}

// rootCause is the system call's error inside err (address already in
// use), or the innermost network error, or err.
func rootCause(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Err
	}
	return err
}

// inUse turns the error of a data directory that another process holds
// into one that says so: "data/ is in use by ingest pid 1234".
func inUse(dir string, err error) error {
	var held *dirlock.HeldError
	if !errors.As(err, &held) {
		return err
	}
	if len(dir) > 0 && dir[len(dir)-1] != os.PathSeparator {
		dir += string(os.PathSeparator)
	}
	if held.PID == 0 {
		return fmt.Errorf("%s is in use by another process", dir)
	}
	return fmt.Errorf("%s is in use by ingest pid %d", dir, held.PID)
}

// httpIdleTimeout is how long serveHTTP's servers keep a client's
// connection open between two requests, as the frontend's and the feed's
// do.
var httpIdleTimeout = time.Minute

// serveHTTP adds a part that serves h on ln at stageHTTP: it stops
// accepting when its context ends and gives requests in flight up to grace.
// Then it closes their connections, which ends their contexts, and returns
// once every handler has returned: none may still read what the process
// releases after its parts (a query, the embedded TSDB that onClose closes).
func (p *process) serveHTTP(name string, ln net.Listener, h http.Handler, grace time.Duration) {
	// A body (a query's form, say) is read within 10 s of its handler's
	// start, as the headers within 5 s.
	// An idle keep-alive connection is closed after httpIdleTimeout:
	// without an IdleTimeout (nor a ReadTimeout) net/http keeps it for as
	// long as the client likes.
	var handlers lifecycle.Handlers
	hs := &http.Server{Handler: handlers.Wrap(bodyread.Bound(h, 10*time.Second)), ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout: httpIdleTimeout, ErrorLog: slog.NewLogLogger(p.lg.Handler(), slog.LevelDebug)}
	p.onClose(name, func() error { return closeListener(ln) })
	p.add(part{name: name, stage: stageHTTP, run: func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- hs.Serve(ln) }()
		select {
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		hs.Shutdown(sctx)
		hs.Close()
		<-errc
		handlers.End()
		return nil
	}})
}

// closeListener closes ln unless it is closed already (by the server that
// served it).
func closeListener(ln net.Listener) error {
	if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// health serves /healthz (ok while healthy returns nil, else unhealthy, an
// HTTP status) and /readyz (ready while ready returns nil and the process
// is not stopping).
func (p *process) health(mux *http.ServeMux, unhealthy int, healthy, ready func() error) {
	probe.Mount(mux, probe.Options{Healthy: healthy, Unhealthy: unhealthy,
		Ready: func() bool { return !p.stopping.Load() && ready() == nil }})
}
