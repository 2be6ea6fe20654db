//go:build !nostorage

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/status"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
)

// runAll runs every tier in one process over loopback, on a data directory:
// the embedded default (make run). The tiers still talk over ZeroMQ on
// loopback, exactly as they do as separate processes.
func runAll(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("all", flag.ContinueOnError)
	var (
		dataDir    = fs.String("data.dir", "data", "data directory; every tier keeps its state below it")
		listen     = fs.String("listen", "127.0.0.1:8080", "address for devices, /metrics, /healthz and /readyz")
		mqttListen = fs.String("mqtt.listen", "127.0.0.1:1883", "address for MQTT devices over TCP; empty: off (MQTT over WebSocket is always served at /mqtt on --listen)")
		feedListen = fs.String("feed.listen", "127.0.0.1:8081", "address of the live feed for dashboards (/v1/feed) and of the status page (/status/)")
		queryAddr  = fs.String("query.listen", "127.0.0.1:9090", "address of the Prometheus query API of the embedded store, for Grafana (/api/v1/..., /-/healthy, /-/ready)")
		regFile    = fs.String("registry.file", "", "device registry (YAML or CSV): labels on every series of a device, groups for feed filters")
		noAuth     = fs.Bool("insecure-no-auth", false, "accept devices without tokens (device id from ?device=); loopback only")
		secretFile = fs.String("auth.hs256-secret-file", "", "file holding the HS256 secret devices' tokens are signed with")
		drain      = fs.Duration("drain-window", 2*time.Second, "time over which device connections are closed at shutdown")
		maxFields  = fs.Int("max-fields", frontend.DefaultOptions().MaxFields, "most fields (numbers, booleans, strings, nested ones included) in one message; more is rejected with too_many_fields")
		maxName    = fs.Int("max-field-name-bytes", frontend.DefaultOptions().MaxFieldNameBytes, "longest field name, flattened with dots; longer is rejected with invalid_field")
		maxString  = fs.Int("max-string-bytes", frontend.DefaultOptions().MaxStringBytes, "longest string value; longer is rejected with invalid_field")
		maxSeries  = fs.Int("max-series-per-device", storage.DefaultLimitOptions().MaxSeriesPerDevice, "most series a device has in the store (seen within one to two hours); fields that would make more are dropped and counted")
		walRepair  = fs.Bool("wal.repair", false, "open WALs whose last segment was cut short (refused otherwise): keep their whole entries, log and count what is lost, give the log a new identity")
		logLevel   = fs.String("log.level", "info", "log level: debug, info, warn, error")
		logFormat  = fs.String("log.format", "text", "log format: text or json")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	lg, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	if !*noAuth && *secretFile == "" {
		return errors.New("give --auth.hs256-secret-file, or --insecure-no-auth to try the engine on loopback")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	devices, err := registry.New(*regFile, reg, lg)
	if err != nil {
		return err
	}

	// The middletier, on loopback ports chosen by the kernel.
	mlog, err := wal.Open(filepath.Join(*dataDir, "middletier", "wal"), wal.Options{Hop: "middletier", RepairTruncated: *walRepair}, reg, lg)
	if err != nil {
		return fmt.Errorf("open middletier wal: %w", err)
	}
	defer closeLog(mlog, lg)
	loop := "tcp://127.0.0.1:0"
	mt, err := middletier.New(middletier.Options{ID: "mt-0", StateDir: filepath.Join(*dataDir, "middletier"),
		IngestAddr: loop, ConsumerAddr: loop, StreamAddr: loop, FeedAddr: loop, Consumers: []string{"storage"}}, mlog, reg, lg)
	if err != nil {
		return err
	}
	addrs := mt.Addrs()

	// The storage writer into the embedded TSDB, a durable consumer of the
	// middletier's stream, and the query API over it.
	db, err := embedded.Open(embedded.Options{Dir: filepath.Join(*dataDir, "storage")}, reg, lg)
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
	sub, err := storage.New(storage.Options{Consumer: "storage",
		Middletiers: []storage.Endpoints{{Stream: addrs.Stream, Consumer: addrs.Consumer}},
		Labels: func(id string) map[string]string {
			if d, ok := devices.Lookup(id); ok {
				return d.AllLabels()
			}
			return nil
		}}, lim.Sink(db), reg, lg)
	if err != nil {
		return err
	}
	qln, err := net.Listen("tcp", *queryAddr)
	if err != nil {
		return fmt.Errorf("listen query api: %w", err)
	}
	api := embedded.NewAPI(db.DB(), embedded.APIOptions{
		Healthy: func() error {
			if err := db.Failed(); err != nil {
				return fmt.Errorf("tsdb failed: %w", err)
			}
			return nil
		},
		Ready: func() error {
			if !sub.CaughtUp() || db.Failed() != nil {
				return errors.New("not ready")
			}
			return nil
		},
		Retention: embedded.DefaultOptions().Retention, Flags: flagValues(fs)}, reg, lg)
	qs := &http.Server{Handler: api, ReadHeaderTimeout: 5 * time.Second}
	go qs.Serve(qln)
	defer qs.Close()

	// The frontend and its uplink to the middletier.
	flog, err := wal.Open(filepath.Join(*dataDir, "frontend", "wal"), wal.Options{Hop: "frontend", RepairTruncated: *walRepair}, reg, lg)
	if err != nil {
		return fmt.Errorf("open frontend wal: %w", err)
	}
	defer closeLog(flog, lg)
	fopts := frontend.Options{ID: "fe-0", InsecureNoAuth: *noAuth, DrainWindow: *drain, Gatherer: reg,
		MaxFields: *maxFields, MaxFieldNameBytes: *maxName, MaxStringBytes: *maxString}
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			return fmt.Errorf("read HS256 secret: %w", err)
		}
		fopts.Auth.HS256Secrets = [][]byte{trimSpace(b)}
	}
	if fopts.MQTTListener, err = listenMQTT(*mqttListen, lg); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fopts.Listener = ln
	srv, err := frontend.New(fopts, flog, reg, lg)
	if err != nil {
		return err
	}
	link, err := uplink.New(uplink.Options{ID: "fe-0", Middletiers: []string{addrs.Ingest}}, flog, reg, lg)
	if err != nil {
		return err
	}

	// The live feed, following the middletier's feed socket. The status
	// page is served on the feed's listener: the page then follows /v1/feed
	// from its own origin, with no Origin to allow.
	page, err := status.New(status.Options{Gatherer: reg, FeedURL: "/v1/feed"}, lg)
	if err != nil {
		ln.Close()
		return err
	}
	fdopts := feed.Options{Sources: []feed.Source{{Feed: addrs.Feed, Consumer: addrs.Consumer}}, Registry: devices, InsecureNoAuth: *noAuth,
		Handlers: map[string]http.Handler{"/status/": http.StripPrefix("/status", page)}}
	if !*noAuth {
		fdopts.Auth = fopts.Auth
	}
	fln, err := net.Listen("tcp", *feedListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen feed: %w", err)
	}
	fdopts.Listener = fln
	fd, err := feed.New(fdopts, reg, lg)
	if err != nil {
		ln.Close()
		return err
	}

	lg.Info("engine running (all tiers in one process)",
		"devices", "ws://"+ln.Addr().String()+"/v1/ingest",
		"metrics", "http://"+ln.Addr().String()+"/metrics",
		"live_feed", "ws://"+fln.Addr().String()+"/v1/feed",
		"query_api", "http://"+qln.Addr().String()+"/api/v1/",
		"status", "http://"+fln.Addr().String()+"/status/",
		"middletier_stream", addrs.Stream, "middletier_feed", addrs.Feed,
		"data", *dataDir)

	// Shutdown in dependency order: devices drain first, the uplink hands
	// the middletier what the frontend's WAL holds, then the middletier
	// stops; the WALs close last (deferred above).
	mtCtx, stopMT := context.WithCancel(context.Background())
	linkCtx, stopLink := context.WithCancel(context.Background())
	sideCtx, stopSide := context.WithCancel(context.Background())
	var wg, side sync.WaitGroup
	var mtErr, linkErr, feedErr error
	storeCtx, stopStore := context.WithCancel(context.Background())
	var storeErr error
	wg.Go(func() { mtErr = mt.Run(mtCtx) })
	var store sync.WaitGroup
	store.Go(func() { storeErr = sub.Run(storeCtx) })
	side.Go(func() { feedErr = fd.Run(sideCtx) })
	side.Go(func() { devices.Run(sideCtx) })
	side.Go(func() { page.Run(sideCtx) })
	linkDone := make(chan error, 1)
	go func() { linkDone <- link.Run(linkCtx) }()

	err = srv.Run(ctx)
	stopSide() // dashboards are closed with 1001 while the pipeline drains
	side.Wait()
	linkErr, stopped := flushUplink(flog, 5*time.Second, linkDone)
	stopLink()
	if !stopped {
		linkErr = <-linkDone
	}
	// Give the storage writer a moment to store what the middletier holds.
	deadline := time.Now().Add(5 * time.Second)
	for mlog.Released() < mlog.LastIndex() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stopStore()
	store.Wait()
	stopMT()
	wg.Wait()
	lg.Info("engine stopped", "unforwarded", flog.LastIndex()-flog.Released(), "unstored", mlog.LastIndex()-mlog.Released())
	return errors.Join(err, linkErr, mtErr, feedErr, storeErr)
}

func closeLog(l *wal.Log, lg *slog.Logger) {
	if err := l.Close(); err != nil {
		lg.Error("close wal", "err", err)
	}
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
