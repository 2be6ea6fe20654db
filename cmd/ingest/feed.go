package main

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"time"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/status"
)

// feedConfig is the live feed for dashboards, with the status page beside
// it on the same listener.
type feedConfig struct {
	listen, id, middletiers, consumers, scope, origins string
	maxReaders, queue, maxMissed, gapFill, maxResume   int
	grace, fetchTimeout, ping, pong                    time.Duration
	f                                                  flags

	direct []feed.Source // ingest all: the middletier to follow, instead of the flags
}

func newFeedConfig() feedConfig {
	d := feed.DefaultOptions()
	host, _ := os.Hostname()
	return feedConfig{listen: ":8081", id: "feed-" + host, scope: d.Scope,
		maxReaders: d.MaxReaders, queue: d.ClientQueue, grace: d.SlowGrace, maxMissed: d.MaxMissed,
		gapFill: d.MaxGapFill, maxResume: d.MaxResume, fetchTimeout: d.FetchTimeout, ping: d.PingInterval, pong: d.PongTimeout}
}

func (c *feedConfig) register(f flags) {
	c.f = f
	f.str(&c.listen, "listen", "address for /v1/feed, the status page (/status/), /metrics, /healthz and /readyz")
	f.str(&c.id, "id", "name of this feed in its fetch requests to the middletiers")
	f.str(&c.middletiers, "middletiers", "comma-separated ZeroMQ endpoints of the middletiers' feed sockets (middletier --feed.addr) (required)")
	f.str(&c.consumers, "middletiers.consumer", "comma-separated endpoints of the same middletiers' consumer sockets (--consumer.addr), in the same order, to fill gaps and serve resume; empty: gaps are reported, not filled")
	f.str(&c.scope, "auth.scope", "scope a reader's token must carry (claim scope)")
	f.str(&c.origins, "origins", "comma-separated browser origins allowed to connect (dashboards on other hosts)")
	f.integer(&c.maxReaders, "max-readers", "maximum open reader connections")
	f.integer(&c.queue, "client-queue", "messages queued per reader; past it messages for that reader are dropped and reported missed")
	f.duration(&c.grace, "slow-grace", "a reader dropping messages for this long without catching up is closed with 4000")
	f.integer(&c.maxMissed, "max-missed", "a reader missing more messages than this before catching up is closed with 4000")
	f.integer(&c.gapFill, "max-gap-fill", "most records fetched to fill one gap in a middletier's stream")
	f.integer(&c.maxResume, "max-resume", "most records replayed for one resume request")
	f.duration(&c.fetchTimeout, "fetch-timeout", "bound on one fetch from a middletier (at least 1ms)")
	f.duration(&c.ping, "ping-interval", "ping every reader this often")
	f.duration(&c.pong, "pong-timeout", "close a reader whose pong is this late")
}

// sources are the middletiers to follow.
func (c *feedConfig) sources(p *process) ([]feed.Source, error) {
	if c.direct != nil {
		return c.direct, nil
	}
	feeds, cons, err := endpointLists(c.f, "middletiers", c.middletiers, "middletiers.consumer", c.consumers)
	if err != nil {
		return nil, err
	}
	if len(feeds) == 0 {
		return nil, c.f.required("middletiers")
	}
	if len(cons) == 0 {
		p.lg.Warn("no consumer endpoints (--middletiers.consumer): gaps in the stream are reported to readers, not filled, and resume is off")
	} else if len(cons) != len(feeds) {
		return nil, fmt.Errorf("--%s lists %d endpoints for %d middletiers", c.f.name("middletiers.consumer"), len(cons), len(feeds))
	}
	var out []feed.Source
	for i, fd := range feeds {
		src := feed.Source{Feed: fd}
		if cons != nil {
			src.Consumer = cons[i]
		}
		out = append(out, src)
	}
	return out, nil
}

// build builds the feed and its status page as parts of p; devices (nil:
// none) gives group filters and labels. It returns the feed's address.
func (c *feedConfig) build(p *process, a *authConfig, devices *registry.Registry) (string, error) {
	opts := feed.Options{ID: c.id, Scope: c.scope, InsecureNoAuth: a.noAuth, OriginPatterns: splitList(c.origins),
		MaxReaders: c.maxReaders, ClientQueue: c.queue, SlowGrace: c.grace, MaxMissed: c.maxMissed,
		MaxGapFill: c.gapFill, MaxResume: c.maxResume, FetchTimeout: c.fetchTimeout,
		PingInterval: c.ping, PongTimeout: c.pong, Registry: devices, Gatherer: p.reg}
	var err error
	if opts.Auth, err = a.options(); err != nil {
		return "", err
	}
	if opts.Sources, err = c.sources(p); err != nil {
		return "", err
	}
	if a.noAuth && !c.f.given("listen") {
		c.listen = "127.0.0.1:8081" // without auth, loopback only
	}
	if err := a.loopbackOnly(c.f, "listen", c.listen); err != nil {
		return "", err
	}
	// The status page beside the feed: same origin as /v1/feed. It shows
	// the figures of the tiers this process runs, dashes for the others.
	page, err := status.New(status.Options{Gatherer: p.reg.Gatherer(), FeedURL: "/v1/feed"}, p.lg)
	if err != nil {
		return "", err
	}
	opts.Handlers = map[string]http.Handler{"/status/": http.StripPrefix("/status", page)}
	maps.Copy(opts.Handlers, p.pprofHandlers())
	if opts.Listener, err = p.listenTLS(c.f.name("listen"), c.listen, "http/1.1"); err != nil {
		return "", err
	}
	srv, err := feed.New(opts, p.reg, p.lg)
	if err != nil {
		return "", err
	}
	p.onClose("feed", srv.Close)
	p.add(part{name: "feed", stage: stageReaders, run: srv.Run})
	p.add(part{name: "status page", stage: stageReaders, run: page.Run})
	addr := opts.Listener.Addr().String()
	p.built("feed listening", "addr", addr, "tls", p.tls != nil, "path", "/v1/feed", "status", "/status/", "id", c.id, "middletiers", len(opts.Sources))
	return addr, nil
}

// runFeed serves the live feed to dashboards until SIGTERM, then closes
// every reader with 1001 and its sockets to the middletiers.
func runFeed(ctx context.Context, args []string) error {
	var (
		c  = newFeedConfig()
		a  authConfig
		rc registryConfig
		f  = newFlags("feed")
	)
	c.register(f)
	a.register(f, "readers")
	rc.register(f, "for group filters and labels")
	return runServing(ctx, f, args, "--listen (the feed, the status page, health and metrics)", func(p *process) error {
		devices, err := rc.buildIfGiven(p)
		if err != nil {
			return err
		}
		_, err = c.build(p, &a, devices)
		return err
	})
}
