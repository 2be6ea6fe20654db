//go:build !nostorage

package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

// queryDrain is how long queries in flight may take to finish at shutdown
// (deploy/k8s's grace periods count on it).
const queryDrain = 5 * time.Second

// storageConfig is a storage writer: durable consumers of middletiers'
// streams, one per sink (the embedded TSDB, remote-write, InfluxDB line
// protocol), and the Prometheus query API over the embedded TSDB.
type storageConfig struct {
	dataDir, streams, consumers, consumer       string
	group, member                               string
	retention, ooo, blockDuration, queryTimeout time.Duration
	maxString, maxBatch, maxSeries, maxSamples  int
	linger                                      time.Duration
	httpListen                                  string
	sinks                                       sinkFlag
	sinkName                                    string // --sink's name: ingest all has it unprefixed
	f                                           flags

	dataShown string              // named when another process holds the directory; empty: dataDir
	direct    []storage.Endpoints // ingest all: the middletier to follow, instead of the flags
	settle    func(ended <-chan struct{})

	// selfMonitor writes the process's metrics into the TSDB; nil: never.
	selfMonitor *selfMonitorConfig
}

func newStorageConfig() storageConfig {
	d, td, ad := storage.DefaultOptions(), embedded.DefaultOptions(), embedded.DefaultAPIOptions()
	return storageConfig{streams: "tcp://127.0.0.1:5557", consumers: "tcp://127.0.0.1:5556", consumer: d.Consumer,
		retention: td.Retention, ooo: td.OutOfOrderWindow, blockDuration: td.BlockDuration, maxString: td.MaxStringBytes, maxBatch: d.MaxBatch, linger: d.Linger,
		maxSeries:    storage.DefaultLimitOptions().MaxSeriesPerDevice,
		queryTimeout: ad.Timeout, maxSamples: ad.MaxSamples, httpListen: ":9090", sinks: sinkFlag{values: []string{"embedded"}}}
}

func (c *storageConfig) register(f flags) {
	c.f = f
	f.value(&c.sinks, "sink", sinkUsage())
	c.sinkName = f.name("sink")
	f.str(&c.dataDir, "data.dir", "directory of the embedded TSDB (required with the embedded sink)")
	f.str(&c.streams, "middletiers.stream", "comma-separated stream (PUB) endpoints of the middletiers to follow")
	f.str(&c.consumers, "middletiers.consumer", "comma-separated consumer (ROUTER) endpoints of the same middletiers, in the same order")
	f.str(&c.consumer, "consumer", "consumer name the checkpoint is kept under at the middletiers (name it in their --consumers); with several sinks, each keeps its own as <consumer>-<sink name>")
	f.str(&c.group, "group", "writer group: the writers that share it divide the middletiers' streams, each followed by one of them at a time, "+
		"and the group's checkpoint is kept under its name instead of --consumer (name it in the middletiers' --consumers; list the middletiers in the same order in every writer). "+
		"Empty: this writer follows every middletier")
	f.str(&c.member, "group.member", "this writer's name in its group, unique among its writers (default: the host name and a random suffix)")
	f.duration(&c.retention, "tsdb.retention", "how long samples are kept")
	f.duration(&c.ooo, "tsdb.out-of-order-window", "how far behind the newest sample late samples are still accepted")
	f.duration(&c.blockDuration, "tsdb.block-duration", "span of the blocks cut from the TSDB's in-memory head; the head holds up to 1.5× this, so memory grows for that long after a start, then levels off (at least 1m)")
	f.integer(&c.maxString, "tsdb.max-string-bytes", "longer string field values are dropped and counted")
	f.integer(&c.maxSeries, "max-series-per-device", "most series a device has (seen within one to two hours); fields that would make more are dropped and counted")
	f.integer(&c.maxBatch, "max-batch", "most records in one write to the TSDB")
	f.duration(&c.linger, "linger", "how long records are gathered after the first of a batch before they are written: one write, fsync and checkpoint per linger at a low rate, for up to that much more delay before they are queryable (0: write what has arrived at once)")
	f.duration(&c.queryTimeout, "query.timeout", "bound on one query")
	f.integer(&c.maxSamples, "query.max-samples", "most samples one query may hold in memory, as Prometheus's --query.max-samples: a query over it fails (422)")
	f.str(&c.httpListen, "http.listen", "address of the Prometheus query API (/api/v1/..., /-/healthy, /-/ready), /metrics, /healthz and /readyz")
}

