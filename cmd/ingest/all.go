//go:build !nostorage

package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ingest-io/ingest/feed"
	"github.com/ingest-io/ingest/internal/dirlock"
	"github.com/ingest-io/ingest/storage"
)

// allConfig is ingest all: every tier in one process, over loopback.
type allConfig struct {
	dataDir        string
	storageTimeout time.Duration
	fe             frontendConfig
	mt             middletierConfig
	st             storageConfig
	fd             feedConfig
	auth           authConfig
	registry       registryConfig
	tls            tlsConfig
	selfMonitor    selfMonitorConfig
	log            logConfig
}

// newAllConfig returns the tiers' configs with the defaults of an engine
// on loopback: the usual ports for devices, the feed and the query API,
// kernel-chosen ones for the middletier's sockets.
func newAllConfig() *allConfig {
	c := &allConfig{dataDir: "data", storageTimeout: 5 * time.Second,
		fe: newFrontendConfig(), mt: newMiddletierConfig(), st: newStorageConfig(), fd: newFeedConfig(), selfMonitor: newSelfMonitorConfig(), log: newLogConfig()}
	c.fe.listen, c.fe.mqttListen, c.fe.id, c.fe.drain = "127.0.0.1:8080", "127.0.0.1:1883", "fe-0", 2*time.Second
	loop := "tcp://127.0.0.1:0"
	c.mt.id, c.mt.ingest, c.mt.consumer, c.mt.stream, c.mt.feed, c.mt.httpListen = "mt-0", loop, loop, loop, loop, ""
	c.mt.command.addr = loop
	c.st.httpListen = "127.0.0.1:9090"
	c.fd.listen, c.fd.id = "127.0.0.1:8081", "feed"
	return c
}

func (c *allConfig) register(fs *flag.FlagSet) {
	tier := func(name string) flags { return flags{fs: fs, prefix: allPrefixes[name], except: allExceptions[name]} }
	root := flags{fs: fs}
	root.str(&c.dataDir, "data.dir", "data directory; every tier keeps its state below it (frontend/wal, middletier, storage) unless its own flag puts it elsewhere")
	root.duration(&c.storageTimeout, "drain.storage-timeout", "at shutdown, how long the storage writer may take to store what the middletier holds; what it has not stays in the middletier's WAL for the next start")
	c.fe.register(tier("frontend"))
	c.mt.register(tier("middletier"))
	st := tier("storage")
	st.except = maps.Clone(st.except)
	st.except["sink"] = "registered under its own name below"
	c.st.register(st)
	root.value(&c.st.sinks, "sink", sinkUsage())
	c.st.sinkName = "sink"
	c.fd.register(tier("feed"))
	c.auth.register(root, "devices (device id from ?device=) and dashboard readers")
	c.registry.register(root, "whose labels go on every series of a device, whose groups the feed filters by, and whose disabled devices the frontend refuses")
	c.tls.register(root, "the device endpoint (--listen), MQTT (--mqtt.listen), the feed and status page (--feed.listen) and the query API (--storage.http.listen)")
	c.selfMonitor.register(root)
	c.log.register(root)
	for name, usage := range map[string]string{
		"wal.dir":             "WAL directory of the frontend (default <data.dir>/frontend/wal)",
		"middletier.data.dir": "data directory of the middletier (default <data.dir>/middletier)",
		"storage.data.dir":    "directory of the embedded TSDB (default <data.dir>/storage)",
		"middletier.consumers": "comma-separated durable consumers beside the storage writer's (--storage.consumer, one per --sink), " +
			"which the middletier always keeps entries for",
	} {
		fs.Lookup(name).Usage = usage
	}
}

// allHeader heads ingest all --help: how its flags relate to the tiers'.
func allHeader() string {
	var b strings.Builder
	b.WriteString("Runs every tier in one process; they talk over ZeroMQ on loopback as separate processes do.\n" +
		"It has every flag of the tiers: the frontend's under their own names, the others' with their\n" +
		"tier's name as a prefix (--feed.listen is the feed's --listen, --storage.tsdb.retention the\n" +
		"storage writer's --tsdb.retention), but for these, which the tiers share:\n" +
		wrap("--"+strings.Join(allShared, ", --"), "  ", 96) + "and these, which cannot apply here:\n")
	var lines []string
	for tier, ex := range allExceptions {
		for name, why := range ex {
			lines = append(lines, fmt.Sprintf("  ingest %s --%s: %s", tier, name, why))
		}
	}
	sort.Strings(lines)
	b.WriteString(strings.Join(lines, "\n") + "\n")
	return b.String()
}

// wrap breaks s into lines of at most width bytes at spaces, each
// led by indent.
func wrap(s, indent string, width int) string {
	var b strings.Builder
	line := indent
	for _, w := range strings.Fields(s) {
		if len(line) > len(indent) && len(line)+1+len(w) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += w
	}
	return b.String() + line + "\n"
}

