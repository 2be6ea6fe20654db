package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

// config is the scenario, from flags.
type config struct {
	URL        string
	Proto      string // ws, mqtt (3.1.1) or mqtt5
	SecretFile string
	Insecure   bool
	Spawn      string // path of the ingest binary to start a frontend with
	Devices    int
	Rate       float64 // messages per second per device; 0: closed loop
	Window     int     // frames in flight per device
	Size       int     // approximate message size, bytes
	Shape      string  // sensor or gps
	Duration   time.Duration
	Ramp       time.Duration
	Sources    int // spread connections over 127.0.0.1 .. 127.0.0.N
	Drain      time.Duration
	JSON       string
	Plot       string
	Quiet      bool
	Check      string        // query API of the store to check completeness against
	CheckWait  time.Duration // how long the store may take to catch up
	Chaos      bool
	ChaosEvery time.Duration
	// Tiers runs the engine as separate processes (Cluster) and reports
	// each tier's CPU per message and each process's share of the traffic.
	Tiers      bool
	Cluster    shape
	SpawnAll   string // path of the ingest binary to start the whole engine with
	SpawnSinks string // the spawned engine's --sink specs (INGEST_SINK); empty: its default
	Feed       string // live feed to follow for end-to-end latency
	// FramePerWrite writes every frame with a write of its own, as the
	// client package does; by default the frames an ack lets go share one.
	FramePerWrite bool
	CPUProfile    string // write the bench's own CPU profile here

	// Commands, above 0, runs the command mode: the devices answer
	// commands, and the bench submits this many a second in all through
	// the command API, each to a random connected device (commands.go).
	Commands      float64
	CommandsPoll  int    // read every Nth command's state back until final
	CommandsAPI   string // the command API's base URL; default: -url's host
	CommandsToken string // file holding an application token

	// Interval prints a line of ack latency and the engine's process
	// figures (memory, descriptors, goroutines, CPU) every so often: a soak.
	Interval time.Duration
	// PID and Metrics name a running engine's process and metrics
	// endpoint for the interval lines, when the bench did not start it.
	PID     int
	Metrics string

	urls          []string            // device endpoints when the bench runs the engine itself
	engineMetrics string              // the engine's metrics endpoint, for its goroutines
	onSendStart   func(enginePID int) // called when sending starts, with the engine's pid (0: not known)
	onSendEnd     func()              // called when sending stops, before the drain
	checkAPIs     []string            // the stores to check, when there are several (writers with an embedded TSDB each)
	enginePID     int                 // the engine process the bench started, for its CPU time
}