// endpoints are the middletiers to follow.
func (c *storageConfig) endpoints() ([]storage.Endpoints, error) {
	if c.direct != nil {
		return c.direct, nil
	}
	st, co, err := endpointLists(c.f, "middletiers.stream", c.streams, "middletiers.consumer", c.consumers)
	if err != nil {
		return nil, err
	}
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

// build builds a writer per sink (the embedded TSDB, an external store),
// each with its own checkpoint, and the HTTP endpoints (the Prometheus
// query API when the embedded TSDB is a sink) as parts of p. devices
// labels the series; flags are what status/flags reports. queryAddr is the
// address of the HTTP endpoints.
func (c *storageConfig) build(p *process, devices *registry.Registry, flags map[string]string) (queryAddr string, err error) {
	specs, err := parseSinks(c.sinks.values)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", c.sinkName, err)
	}
	eps, err := c.endpoints()
	if err != nil {
		return "", err
	}
	var db *embedded.TSDB
	var writers []*storage.Writer
	var names []string
	if c.group != "" && c.member == "" {
		c.member = c.memberName()
	}
	for i := range specs {
		sp := &specs[i]
		var sink storage.Sink
		if sp.kind == "embedded" {
			if c.dataDir == "" {
				return "", c.f.required("data.dir")
			}
			db, err = embedded.Open(embedded.Options{Dir: c.dataDir, Retention: c.retention, OutOfOrderWindow: c.ooo, MaxStringBytes: c.maxString, BlockDuration: c.blockDuration}, p.reg, p.lg)
			if err != nil {
				return "", inUse(firstOf(c.dataShown, c.dataDir), err)
			}
			sink = db
		} else if sink, err = sp.newExternalSink(p, c.maxString); err != nil {
			return "", fmt.Errorf("--%s: %w", c.sinkName, err)
		}
		// The first writer's settle waits until the middletier has released
		// everything, which is when every writer has stored it.
		settle := c.settle
		if len(writers) > 0 {
			settle = nil
		}
		w, err := c.writer(p, sp, len(specs), sink, eps, devices, settle)
		if err != nil {
			return "", err
		}
		writers = append(writers, w)
		names = append(names, sp.name+"="+sp.consumer(c.base(), len(specs)))
	}
	healthy, ready := c.checks(p, db, writers)
	ln, err := p.listenTLS(c.f.name("http.listen"), c.httpListen, "http/1.1")
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	if db != nil {
		mux.Handle("/", embedded.NewAPI(db.DB(), embedded.APIOptions{Timeout: c.queryTimeout, MaxSamples: c.maxSamples, Healthy: healthy, Ready: ready,
			Retention: c.retention, Flags: flags}, p.reg, p.lg))
	}
	mux.Handle("/metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{Registry: p.reg}))
	p.health(mux, http.StatusInternalServerError, healthy, ready)
	p.mountPprof(mux)
	p.serveHTTP("query api", ln, mux, queryDrain)
	if c.selfMonitor != nil && db != nil {
		if err := c.selfMonitor.build(p, db, ln.Addr().String()); err != nil {
			return "", err
		}
	}
	args := []any{"http", ln.Addr().String(), "middletiers", len(eps), "sinks", strings.Join(names, ",")}
	if c.group != "" {
		args = append(args, "group", c.group, "member", c.member)
	}
	if db != nil {
		args = append(args, "query_api", p.scheme("http")+"://"+ln.Addr().String()+"/api/v1/", "data_dir", c.dataDir)
	}
	p.built("storage listening", args...)
	return ln.Addr().String(), nil
}

// writer builds the writer of one sink as a part of p, its metrics
// labelled with the sink's name, behind a Limiter of its own.
func (c *storageConfig) writer(p *process, sp *sinkSpec, sinks int, sink storage.Sink, eps []storage.Endpoints,
	devices *registry.Registry, settle func(<-chan struct{})) (*storage.Writer, error) {
	reg := prometheus.WrapRegistererWith(prometheus.Labels{"sink": sp.name}, p.reg)
	lim, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: c.maxSeries}, reg, p.lg)
	if err != nil {
		sink.Close()
		return nil, err
	}
	ls := lim.Sink(sink)
	p.onClose("sink "+sp.name, ls.Close) // closes the sink, and unregisters the limiter's metrics
	o := storage.Options{Consumer: sp.consumer(c.consumer, sinks), MaxBatch: c.maxBatch, Linger: lingerOption(c.linger), Middletiers: eps}
	if c.group != "" {
		o.Group, o.Member = sp.consumer(c.group, sinks), c.member
	}
	o.Labels = func(id string) map[string]string {
		if d, ok := devices.Lookup(id); ok {
			return d.AllLabels()
		}
		return nil
	}
	w, err := storage.New(o, ls, reg, p.lg.With("sink", sp.name))
	if err != nil {
		return nil, err
	}
	p.onClose("storage writer "+sp.name, w.Close)
	p.add(part{name: "storage writer " + sp.name, stage: stageWriter, run: w.Run, settle: settle})
	return w, nil
}

