package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
)

// runFrontend serves devices until SIGTERM, then drains and closes the WAL last.
func runFrontend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("frontend", flag.ContinueOnError)
	d := frontend.DefaultOptions()
	wd := wal.DefaultOptions()
	host, _ := os.Hostname()
	var (
		listen      = fs.String("listen", ":8080", "address to listen on for devices, health and metrics")
		mqttListen  = fs.String("mqtt.listen", "", "address to listen on for MQTT devices over TCP (e.g. :1883); empty: off (MQTT over WebSocket is always served at /mqtt on --listen)")
		mqttRecvMax = fs.Int("mqtt.receive-maximum", d.MQTT.ReceiveMaximum, "QoS 1 and 2 publishes an MQTT session may have unacknowledged")
		id          = fs.String("id", host, "frontend id written into every envelope; keep it stable for the life of the WAL directory")
		walDir      = fs.String("wal.dir", "", "WAL directory (required)")
		walMax      = fs.Int64("wal.max-bytes", wd.MaxBytes, "bound on unacknowledged-downstream WAL bytes; past it devices get overloaded")
		walSeg      = fs.Int("wal.segment-bytes", wd.SegmentBytes, "WAL segment size")
		walNoPre    = fs.Bool("wal.no-preallocate", false, "let WAL segments grow as they are written instead of writing each next one as zeros ahead of need (fewer bytes written, a slower sync per acknowledgement)")
		walRepair   = fs.Bool("wal.repair", false, "open a WAL whose last segment was cut short (refused otherwise): keep its whole entries, log and count what is lost, give the log a new identity")
		hsFile      = fs.String("auth.hs256-secret-file", "", "file holding the HS256 shared secret (at least 32 bytes)")
		rsFile      = fs.String("auth.rs256-public-keys", "", "PEM file of RSA public keys accepted for RS256")
		esFile      = fs.String("auth.es256-public-keys", "", "PEM file of P-256 public keys accepted for ES256")
		issuer      = fs.String("auth.issuer", "", "required token issuer (iss), if set")
		audience    = fs.String("auth.audience", "", "required token audience (aud), if set")
		requireExp  = fs.Bool("auth.require-exp", false, "refuse tokens without exp")
		leeway      = fs.Duration("auth.leeway", 0, "clock skew tolerated on exp and nbf")
		noAuth      = fs.Bool("insecure-no-auth", false, "accept devices without tokens (device id from ?device=); loopback only")
		origins     = fs.String("origins", "", "comma-separated browser origins allowed to connect")
		maxConns    = fs.Int("max-connections", d.MaxConnections, "maximum open device connections")
		maxFrame    = fs.Int("max-frame-bytes", d.MaxFrameBytes, "largest frame; larger closes the connection with 1009")
		maxMsg      = fs.Int("max-message-bytes", d.MaxMessageBytes, "largest message; larger is rejected with too_large")
		maxBatch    = fs.Int("max-batch", d.MaxBatchMessages, "most messages in one batch frame")
		maxFields   = fs.Int("max-fields", d.MaxFields, "most fields (numbers, booleans, strings, nested ones included) in one message; more is rejected with too_many_fields")
		maxName     = fs.Int("max-field-name-bytes", d.MaxFieldNameBytes, "longest field name, flattened with dots; longer is rejected with invalid_field")
		maxString   = fs.Int("max-string-bytes", d.MaxStringBytes, "longest string value; longer is rejected with invalid_field")
		rate        = fs.Float64("rate", d.Rate, "messages per second per device")
		burst       = fs.Int("burst", d.Burst, "burst of messages per device")
		ping        = fs.Duration("ping-interval", d.PingInterval, "ping a connection silent for this long")
		pong        = fs.Duration("pong-timeout", d.PongTimeout, "close a connection whose pong is this late")
		drain       = fs.Duration("drain-window", d.DrainWindow, "time over which connections are closed at shutdown")
		restartCode = fs.Bool("drain.service-restart", false, "close with 1012 (service restart) instead of 1001 (going away) at shutdown")
		mtList      = fs.String("uplink.middletiers", "", "comma-separated ZeroMQ endpoints of the middletiers' ingest sockets, in order of preference (tcp://host:5555)")
		mtDNS       = fs.String("uplink.dns", "", "host:port of a headless Service whose addresses are the middletiers (instead of --uplink.middletiers)")
		upWindow    = fs.Int("uplink.window", uplink.DefaultOptions().Window, "batches in flight to the middletier")
		upAck       = fs.Duration("uplink.ack-timeout", uplink.DefaultOptions().AckTimeout, "send again from the oldest unacknowledged entry after this long without an ack")
		upFailover  = fs.Duration("uplink.failover", uplink.DefaultOptions().Failover, "move to the next middletier after it acknowledges nothing for this long")
		upFlush     = fs.Duration("uplink.flush-timeout", 5*time.Second, "at shutdown, how long to wait for the middletier to acknowledge what the WAL holds")
		logLevel    = fs.String("log.level", "info", "log level: debug, info, warn, error")
		logFormat   = fs.String("log.format", "text", "log format: text or json")
	)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	lg, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *walDir == "" {
		return errors.New("--wal.dir (INGEST_WAL_DIR) is required")
	}

	opts := frontend.Options{
		ID:               *id,
		InsecureNoAuth:   *noAuth,
		MaxConnections:   *maxConns,
		MaxFrameBytes:    *maxFrame,
		MaxMessageBytes:  *maxMsg,
		MaxBatchMessages: *maxBatch,
		Rate:             *rate,
		Burst:            *burst,
		PingInterval:     *ping,
		PongTimeout:      *pong,
		DrainWindow:      *drain,
		MQTT:             frontend.MQTTOptions{ReceiveMaximum: *mqttRecvMax},
		Auth: auth.Options{
			Issuer: *issuer, Audience: *audience, RequireExpiry: *requireExp, Leeway: *leeway,
		},
	}
	opts.MaxFields, opts.MaxFieldNameBytes, opts.MaxStringBytes = *maxFields, *maxName, *maxString
	if *restartCode {
		opts.ShutdownCode = websocket.StatusServiceRestart
	}
	if *origins != "" {
		opts.OriginPatterns = strings.Split(*origins, ",")
	}
	if *hsFile != "" {
		b, err := os.ReadFile(*hsFile)
		if err != nil {
			return fmt.Errorf("read HS256 secret: %w", err)
		}
		opts.Auth.HS256Secrets = [][]byte{[]byte(strings.TrimSpace(string(b)))}
	}
	if *rsFile != "" {
		if opts.Auth.RS256Keys, err = readKeys(*rsFile, jwt.ParseRSAPublicKeyFromPEM); err != nil {
			return err
		}
	}
	if *esFile != "" {
		if opts.Auth.ES256Keys, err = readKeys(*esFile, jwt.ParseECPublicKeyFromPEM); err != nil {
			return err
		}
	}
	if *noAuth && (*hsFile != "" || *rsFile != "" || *esFile != "") {
		return errors.New("--insecure-no-auth cannot be combined with auth keys")
	}
	if *noAuth && !listenSet(fs) {
		// Without auth the server serves loopback only; default accordingly.
		*listen = "127.0.0.1:8080"
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts.Gatherer = reg

	log, err := wal.Open(*walDir, wal.Options{Hop: "frontend", MaxBytes: *walMax, SegmentBytes: *walSeg, NoPreallocate: *walNoPre, RepairTruncated: *walRepair}, reg, lg)
	if err != nil {
		return fmt.Errorf("open wal: %w", err)
	}
	// The WAL closes last, after every connection has drained.
	defer func() {
		if cerr := log.Close(); cerr != nil {
			lg.Error("close wal", "err", cerr)
		}
	}()
	if opts.MQTTListener, err = listenMQTT(*mqttListen, lg); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	opts.Listener = ln
	srv, err := frontend.New(opts, log, reg, lg)
	if err != nil {
		return err
	}
	link, err := newUplink(*id, *mtList, *mtDNS, uplink.Options{Window: *upWindow, AckTimeout: *upAck, Failover: *upFailover}, log, reg, lg)
	if err != nil {
		srv.Close()
		return err
	}
	lg.Info("frontend listening", "addr", ln.Addr().String(), "id", opts.ID, "wal", *walDir, "last_index", log.LastIndex())
	start := time.Now()
	linkCtx, stopLink := context.WithCancel(context.Background())
	linkDone := make(chan error, 1)
	if link != nil {
		go func() { linkDone <- link.Run(linkCtx) }()
	} else {
		linkDone <- nil
	}
	err = srv.Run(ctx)
	// Devices are drained: give the uplink a moment to hand the middletier
	// what the WAL holds. What it cannot is kept for the next start.
	lerr, stopped := error(nil), false
	if link != nil {
		lerr, stopped = flushUplink(log, *upFlush, linkDone)
	}
	stopLink()
	if !stopped {
		lerr = <-linkDone
	}
	if lerr != nil {
		lg.Error("uplink stopped", "err", lerr)
		err = errors.Join(err, lerr)
	}
	lg.Info("frontend stopped", "after", time.Since(start).Round(time.Millisecond), "unforwarded", log.LastIndex()-log.Released())
	return err
}

