//go:build !nostorage

package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

// queryDrain is how long queries in flight may take to finish at shutdown
// (deploy/k8s's grace periods count on it).
const queryDrain = 5 * time.Second

// storageConfig is a storage writer: a durable consumer of middletiers'
// streams writing into the embedded TSDB, and the Prometheus query API
// over it.
type storageConfig struct {
	dataDir, streams, consumers, consumer string
	retention, ooo, queryTimeout          time.Duration
	maxString, maxBatch, maxSeries        int
	httpListen                            string
	f                                     flags

	dataShown string              // named when another process holds the directory; empty: dataDir
	direct    []storage.Endpoints // ingest all: the middletier to follow, instead of the flags
	settle    func(ended <-chan struct{})

	// selfMonitor writes the process's metrics into the TSDB; nil: never.
	selfMonitor *selfMonitorConfig
}

func newStorageConfig() storageConfig {
	d, td, ad := storage.DefaultOptions(), embedded.DefaultOptions(), embedded.DefaultAPIOptions()
	return storageConfig{streams: "tcp://127.0.0.1:5557", consumers: "tcp://127.0.0.1:5556", consumer: d.Consumer,
		retention: td.Retention, ooo: td.OutOfOrderWindow, maxString: td.MaxStringBytes, maxBatch: d.MaxBatch,
		maxSeries:    storage.DefaultLimitOptions().MaxSeriesPerDevice,
		queryTimeout: ad.Timeout, httpListen: ":9090"}
}

func (c *storageConfig) register(f flags) {
	c.f = f
	f.str(&c.dataDir, "data.dir", "directory of the embedded TSDB (required)")
	f.str(&c.streams, "middletiers.stream", "comma-separated stream (PUB) endpoints of the middletiers to follow")
	f.str(&c.consumers, "middletiers.consumer", "comma-separated consumer (ROUTER) endpoints of the same middletiers, in the same order")
	f.str(&c.consumer, "consumer", "consumer name the checkpoint is kept under at the middletiers (name it in their --consumers)")
	f.duration(&c.retention, "tsdb.retention", "how long samples are kept")
	f.duration(&c.ooo, "tsdb.out-of-order-window", "how far behind the newest sample late samples are still accepted")
	f.integer(&c.maxString, "tsdb.max-string-bytes", "longer string field values are dropped and counted")
	f.integer(&c.maxSeries, "max-series-per-device", "most series a device has (seen within one to two hours); fields that would make more are dropped and counted")
	f.integer(&c.maxBatch, "max-batch", "most records in one write to the TSDB")
	f.duration(&c.queryTimeout, "query.timeout", "bound on one query")
	f.str(&c.httpListen, "http.listen", "address of the Prometheus query API (/api/v1/..., /-/healthy, /-/ready), /metrics, /healthz and /readyz")
}

// endpoints are the middletiers to follow.
func (c *storageConfig) endpoints() ([]storage.Endpoints, error) {
	if c.direct != nil {
		return c.direct, nil
	}
	st, co := splitList(c.streams), splitList(c.consumers)
	if len(st) == 0 || len(st) != len(co) {
		return nil, fmt.Errorf("--%s has %d endpoints and --%s %d: give one of each per middletier",
			c.f.name("middletiers.stream"), len(st), c.f.name("middletiers.consumer"), len(co))
	}
	var eps []storage.Endpoints
	for i := range st {
		eps = append(eps, storage.Endpoints{Stream: st[i], Consumer: co[i]})
	}
	return eps, nil
}

// build opens the TSDB and builds the writer and the query API as parts
// of p. devices labels the series; flags are what status/flags reports.
func (c *storageConfig) build(p *process, devices *registry.Registry, flags map[string]string) (queryAddr string, err error) {
	if c.dataDir == "" {
		return "", c.f.required("data.dir")
	}
	eps, err := c.endpoints()
	if err != nil {
		return "", err
	}
	db, err := embedded.Open(embedded.Options{Dir: c.dataDir, Retention: c.retention, OutOfOrderWindow: c.ooo, MaxStringBytes: c.maxString}, p.reg, p.lg)
	if err != nil {
		return "", inUse(firstOf(c.dataShown, c.dataDir), err)
	}
	lim, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: c.maxSeries}, p.reg, p.lg)
	if err != nil {
		db.Close()
		return "", err
	}
	sink := lim.Sink(db)
	p.onClose("tsdb", sink.Close) // closes db, and unregisters the limiter's metrics
	w, err := storage.New(storage.Options{Consumer: c.consumer, MaxBatch: c.maxBatch, Middletiers: eps,
		Labels: func(id string) map[string]string {
			if d, ok := devices.Lookup(id); ok {
				return d.AllLabels()
			}
			return nil
		}}, sink, p.reg, p.lg)
	if err != nil {
		return "", err
	}
	p.onClose("storage writer", w.Close)
	p.add(part{name: "storage writer", stage: stageWriter, run: w.Run, settle: c.settle})

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
		if p.stopping.Load() || !w.CaughtUp() || db.Failed() != nil {
			return errors.New("not ready")
		}
		return nil
	}
	ln, err := p.listenTLS(c.f.name("http.listen"), c.httpListen, "http/1.1")
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.Handle("/", embedded.NewAPI(db.DB(), embedded.APIOptions{Timeout: c.queryTimeout, Healthy: healthy, Ready: ready,
		Retention: c.retention, Flags: flags}, p.reg, p.lg))
	mux.Handle("/metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{Registry: p.reg}))
	p.health(mux, http.StatusInternalServerError, healthy, ready)
	p.serveHTTP("query api", ln, mux, queryDrain)
	if c.selfMonitor != nil {
		if err := c.selfMonitor.build(p, db, ln.Addr().String()); err != nil {
			return "", err
		}
	}
	p.built("storage listening", "http", ln.Addr().String(), "query_api", p.scheme("http")+"://"+ln.Addr().String()+"/api/v1/",
		"middletiers", len(eps), "consumer", c.consumer, "data_dir", c.dataDir)
	return ln.Addr().String(), nil
}

// runStorage runs a storage writer into the embedded TSDB and serves the
// Prometheus query API, until SIGTERM: then it marks itself not ready,
// stops following the middletiers (sending each its last checkpoint),
// stops serving and closes the TSDB last.
func runStorage(ctx context.Context, args []string) error {
	var (
		c  = newStorageConfig()
		rc registryConfig
		tc tlsConfig
		sm = newSelfMonitorConfig()
		lc = newLogConfig()
		f  = newFlags("storage")
	)
	c.register(f)
	sm.register(f)
	c.selfMonitor = &sm
	rc.register(f, "whose labels go on every series of a device")
	tc.register(f, "--http.listen (the query API, health and metrics)")
	lc.register(f)
	return runTier(ctx, f, args, &lc, func(p *process) error {
		if err := tc.build(p); err != nil {
			return err
		}
		devices, err := rc.build(p)
		if err != nil {
			return err
		}
		_, err = c.build(p, devices, flagValues(f.fs))
		return err
	})
}