// checks are the health and readiness of the writers. A failed fsync of
// the embedded TSDB's write logs stops its writes for good; only a restart
// recovers (the middletiers keep what was not committed), so the process
// reports itself dead. It is ready once every writer has caught up with
// every middletier: before, the stores hold a hole in recent data.
func (c *storageConfig) checks(p *process, db *embedded.TSDB, writers []*storage.Writer) (healthy, ready func() error) {
	healthy = func() error {
		if db != nil {
			if err := db.Failed(); err != nil {
				return fmt.Errorf("tsdb failed: %w", err)
			}
		}
		return nil
	}
	ready = func() error {
		if p.stopping.Load() || healthy() != nil {
			return errors.New("not ready")
		}
		for _, w := range writers {
			if !w.CaughtUp() {
				return errors.New("not ready")
			}
		}
		return nil
	}
	return healthy, ready
}

// base is the consumer name the sinks' checkpoints are named after: the
// group's, or the writer's own.
func (c *storageConfig) base() string {
	if c.group != "" {
		return c.group
	}
	return c.consumer
}

// memberName is the writer's name in its group.
func (c *storageConfig) memberName() string {
	if c.member != "" {
		return c.member
	}
	host, _ := os.Hostname()
	b := make([]byte, 2)
	rand.Read(b)
	return fmt.Sprintf("%s-%x", firstOf(host, "writer"), b)
}

// sinkConsumers are the consumer names the writer's sinks keep their
// checkpoints under, or an error if the sinks are not valid.
func (c *storageConfig) sinkConsumers() ([]string, error) {
	specs, err := parseSinks(c.sinks.values)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", c.sinkName, err)
	}
	var cs []string
	for i := range specs {
		cs = append(cs, specs[i].consumer(c.base(), len(specs)))
	}
	return cs, nil
}

// runStorage runs a storage writer into the embedded TSDB and serves the
// Prometheus query API, until SIGTERM: then it marks itself not ready,
// stops following the middletiers (sending each its last checkpoint),
// stops serving and closes the TSDB last.
func runStorage(ctx context.Context, args []string) error {
	var (
		c  = newStorageConfig()
		rc registryConfig
		sm = newSelfMonitorConfig()
		f  = newFlags("storage")
	)
	c.register(f)
	sm.register(f)
	c.selfMonitor = &sm
	rc.register(f, "whose labels go on every series of a device")
	return runServing(ctx, f, args, "--http.listen (the query API, health and metrics)", func(p *process) error {
		devices, err := rc.build(p)
		if err != nil {
			return err
		}
		_, err = c.build(p, devices, flagValues(f.fs))
		return err
	})
}
