//go:build !nostorage

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

// runStorage runs a storage writer into the embedded TSDB and serves the
// Prometheus query API, until SIGTERM: then it marks itself not ready,
// stops following the middletiers (sending each its last checkpoint),
// stops serving and closes the TSDB last.
func runStorage(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("storage", flag.ContinueOnError)
	d := storage.DefaultOptions()
	td := embedded.DefaultOptions()
	ad := embedded.DefaultAPIOptions()
	var (
		dataDir   = fs.String("data.dir", "", "directory of the embedded TSDB (required)")
		streams   = fs.String("middletiers.stream", "tcp://127.0.0.1:5557", "comma-separated stream (PUB) endpoints of the middletiers to follow")
		consumers = fs.String("middletiers.consumer", "tcp://127.0.0.1:5556", "comma-separated consumer (ROUTER) endpoints of the same middletiers, in the same order")
		consumer  = fs.String("consumer", d.Consumer, "consumer name the checkpoint is kept under at the middletiers (name it in their --consumers)")
		regFile   = fs.String("registry.file", "", "device registry (YAML or CSV) whose labels go on every series of a device; reloaded on change (none if empty)")
		retention = fs.Duration("tsdb.retention", td.Retention, "how long samples are kept")
		ooo       = fs.Duration("tsdb.out-of-order-window", td.OutOfOrderWindow, "how far behind the newest sample late samples are still accepted")
		maxStr    = fs.Int("tsdb.max-string-bytes", td.MaxStringBytes, "longer string field values are dropped and counted")
		maxSeries = fs.Int("max-series-per-device", storage.DefaultLimitOptions().MaxSeriesPerDevice, "most series a device has (seen within one to two hours); fields that would make more are dropped and counted")
		batch     = fs.Int("max-batch", d.MaxBatch, "most records in one write to the TSDB")
		qTimeout  = fs.Duration("query.timeout", ad.Timeout, "bound on one query")
		httpAddr  = fs.String("http.listen", ":9090", "address of the Prometheus query API (/api/v1/..., /-/healthy, /-/ready), /metrics, /healthz and /readyz")
		logLevel  = fs.String("log.level", "info", "log level: debug, info, warn, error")
		logFormat = fs.String("log.format", "text", "log format: text or json")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	lg, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *dataDir == "" {
		return errors.New("--data.dir (INGEST_DATA_DIR) is required")
	}
	st, co := splitList(*streams), splitList(*consumers)
	if len(st) == 0 || len(st) != len(co) {
		return fmt.Errorf("--middletiers.stream has %d endpoints and --middletiers.consumer %d: give one of each per middletier", len(st), len(co))
	}
	opts := storage.Options{Consumer: *consumer, MaxBatch: *batch}
	for i := range st {
		opts.Middletiers = append(opts.Middletiers, storage.Endpoints{Stream: st[i], Consumer: co[i]})
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	devices, err := registry.New(*regFile, reg, lg)
	if err != nil {
		return err
	}
	opts.Labels = func(id string) map[string]string {
		if d, ok := devices.Lookup(id); ok {
			return d.AllLabels()
		}
		return nil
	}
	db, err := embedded.Open(embedded.Options{Dir: *dataDir, Retention: *retention, OutOfOrderWindow: *ooo, MaxStringBytes: *maxStr}, reg, lg)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := db.Close(); cerr != nil {
			lg.Error("close tsdb", "err", cerr)
		}
	}()
	lim, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: *maxSeries}, reg, lg)
	if err != nil {
		return err
	}
	sub, err := storage.New(opts, lim.Sink(db), reg, lg)
	if err != nil {
		return err
	}

	var stopping atomic.Bool
	// A failed fsync of the TSDB's write logs stops its writes for good;
	// only a restart recovers (the middletiers keep what was not
	// committed), so the writer reports itself dead.
	healthy := func() error {
		if err := db.Failed(); err != nil {
			return fmt.Errorf("tsdb failed: %w", err)
		}
		return nil
	}
	// Ready once every middletier has been caught up with: before, the
	// store answers queries with a hole in recent data.
	ready := func() error {
		if stopping.Load() || !sub.CaughtUp() || db.Failed() != nil {
			return errors.New("not ready")
		}
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/", embedded.NewAPI(db.DB(), embedded.APIOptions{Timeout: *qTimeout, Healthy: healthy, Ready: ready,
		Retention: *retention, Flags: flagValues(fs)}, reg, lg))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("listen http: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	defer hs.Close()

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := devices.Run(runCtx); err != nil {
			lg.Error("registry stopped", "err", err)
		}
	})
	subErr := make(chan error, 1)
	wg.Go(func() { subErr <- sub.Run(runCtx) })

	lg.Info("storage listening", "http", ln.Addr().String(), "query_api", "http://"+ln.Addr().String()+"/api/v1/",
		"middletiers", len(opts.Middletiers), "consumer", opts.Consumer, "data_dir", *dataDir)
	start := time.Now()
	select {
	case <-ctx.Done():
	case err = <-subErr:
		subErr <- err
	}
	stopping.Store(true)
	stopRun()
	wg.Wait()
	err = <-subErr
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	lg.Info("storage stopped", "after", time.Since(start).Round(time.Millisecond))
	return err
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// flagValues are the flags of fs and their values (given or default), for
// the query API's status/flags.
func flagValues(fs *flag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { m[f.Name] = f.Value.String() })
	return m
}
