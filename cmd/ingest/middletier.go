package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
)

// runMiddletier serves the router tier until SIGTERM, then closes its
// sockets, makes its state durable and closes the WAL last.
func runMiddletier(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("middletier", flag.ContinueOnError)
	d := middletier.DefaultOptions()
	wd := wal.DefaultOptions()
	var (
		id        = fs.String("id", "", "middletier id, in its stream (required; stable for the life of the data directory)")
		dataDir   = fs.String("data.dir", "", "data directory: the WAL in wal/, the state file beside it (required)")
		ingest    = fs.String("ingest.addr", d.IngestAddr, "ZeroMQ endpoint of the ROUTER frontends send batches to")
		consumer  = fs.String("consumer.addr", d.ConsumerAddr, "ZeroMQ endpoint of the ROUTER consumers fetch and commit on")
		stream    = fs.String("stream.addr", d.StreamAddr, "ZeroMQ endpoint of the PUB stream for storage writers")
		feed      = fs.String("feed.addr", "", "ZeroMQ endpoint of a second PUB stream for the live feed (none if empty)")
		consumers = fs.String("consumers", "", "comma-separated durable consumers; the WAL keeps entries until every one has committed them")
		walMax    = fs.Int64("wal.max-bytes", wd.MaxBytes, "bound on the WAL's unreleased bytes; past it frontends are answered busy")
		walSeg    = fs.Int("wal.segment-bytes", wd.SegmentBytes, "WAL segment size")
		walNoPre  = fs.Bool("wal.no-preallocate", false, "let WAL segments grow as they are written instead of writing each next one as zeros ahead of need (fewer bytes written, a slower sync per acknowledgement)")
		walRepair = fs.Bool("wal.repair", false, "open a WAL whose last segment was cut short (refused otherwise): keep its whole entries, log and count what is lost, give the log a new identity")
		stall     = fs.Duration("send-stall", d.SendStall, "a send on a ROUTER socket taking longer closes and reopens the socket")
		httpAddr  = fs.String("http.listen", ":9091", "address for /metrics, /healthz and /readyz")
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
	if *id == "" || *dataDir == "" {
		return errors.New("--id (INGEST_ID) and --data.dir (INGEST_DATA_DIR) are required")
	}
	opts := middletier.Options{
		ID: *id, StateDir: *dataDir,
		IngestAddr: *ingest, ConsumerAddr: *consumer, StreamAddr: *stream, FeedAddr: *feed,
		SendStall: *stall,
	}
	if *consumers != "" {
		opts.Consumers = strings.Split(*consumers, ",")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	log, err := wal.Open(filepath.Join(*dataDir, "wal"), wal.Options{Hop: "middletier", MaxBytes: *walMax, SegmentBytes: *walSeg, NoPreallocate: *walNoPre, RepairTruncated: *walRepair}, reg, lg)
	if err != nil {
		return fmt.Errorf("open wal: %w", err)
	}
	defer func() {
		if cerr := log.Close(); cerr != nil {
			lg.Error("close wal", "err", cerr)
		}
	}()
	r, err := middletier.New(opts, log, reg, lg)
	if err != nil {
		return err
	}
	addrs := r.Addrs()

	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := log.Err(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() || log.Err() != nil {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
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

	lg.Info("middletier listening", "id", *id, "ingest", addrs.Ingest, "consumer", addrs.Consumer,
		"stream", addrs.Stream, "feed", addrs.Feed, "http", ln.Addr().String(),
		"first_index", log.FirstIndex(), "last_index", log.LastIndex())
	ready.Store(true)
	start := time.Now()
	err = r.Run(ctx)
	ready.Store(false)
	lg.Info("middletier stopped", "after", time.Since(start).Round(time.Millisecond))
	return err
}