// build builds every tier into p, each wired to the middletier over
// loopback, and logs every address.
func (c *allConfig) build(p *process, fs *flag.FlagSet) error {
	if !c.auth.noAuth && !c.auth.keyed() {
		return errNoAuth
	}
	// Before any tier opens anything (the tiers check their own again).
	if err := c.auth.loopbackOnly(c.fe.f, "listen", c.fe.listen, "mqtt.listen", c.fe.mqttListen); err != nil {
		return err
	}
	if err := c.auth.loopbackOnly(c.fd.f, "listen", c.fd.listen); err != nil {
		return err
	}
	if err := c.lockDataDir(p); err != nil {
		return err
	}
	if err := c.tls.build(p); err != nil {
		return err
	}
	devices, err := c.registry.build(p)
	if err != nil {
		return err
	}
	if c.mt.dataDir == "" {
		c.mt.dataDir, c.mt.dataShown = filepath.Join(c.dataDir, "middletier"), c.dataDir
	}
	consumers, err := c.st.sinkConsumers()
	if err != nil {
		return err
	}
	for _, cn := range consumers {
		if !slices.Contains(splitList(c.mt.consumers), cn) {
			c.mt.moreConsumers = append(c.mt.moreConsumers, cn)
		}
	}
	mt, mlog, err := c.mt.build(p)
	if err != nil {
		return err
	}
	if c.st.dataDir == "" {
		c.st.dataDir, c.st.dataShown = filepath.Join(c.dataDir, "storage"), c.dataDir
	}
	c.st.direct = []storage.Endpoints{{Stream: mt.Stream, Consumer: mt.Consumer}}
	c.st.settle = p.settleWAL("storage writer", mlog, c.storageTimeout)
	c.st.selfMonitor = &c.selfMonitor
	query, err := c.st.build(p, devices, flagValues(fs))
	if err != nil {
		return err
	}
	if c.fe.walDir == "" {
		c.fe.walDir, c.fe.walShown = filepath.Join(c.dataDir, "frontend", "wal"), c.dataDir
	}
	c.fe.uplink.direct = []string{mt.Ingest}
	c.fe.devices = devices
	if c.mt.command.bound != "" {
		c.fe.commands.direct = []string{c.mt.command.bound}
	}
	_, devAddr, err := c.fe.build(p, &c.auth)
	if err != nil {
		return err
	}
	c.fd.direct = []feed.Source{{Feed: mt.Feed, Consumer: mt.Consumer}}
	feedAddr, err := c.fd.build(p, &c.auth, devices)
	if err != nil {
		return err
	}
	dev, ws, web := devAddr.String(), p.scheme("ws")+"://", p.scheme("http")+"://"
	queryAPI := "none" // no embedded sink: the writer serves /metrics alone
	if slices.ContainsFunc(c.st.sinks.values, func(v string) bool { return strings.Contains(" "+v, " embedded") }) {
		queryAPI = web + query + "/api/v1/"
	}
	p.lg.Info("engine running (all tiers in one process)",
		"devices", ws+dev+"/v1/ingest", "metrics", web+dev+"/metrics",
		"live_feed", ws+feedAddr+"/v1/feed", "query_api", queryAPI,
		"status", web+feedAddr+"/status/",
		"middletier_stream", mt.Stream, "middletier_feed", mt.Feed, "data", c.dataDir)
	return nil
}

// lockDataDir holds the data directory for the life of the process, so
// that a second engine on it is told which process has it.
func (c *allConfig) lockDataDir(p *process) error {
	if err := os.MkdirAll(c.dataDir, 0o750); err != nil {
		return fmt.Errorf("create data directory (--data.dir): %w", err)
	}
	f, err := dirlock.Lock(filepath.Join(c.dataDir, "LOCK"))
	if err != nil {
		return inUse(c.dataDir, err)
	}
	p.onClose("data directory", f.Close)
	return nil
}

// runAll runs every tier in one process over loopback, on a data directory:
// the embedded default (make run). The tiers still talk over ZeroMQ on
// loopback, exactly as they do as separate processes. At SIGTERM it stops
// them in dependency order (process.go): devices drain, the uplink hands
// the middletier what the frontend's WAL holds, the feed closes its
// readers, the storage writer stores what the middletier holds, the
// middletier stops; the WALs and the store close last.
func runAll(ctx context.Context, args []string) error {
	c := newAllConfig()
	f := newFlags("all")
	c.register(f.fs)
	return runProcess(ctx, f, args, allHeader(), &c.log, func(p *process) error {
		p.announce = slog.LevelDebug // the engine's own line lists every address
		return c.build(p, f.fs)
	})
}
