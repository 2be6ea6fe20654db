package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/status"
)

// runFeed serves the live feed to dashboards until SIGTERM, then closes
// every reader with 1001 and its sockets to the middletiers.
func runFeed(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("feed", flag.ContinueOnError)
	d := feed.DefaultOptions()
	host, _ := os.Hostname()
	var (
		listen     = fs.String("listen", ":8081", "address for /v1/feed, the status page (/status/), /metrics, /healthz and /readyz")
		id         = fs.String("id", "feed-"+host, "name of this feed in its fetch requests to the middletiers")
		mts        = fs.String("middletiers", "", "comma-separated ZeroMQ endpoints of the middletiers' feed sockets (middletier --feed.addr) (required)")
		consumers  = fs.String("middletiers.consumer", "", "comma-separated endpoints of the same middletiers' consumer sockets (--consumer.addr), in the same order, to fill gaps and serve resume; empty: gaps are reported, not filled")
		regFile    = fs.String("registry.file", "", "device registry (YAML or CSV) for group filters and labels; reloaded on change")
		hsFile     = fs.String("auth.hs256-secret-file", "", "file holding the HS256 shared secret (at least 32 bytes)")
		rsFile     = fs.String("auth.rs256-public-keys", "", "PEM file of RSA public keys accepted for RS256")
		esFile     = fs.String("auth.es256-public-keys", "", "PEM file of P-256 public keys accepted for ES256")
		issuer     = fs.String("auth.issuer", "", "required token issuer (iss), if set")
		audience   = fs.String("auth.audience", "", "required token audience (aud), if set")
		requireExp = fs.Bool("auth.require-exp", false, "refuse tokens without exp")
		leeway     = fs.Duration("auth.leeway", 0, "clock skew tolerated on exp and nbf")
		scope      = fs.String("auth.scope", d.Scope, "scope a reader's token must carry (claim scope)")
		noAuth     = fs.Bool("insecure-no-auth", false, "accept readers without tokens; loopback only")
		origins    = fs.String("origins", "", "comma-separated browser origins allowed to connect (dashboards on other hosts)")
		maxReaders = fs.Int("max-readers", d.MaxReaders, "maximum open reader connections")
		queue      = fs.Int("client-queue", d.ClientQueue, "messages queued per reader; past it messages for that reader are dropped and reported missed")
		grace      = fs.Duration("slow-grace", d.SlowGrace, "a reader dropping messages for this long without catching up is closed with 4000")
		maxMissed  = fs.Int("max-missed", d.MaxMissed, "a reader missing more messages than this before catching up is closed with 4000")
		gapFill    = fs.Int("max-gap-fill", d.MaxGapFill, "most records fetched to fill one gap in a middletier's stream")
		maxResume  = fs.Int("max-resume", d.MaxResume, "most records replayed for one resume request")
		fetchTO    = fs.Duration("fetch-timeout", d.FetchTimeout, "bound on one fetch from a middletier")
		ping       = fs.Duration("ping-interval", d.PingInterval, "ping every reader this often")
		pong       = fs.Duration("pong-timeout", d.PongTimeout, "close a reader whose pong is this late")
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
	if *mts == "" {
		return errors.New("--middletiers (INGEST_MIDDLETIERS) is required")
	}
	opts := feed.Options{
		ID: *id, Scope: *scope, InsecureNoAuth: *noAuth,
		MaxReaders: *maxReaders, ClientQueue: *queue, SlowGrace: *grace, MaxMissed: *maxMissed,
		MaxGapFill: *gapFill, MaxResume: *maxResume, FetchTimeout: *fetchTO,
		PingInterval: *ping, PongTimeout: *pong,
	}
	opts.Auth.Issuer, opts.Auth.Audience, opts.Auth.RequireExpiry, opts.Auth.Leeway = *issuer, *audience, *requireExp, *leeway
	feeds := strings.Split(*mts, ",")
	var cons []string
	if *consumers != "" {
		if cons = strings.Split(*consumers, ","); len(cons) != len(feeds) {
			return fmt.Errorf("--middletiers.consumer lists %d endpoints for %d middletiers", len(cons), len(feeds))
		}
	} else {
		lg.Warn("no consumer endpoints (--middletiers.consumer): gaps in the stream are reported to readers, not filled, and resume is off")
	}
	for i, f := range feeds {
		src := feed.Source{Feed: f}
		if cons != nil {
			src.Consumer = cons[i]
		}
		opts.Sources = append(opts.Sources, src)
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
		*listen = "127.0.0.1:8081"
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts.Gatherer = reg
	if *regFile != "" {
		if opts.Registry, err = registry.New(*regFile, reg, lg); err != nil {
			return err
		}
	}
	// The status page beside the feed: same origin as /v1/feed. This
	// process registers only the feed's metrics, so the page shows the feed's
	// figures and table, and dashes for the other tiers'.
	page, err := status.New(status.Options{Gatherer: reg, FeedURL: "/v1/feed"}, lg)
	if err != nil {
		return err
	}
	opts.Handlers = map[string]http.Handler{"/status/": http.StripPrefix("/status", page)}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	opts.Listener = ln
	srv, err := feed.New(opts, reg, lg)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	regCtx, stopReg := context.WithCancel(context.Background())
	if opts.Registry != nil {
		wg.Go(func() { opts.Registry.Run(regCtx) })
	}
	wg.Go(func() { page.Run(regCtx) })
	lg.Info("feed listening", "addr", ln.Addr().String(), "path", "/v1/feed", "status", "/status/", "id", opts.ID, "middletiers", *mts)
	start := time.Now()
	err = srv.Run(ctx)
	stopReg()
	wg.Wait()
	lg.Info("feed stopped", "after", time.Since(start).Round(time.Millisecond))
	return err
}