func main() {
	var c config
	flag.StringVar(&c.URL, "url", "", "device endpoint of a running engine (ws://host:8080/v1/ingest)")
	flag.StringVar(&c.Proto, "proto", "ws", "device protocol: ws (protocol v1 over WebSocket), mqtt (MQTT 3.1.1) or mqtt5 (MQTT 5), each message a QoS 1 publish to devices/{id}; with -url give the MQTT endpoint as mqtt://host:1883")
	flag.StringVar(&c.SecretFile, "secret-file", "", "HS256 secret the engine accepts; device tokens are signed with it")
	flag.BoolVar(&c.Insecure, "insecure", false, "the engine runs without auth: devices name themselves with ?device=")
	flag.StringVar(&c.Spawn, "spawn", "", "start a frontend from this ingest binary (loopback, no auth, WAL in a temporary directory) instead of -url")
	flag.IntVar(&c.Devices, "devices", 100, "device connections (up to 100,000)")
	flag.Float64Var(&c.Rate, "rate", 0, "messages per second per device; 0 runs closed loop (a window in flight)")
	flag.IntVar(&c.Window, "window", 16, "messages in flight per device")
	flag.IntVar(&c.Size, "size", 200, "approximate message size in bytes")
	flag.StringVar(&c.Shape, "shape", "sensor", "message shape: sensor or gps")
	flag.DurationVar(&c.Duration, "duration", 20*time.Second, "how long to send, after the ramp-up")
	flag.DurationVar(&c.Ramp, "ramp", 0, "spread the device connections over this long")
	flag.IntVar(&c.Sources, "sources", 1, "spread connections over source addresses 127.0.0.1 .. 127.0.0.N (past ~28,000 connections one address runs out of ports)")
	flag.DurationVar(&c.Drain, "drain", 30*time.Second, "after sending stops, how long to wait for outstanding acknowledgements")
	flag.StringVar(&c.JSON, "json", "", "write the results as JSON to this file")
	flag.StringVar(&c.Plot, "plot", "", "write the latency distribution as SVG to this file")
	flag.BoolVar(&c.Quiet, "quiet", false, "no progress line")
	flag.StringVar(&c.Check, "check", "", "after the run, check every acknowledged message is in the store exactly once, through this Prometheus query API: the base URL /api/v1/query is below (the engine's or Prometheus's http://host:9090, VictoriaMetrics's http://host:8428 or http://host:8428/prometheus, a vmselect's http://vmselect:8481/select/0/prometheus); with -spawn-all, the spawned engine's unless given")
	flag.DurationVar(&c.CheckWait, "check.wait", time.Minute, "how long the store may take to catch up before a missing message counts as lost")
	flag.StringVar(&c.SpawnAll, "spawn-all", "", "start the whole engine (ingest all: frontend, middletier, storage, live feed) from this ingest binary; then measure device → live feed latency and check completeness in the store")
	flag.StringVar(&c.SpawnSinks, "spawn-all.sink", "", "with -spawn-all: the engine's sinks (its --sink, several separated by spaces), e.g. remotewrite+http://127.0.0.1:8428/api/v1/write; check the store with -check")
	flag.StringVar(&c.Feed, "feed", "", "live feed to follow (ws://host:8081/v1/feed, no auth) for device → dashboard latency")
	flag.BoolVar(&c.Chaos, "chaos", false, "with -spawn: run the tiers as separate processes (by default 2 middletiers, a storage writer, 2 frontends: -tiers.*) and SIGKILL a random one every -chaos.every, starting it again; then check completeness")
	flag.DurationVar(&c.ChaosEvery, "chaos.every", 5*time.Second, "mean time between kills")
	flag.BoolVar(&c.Tiers, "tiers", false, "with -spawn: run the tiers as separate processes (-tiers.frontends, -tiers.middletiers, -tiers.writers) and report each tier's CPU time per message, its msg/s per core, the bytes it allocated per message (go_memstats_alloc_bytes_total) and each process's share of the traffic; then check completeness")
	flag.IntVar(&c.Cluster.Frontends, "tiers.frontends", 2, "with -tiers or -chaos: frontends, named such that each middletier is the first choice of as many as can be")
	flag.IntVar(&c.Cluster.Middletiers, "tiers.middletiers", 2, "with -tiers or -chaos: middletiers")
	flag.IntVar(&c.Cluster.Writers, "tiers.writers", 1, "with -tiers or -chaos: storage writers, one writer group when more than one")
	flag.StringVar(&c.Cluster.Sink, "tiers.sink", "", "with -tiers or -chaos: the writers' --sink (e.g. remotewrite+http://127.0.0.1:8428/api/v1/write; check that store with -check); empty: an embedded TSDB per writer, each checked")
	flag.StringVar(&c.CPUProfile, "cpuprofile", "", "write the bench's own CPU profile to this file (go tool pprof)")
	flag.BoolVar(&c.FramePerWrite, "frame-per-write", false, "write every frame with a write system call of its own, as the client package does; by default a device writes the frames one ack lets go with one write (each frame still holds one message)")
	flag.Float64Var(&c.Commands, "commands", 0, "command mode: the devices (the client package's, sending no messages) answer every command, and the bench submits this many commands a second in all through the command API, each to a random connected device; it measures submit → 202, API → device and API → result, and fails the run if an accepted command is not delivered and acknowledged (with -spawn-all or -url)")
	flag.IntVar(&c.CommandsPoll, "commands.poll", 10, "with -commands: read every Nth command's state back (GET /v1/commands/{cid}, every 2 ms from the device's answer) for API → result latency; 0: none")
	flag.StringVar(&c.CommandsAPI, "commands.api", "", "with -commands and -url: the command API's base URL (default: -url's scheme and host, as http or https)")
	flag.StringVar(&c.CommandsToken, "commands.token-file", "", "with -commands and -url: a file holding an application token (ingest token --scope commands); default: one signed with -secret-file")
	flag.DurationVar(&c.Interval, "interval", 0, "every so long, print a line: acknowledged/s, ack p50/p99/p99.9/max and device → feed p99 in that interval, and the engine's resident memory, open files, goroutines, heap and CPU (a soak; 0: none)")
	flag.IntVar(&c.PID, "pid", 0, "with -url and -interval: the engine's process id, for its memory, open files and CPU")
	flag.StringVar(&c.Metrics, "metrics", "", "with -url: the engine's metrics endpoint (http://host:8080/metrics), for its goroutines and heap (-interval) and the run's fsync, allocation and store-latency figures")
	flag.Parse()

	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	if err := c.validate(); err != nil {
		return err
	}
	if c.enginePID == 0 {
		c.enginePID, c.engineMetrics = c.PID, c.Metrics
	}
	raiseFileLimit(c.Devices)
	if c.CPUProfile != "" {
		f, err := os.Create(c.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	if c.Commands > 0 {
		return runCommands(ctx, c, lg)
	}
	if c.Chaos || c.Tiers {
		return runCluster(ctx, c, lg)
	}
	var spawned *engine // the engine the bench started, whose exit fails the run
	if c.SpawnAll != "" {
		eng, err := spawnAll(ctx, c.SpawnAll, c.SpawnSinks)
		if err != nil {
			return err
		}
		defer eng.stop()
		spawned = eng
		c.URL, c.Insecure, c.Feed, c.enginePID, c.engineMetrics = eng.url, true, eng.feed, eng.pid, eng.metrics
		if c.Check == "" {
			if eng.query == "none" {
				return fmt.Errorf("the engine has no embedded sink (-spawn-all.sink %q): give the store's query API with -check", c.SpawnSinks)
			}
			c.Check = eng.query
		}
		if c.mqtt() {
			c.URL = eng.mqtt
		}
	}
	if c.Spawn != "" {
		eng, err := spawnFrontend(ctx, c.Spawn)
		if err != nil {
			return err
		}
		defer eng.stop()
		spawned = eng
		c.URL, c.Insecure, c.enginePID, c.engineMetrics = eng.url, true, eng.pid, eng.metrics
		if c.mqtt() {
			c.URL = eng.mqtt
		}
		defer func() {
			fmt.Fprintf(os.Stderr, "frontend: %s\n", eng.memSummary())
		}()
	}
	if c.Proto == "mqtt5" {
		c.URL = "mqtt5://" + strings.TrimPrefix(c.URL, "mqtt://")
	}
	runCtx := ctx
	if spawned != nil {
		var cancel context.CancelFunc
		runCtx, cancel = spawned.watch(ctx)
		defer cancel()
	}
	res, err := load(runCtx, c, lg)
	// An engine that exits on the terminal's ^C with the bench is not a
	// crash: then the bench's own interruption is the error.
	if xerr := spawned.exitErr(); xerr != nil && ctx.Err() == nil {
		// What the devices saw until then is printed, but the run failed.
		if err == nil {
			report(c, res)
		}
		return xerr
	}
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		report(c, res)
		return errInterrupted
	}
	return report(c, res)
}

// errInterrupted fails a run cut short by SIGINT or SIGTERM: what it
// measured until then is printed, but it did not drain, nor check the
// store.
var errInterrupted = errors.New("interrupted: the run was cut short, without its drain or its completeness check")

// report prints the results, writes the JSON and the plot, and fails the
// run when a message was lost or duplicated.
func report(c config, res *result) error {
	res.print(os.Stdout)
	if err := writeJSON(c.JSON, res); err != nil {
		return err
	}
	if c.Plot != "" {
		if err := os.WriteFile(c.Plot, res.svg(), 0o644); err != nil {
			return fmt.Errorf("write plot: %w", err)
		}
	}
	if res.Acked == 0 {
		return errors.New("no message was acknowledged")
	}
	if cp := res.Completeness; cp != nil && (cp.Lost > 0 || cp.Duplicated > 0) {
		return fmt.Errorf("%d acknowledged messages lost, %d duplicated", cp.Lost, cp.Duplicated)
	}
	return nil
}

// runCluster runs the engine as separate processes and checks
// completeness in the store; with -chaos it kills them at random while the
// load runs, without, it reports each tier's CPU per message.
func runCluster(ctx context.Context, c config, lg *slog.Logger) error {
	cl, err := startCluster(c.Spawn, c.Cluster)
	if err != nil {
		return err
	}
	c.urls, c.Insecure = cl.devices, true
	if c.Check == "" && len(cl.queries) > 0 {
		c.Check, c.checkAPIs = cl.queryURL, cl.queries
	}
	chaosCtx, stopChaos := context.WithCancel(ctx)
	var kills map[string]*recovery
	var chaosErr error
	done := make(chan struct{})
	var before, after []reading
	if c.Chaos {
		go func() {
			defer close(done)
			kills, chaosErr = cl.chaos(chaosCtx, c.ChaosEvery)
		}()
		// The chaos stops when sending stops; the drain and the check run
		// on a whole engine.
		c.onSendEnd = func() { stopChaos(); <-done }
	} else {
		close(done)
		c.onSendStart = func(int) { before = cl.read() }
		c.onSendEnd = func() { after = cl.read() }
	}
	res, err := load(ctx, c, lg)
	if res != nil && before != nil && after != nil {
		res.Tiers = cl.figures(before, after)
	}
	stopChaos()
	<-done
	// A run that lost or doubled messages keeps its data directories and
	// every process's log, for the post-mortem.
	failed := err != nil || chaosErr != nil || (res.Completeness == nil && ctx.Err() == nil) ||
		res.Completeness != nil && (res.Completeness.Lost > 0 || res.Completeness.Duplicated > 0)
	if failed {
		cl.saveMetrics()
		if res != nil && res.Completeness != nil {
			saveAcked(filepath.Join(cl.dir, "acked-not-stored.txt"), res.Completeness.LostAll)
		}
	}
	stopErr := cl.stop(failed)
	if failed {
		fmt.Fprintf(os.Stderr, "bench: the engine's data and logs are kept in %s\n", cl.dir)
	}
	if err != nil {
		return err
	}
	if chaosErr != nil {
		return chaosErr
	}
	res.Chaos = kills
	if ctx.Err() != nil {
		report(c, res)
		return errInterrupted
	}
	if rerr := report(c, res); rerr != nil {
		return rerr
	}
	return stopErr
}

func (c config) validate() error {
	switch {
	case c.URL == "" && c.Spawn == "" && c.SpawnAll == "", c.URL != "" && (c.Spawn != "" || c.SpawnAll != ""), c.Spawn != "" && c.SpawnAll != "":
		return errors.New("give one of -url, -spawn and -spawn-all")
	case c.Proto != "" && c.Proto != "ws" && !c.mqtt():
		return errors.New("-proto must be ws, mqtt or mqtt5")
	case c.mqtt() && c.URL != "" && !strings.HasPrefix(c.URL, "mqtt://"):
		return errors.New("-proto mqtt and mqtt5 take an MQTT endpoint: -url mqtt://host:1883")
	case c.mqtt() && c.Chaos:
		return errors.New("-chaos runs WebSocket devices only")
	case c.Chaos && c.Spawn == "":
		return errors.New("-chaos runs the engine itself: give -spawn")
	case c.Chaos && c.ChaosEvery <= 0:
		return errors.New("-chaos.every must be positive")
	case c.Tiers && (c.Spawn == "" || c.mqtt()):
		return errors.New("-tiers runs the engine itself with WebSocket devices: give -spawn")
	case (c.Tiers || c.Chaos) && c.Cluster.Sink != "" && c.Check == "":
		// The writers store into that sink alone: without its query API
		// the completeness check would not run, and the run would pass.
		return errors.New("-tiers.sink: give the store's query API with -check")
	case (c.Tiers || c.Chaos) && (c.Cluster.Frontends > 64 || c.Cluster.Middletiers > 64 || c.Cluster.Writers > 64):
		return errors.New("-tiers.frontends, -tiers.middletiers and -tiers.writers must be at most 64")
	case c.URL != "" && c.SecretFile == "" && !c.Insecure:
		return errors.New("give -secret-file, or -insecure for an engine without auth")
	case c.Devices < 1 || c.Devices > 100_000:
		return errors.New("-devices must be 1 to 100,000")
	case c.Window < 1:
		return errors.New("-window must be at least 1")
	case c.Rate < 0:
		return errors.New("-rate must not be negative")
	case c.Shape != "sensor" && c.Shape != "gps":
		return errors.New("-shape must be sensor or gps")
	case c.Sources < 1 || c.Sources > 250:
		return errors.New("-sources must be 1 to 250")
	case c.Duration <= 0:
		return errors.New("-duration must be positive")
	case c.Interval < 0:
		return errors.New("-interval must not be negative")
	case (c.PID != 0 || c.Metrics != "") && c.URL == "":
		return errors.New("-pid and -metrics name an engine given with -url")
	case c.Commands < 0 || c.CommandsPoll < 0:
		return errors.New("-commands and -commands.poll must not be negative")
	case c.Commands == 0 && (c.CommandsAPI != "" || c.CommandsToken != ""):
		return errors.New("-commands.api and -commands.token-file go with -commands")
	case c.Commands > 0 && (c.Spawn != "" || c.Chaos):
		return errors.New("-commands needs the command API: give -spawn-all or -url")
	case c.Commands > 0 && (c.mqtt() || c.Feed != "" || c.Check != "" || c.Plot != ""):
		return errors.New("-commands runs WebSocket devices that send no messages: no -proto mqtt, -feed, -check or -plot")
	}
	return nil
}

// mqtt reports whether the devices speak MQTT.
func (c config) mqtt() bool { return c.Proto == "mqtt" || c.Proto == "mqtt5" }

// raiseFileLimit lifts RLIMIT_NOFILE to what the devices need, as far as
// the hard limit allows.
func raiseFileLimit(devices int) {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return
	}
	want := uint64(devices) + 1024 // one socket per device, and some slack
	if lim.Cur >= want {
		return
	}
	lim.Cur = min(want, lim.Max)
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) != nil || lim.Cur < want {
		fmt.Fprintf(os.Stderr, "bench: open-file limit %d is below the %d the devices need\n", lim.Cur, want)
	}
}

// writeJSON writes the results v as indented JSON to path; nothing when
// path is empty.
func writeJSON(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}