// newUplink builds the forwarder to the middletiers, or returns nil (and
// logs a warning) when none is configured: the WAL then only fills.
func newUplink(id, list, dns string, o uplink.Options, log *wal.Log, reg prometheus.Registerer, lg *slog.Logger) (*uplink.Link, error) {
	o.ID = id
	switch {
	case list != "" && dns != "":
		return nil, errors.New("--uplink.middletiers and --uplink.dns exclude each other")
	case list != "":
		o.Middletiers = strings.Split(list, ",")
	case dns != "":
		host, port, err := net.SplitHostPort(dns)
		if err != nil {
			return nil, fmt.Errorf("parse --uplink.dns: %w", err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("parse --uplink.dns port: %w", err)
		}
		o.Resolve = uplink.DNSResolver(host, p)
	default:
		lg.Warn("no middletiers configured (--uplink.middletiers): messages are made durable here and not forwarded; the WAL fills to its bound")
		return nil, nil
	}
	return uplink.New(o, log, reg, lg)
}

// flushUplink waits until every entry is acknowledged downstream or the
// timeout passes. If the uplink stops first it returns its result and true.
func flushUplink(log *wal.Log, timeout time.Duration, linkDone <-chan error) (error, bool) {
	deadline := time.Now().Add(timeout)
	for log.Released() < log.LastIndex() && time.Now().Before(deadline) {
		select {
		case err := <-linkDone:
			return err, true
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil, false
}

// listenMQTT binds the MQTT listener on addr, unless addr is empty.
func listenMQTT(addr string, lg *slog.Logger) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen mqtt: %w", err)
	}
	lg.Info("mqtt listening", "addr", ln.Addr().String())
	return ln, nil
}

// listenSet reports whether --listen or INGEST_LISTEN was given.
func listenSet(fs *flag.FlagSet) bool {
	if _, ok := os.LookupEnv(envName("listen")); ok {
		return true
	}
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "listen" })
	return set
}

func readKeys[K *rsa.PublicKey | *ecdsa.PublicKey](path string, parse func([]byte) (K, error)) ([]K, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	var keys []K
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		k, err := parse(pem.EncodeToMemory(blk))
		if err != nil {
			return nil, fmt.Errorf("parse key in %s: %w", path, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("parse keys: no PEM block in %s", path)
	}
	return keys, nil
}
