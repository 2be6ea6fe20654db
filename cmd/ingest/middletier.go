package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
)

// middletierConfig is the router tier: its WAL and state in a data
// directory, its ZeroMQ sockets, and an HTTP port for metrics and health.
type middletierConfig struct {
	id, dataDir                    string
	ingest, consumer, stream, feed string
	consumers                      string
	wal                            walConfig
	sendStall, leaseTTL            time.Duration
	httpListen                     string
	f                              flags
	dataShown                      string // named when another process holds the directory; empty: dataDir
	moreConsumers                  []string
	command                        commandHomeConfig
}

// commandHomeConfig is the flags of the middletier's command home.
type commandHomeConfig struct {
	addr              string
	maxInFlight       int
	redeliver, maxTTL time.Duration
	presenceTimeout   time.Duration
	retain            time.Duration
	maxBytes          int64  // bound of the home's log
	bound             string // the endpoint the home listens on, port resolved; empty: none
}

func newMiddletierConfig() middletierConfig {
	d := middletier.DefaultOptions()
	cd := command.DefaultOptions()
	return middletierConfig{ingest: d.IngestAddr, consumer: d.ConsumerAddr, stream: d.StreamAddr,
		wal: newWALConfig(), sendStall: d.SendStall, leaseTTL: d.LeaseTTL, httpListen: ":9091",
		command: commandHomeConfig{maxInFlight: cd.MaxInFlight, redeliver: cd.Redeliver, maxTTL: cd.MaxTTL, presenceTimeout: cd.PresenceTimeout, retain: cd.Retain,
			maxBytes: wal.DefaultOptions().MaxBytes}}
}

func (c *middletierConfig) register(f flags) {
	c.f = f
	f.str(&c.id, "id", "middletier id, in its stream (required; stable for the life of the data directory)")
	f.str(&c.dataDir, "data.dir", "data directory: the WAL in wal/, the state file beside it (required)")
	f.str(&c.ingest, "ingest.addr", "ZeroMQ endpoint of the ROUTER frontends send batches to")
	f.str(&c.consumer, "consumer.addr", "ZeroMQ endpoint of the ROUTER consumers fetch and commit on")
	f.str(&c.stream, "stream.addr", "ZeroMQ endpoint of the PUB stream for storage writers")
	f.str(&c.feed, "feed.addr", "ZeroMQ endpoint of a second PUB stream for the live feed (none if empty)")
	f.str(&c.consumers, "consumers", "comma-separated durable consumers (storage writers' --consumer or --group); the WAL keeps entries until every one has committed them")
	f.duration(&c.leaseTTL, "lease.ttl", "a writer group's lease on this middletier's stream lasts this long unrenewed: a writer killed loses its streams to another of its group after it")
	c.wal.register(f, "frontends are answered busy")
	f.duration(&c.sendStall, "send-stall", "a send on a ROUTER socket taking longer closes and reopens the socket")
	f.str(&c.httpListen, "http.listen", "address for /metrics, /healthz and /readyz (none if empty)")
	f.str(&c.command.addr, "command.addr", "ZeroMQ endpoint of the ROUTER frontends reach this middletier's command home on (tcp://host:5558); its log is in <data.dir>/commands, the events of its commands' state changes in <data.dir>/command-events, forwarded to this middletier's ingest socket (no commands if empty)")
	f.integer(&c.command.maxInFlight, "command.max-in-flight", "commands a device may have sent and unanswered at a time")
	f.duration(&c.command.redeliver, "command.redeliver", "hand a sent command on again after this long without its answer")
	f.duration(&c.command.maxTTL, "command.max-ttl", "longest time to live of a command")
	f.duration(&c.command.presenceTimeout, "command.presence-timeout", "forget where a device is connected when no frontend has named it for this long")
	f.duration(&c.command.retain, "command.retain", "how long a command stays known (its GET, list and idempotency key) after its final state; then it leaves the log")
	f.int64(&c.command.maxBytes, "command.max-bytes", "bound on the command home's log; the commands it keeps may take a quarter of it, an open command counting 16 KiB of room for its answer besides its own size: past it submits are refused (503 full)")
}

// buildCommands opens the command home's log and its events' log and
// binds its socket as a part of p, if --command.addr is set; the events go
// to this middletier's ingest socket. It returns the home's endpoint.
func (c *middletierConfig) buildCommands(p *process, ingest string) (string, error) {
	if c.command.addr == "" {
		return "", nil
	}
	var logs [2]*wal.Log
	// The events' log is bounded well below the disk: events that find it
	// full (the middletier refusing them for long) are dropped and counted.
	// Their bounds and segments are their own; what --wal.repair and
	// --wal.no-preallocate say of the tier's WAL files holds for them too:
	// a command log cut short is otherwise refused at every start.
	for i, l := range []struct {
		dir, hop string
		max      int64
	}{{"commands", "command", c.command.maxBytes}, {"command-events", "command_events", 256 << 20}} {
		log, err := wal.Open(filepath.Join(c.dataDir, l.dir), wal.Options{Hop: l.hop, SegmentBytes: 1 << 20, MaxBytes: l.max,
			NoPreallocate: c.wal.noPreallocate, RepairTruncated: c.wal.repair}, p.reg, p.lg)
		if err != nil {
			return "", c.wal.openError(l.hop, firstOf(c.dataShown, c.dataDir), err)
		}
		p.onClose(l.hop+" wal", log.Close)
		logs[i] = log
	}
	log := logs[0]
	h, err := command.New(command.Options{ID: c.id, Addr: c.command.addr, MaxInFlight: c.command.maxInFlight,
		Redeliver: c.command.redeliver, MaxTTL: c.command.maxTTL, PresenceTimeout: c.command.presenceTimeout,
		Retain: c.command.retain, SendStall: c.sendStall, Events: logs[1], EventsTo: []string{dialable(ingest)}}, log, p.reg, p.lg)
	if err != nil {
		return "", fmt.Errorf("listen %s (--%s): %w", c.command.addr, c.f.name("command.addr"), err)
	}
	p.onClose("command home", h.Close)
	p.add(part{name: "command home", stage: stageRouter, run: h.Run})
	return h.Addr(), nil
}

// dialable is an endpoint a local socket can connect to for the endpoint
// a socket bound: loopback for any address.
func dialable(bound string) string {
	host, port, err := net.SplitHostPort(strings.TrimPrefix(bound, "tcp://"))
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); host == "" || host == "*" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "tcp://" + net.JoinHostPort(host, port)
}

// build opens the WAL and binds the router's sockets as a part of p.
func (c *middletierConfig) build(p *process) (middletier.Addrs, *wal.Log, error) {
	if c.id == "" {
		return middletier.Addrs{}, nil, c.f.required("id")
	}
	if c.dataDir == "" {
		return middletier.Addrs{}, nil, c.f.required("data.dir")
	}
	opts := middletier.Options{ID: c.id, StateDir: c.dataDir,
		IngestAddr: c.ingest, ConsumerAddr: c.consumer, StreamAddr: c.stream, FeedAddr: c.feed,
		Consumers: append(splitList(c.consumers), c.moreConsumers...), SendStall: c.sendStall, LeaseTTL: c.leaseTTL}
	log, err := c.wal.open(p, "middletier", filepath.Join(c.dataDir, "wal"), firstOf(c.dataShown, c.dataDir))
	if err != nil {
		return middletier.Addrs{}, nil, err
	}
	r, err := middletier.New(opts, log, p.reg, p.lg)
	if err != nil {
		return middletier.Addrs{}, nil, c.listenError(err)
	}
	p.onClose("middletier", r.Close)
	p.add(part{name: "middletier", stage: stageRouter, run: r.Run})
	a := r.Addrs()
	if c.command.bound, err = c.buildCommands(p, a.Ingest); err != nil {
		return middletier.Addrs{}, nil, err
	}
	httpAddr := ""
	if c.httpListen != "" {
		ln, err := listen(c.f.name("http.listen"), c.httpListen)
		if err != nil {
			return middletier.Addrs{}, nil, err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{Registry: p.reg}))
		p.health(mux, http.StatusServiceUnavailable, log.Err, log.Err)
		p.mountPprof(mux)
		p.serveHTTP("middletier http", ln, mux, time.Second)
		httpAddr = ln.Addr().String()
	}
	p.built("middletier listening", "id", c.id, "ingest", a.Ingest, "consumer", a.Consumer,
		"stream", a.Stream, "feed", a.Feed, "command", c.command.bound, "http", httpAddr,
		"first_index", log.FirstIndex(), "last_index", log.LastIndex())
	return a, log, nil
}

// listenError names the flag of a socket that could not bind.
func (c *middletierConfig) listenError(err error) error {
	var le *middletier.ListenError
	if !errors.As(err, &le) {
		return err
	}
	cause := le.Err
	var errno syscall.Errno
	if errors.As(err, &errno) {
		cause = errno
	}
	return fmt.Errorf("listen %s (--%s): %w", le.Addr, c.f.name(le.Socket+".addr"), cause)
}

// runMiddletier serves the router tier until SIGTERM, then closes its
// sockets, makes its state durable and closes the WAL last.
func runMiddletier(ctx context.Context, args []string) error {
	var (
		c  = newMiddletierConfig()
		lc = newLogConfig()
		f  = newFlags("middletier")
	)
	c.register(f)
	lc.register(f)
	return runTier(ctx, f, args, &lc, func(p *process) error {
		_, _, err := c.build(p)
		return err
	})
}
