// Command ingest runs the engine's tiers. Each tier is a subcommand; every
// flag has an environment twin (--wal.dir / INGEST_WAL_DIR).
//
// Each tier is a config type that registers its flags and builds the
// tier's parts into a process; ingest all composes the same configs. A
// process runs its parts and stops them in dependency order (process.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// subcommand is one entry point; args excludes its name.
type subcommand struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
	serves        bool // a tier: it serves until stopped (setTimerSlack tunes it)
}

// subcommands in the order ingest --help lists them.
var subcommands = []subcommand{
	{"all", "every tier in one process over loopback, with its data in one directory (make run)", runAll, true},
	{"frontend", "the device tier: WebSocket devices, a WAL acknowledged after fsync, the uplink to the middletiers", runFrontend, true},
	{"middletier", "the router tier: takes frontends' batches into its WAL, streams them to storage writers and feeds", runMiddletier, true},
	{"storage", "a storage writer into the embedded TSDB, and the Prometheus query API over it", runStorage, true},
	{"feed", "the live feed for dashboards (WebSocket), and the status page", runFeed, true},
	{"token", "mint a device's token (or a feed reader's, an application's) with the key the frontend verifies", runToken, false},
	{"version", "print the version, the commit and the Go version the binary was built with", runVersion, false},
	{"help", "list the subcommands, or the flags of one (ingest help frontend)", nil, false}, // run below: it looks subcommands up
}

func lookup(name string) *subcommand {
	for i := range subcommands {
		if subcommands[i].name == name {
			return &subcommands[i]
		}
	}
	return nil
}

func main() {
	if serving(os.Args[1:]) {
		if err := setTimerSlack(); err != nil {
			fmt.Fprintf(os.Stderr, "ingest: %v\n", err)
			os.Exit(2)
		}
	}
	tuneGC()
	os.Exit(run(os.Args[1:]))
}

// serving tells whether args run a tier, a process that serves until it
// is stopped: the one kind that setTimerSlack tunes.
func serving(args []string) bool {
	if len(args) == 0 {
		return false
	}
	sub := lookup(args[0])
	return sub != nil && sub.serves
}

// run runs the command line args and returns the exit code: 0, 1 for a
// failure, 2 for a command line in error.
func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(os.Stdout)
		return 0
	case "-version", "--version":
		args[0] = "version"
	}
	sub := lookup(args[0])
	if sub == nil {
		msg := fmt.Sprintf("ingest: unknown subcommand %q", args[0])
		if s := closest(args[0], names()); s != "" {
			msg += "; did you mean " + s + "?"
		}
		fmt.Fprintf(os.Stderr, "%s\n(ingest --help lists the subcommands)\n", msg)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	runSub := sub.run
	if sub.name == "help" {
		runSub = runHelp
	}
	err := runSub(ctx, args[1:])
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "ingest %s: %v\n", sub.name, err)
		return 2
	}
	fmt.Fprintf(os.Stderr, "ingest %s: %v\n", sub.name, err)
	return 1
}

func names() []string {
	var n []string
	for _, s := range subcommands {
		n = append(n, s.name)
	}
	return n
}

// usage lists the subcommands, a line each.
func usage(w io.Writer) {
	fmt.Fprint(w, "ingest: a durable WebSocket ingestion engine for IoT devices.\n\nusage: ingest <subcommand> [flags]\n\nsubcommands:\n")
	for _, s := range subcommands {
		fmt.Fprintf(w, "  %-11s %s\n", s.name, s.summary)
	}
	fmt.Fprint(w, "\n`ingest <subcommand> --help` lists a subcommand's flags; every flag has an environment\ntwin (--wal.dir / INGEST_WAL_DIR).\n")
}

// runHelp is `ingest help [subcommand]`.
func runHelp(ctx context.Context, args []string) error {
	// `ingest help --help` is what a usage error here points to: it lists
	// the subcommands, as `ingest help` and `ingest help help` do.
	if len(args) == 0 || args[0] == "help" || args[0] == "--help" || args[0] == "-help" || args[0] == "-h" {
		usage(os.Stdout)
		return nil
	}
	sub := lookup(args[0])
	if sub == nil {
		return &usageError{sub: "help", err: fmt.Errorf("unknown subcommand %q", args[0])}
	}
	return sub.run(ctx, []string{"--help"})
}

func newFlags(sub string) flags { return flags{fs: flag.NewFlagSet(sub, flag.ContinueOnError)} }

// runTier parses a tier's flags, builds its process and runs it until ctx
// ends.
func runTier(ctx context.Context, f flags, args []string, lc *logConfig, build func(*process) error) error {
	return runProcess(ctx, f, args, "", lc, build)
}

// runServing is runTier for a tier that serves HTTP: its TLS flags (usage
// names the listeners they cover) and the log flags are registered after
// the tier's own, and the TLS config is built before the tier.
func runServing(ctx context.Context, f flags, args []string, tlsUsage string, build func(*process) error) error {
	var tc tlsConfig
	lc := newLogConfig()
	tc.register(f, tlsUsage)
	lc.register(f)
	return runTier(ctx, f, args, &lc, func(p *process) error {
		if err := tc.build(p); err != nil {
			return err
		}
		return build(p)
	})
}

// runProcess parses the flags (header goes above them in --help), builds
// the process and runs it until ctx ends.
func runProcess(ctx context.Context, f flags, args []string, header string, lc *logConfig, build func(*process) error) error {
	var pprofOn bool
	followLoad := true
	f.boolean(&pprofOn, "debug.pprof", "serve Go's profiling endpoints (/debug/pprof/) on every HTTP port of the process; anyone who reaches a port can profile the process")
	f.boolean(&followLoad, "procs.follow-load", "run goroutines on one processor while the process uses under 0.28 cores (3 s), on all of them (GOMAXPROCS) once it uses over 0.22 cores on one (200 ms): a quiet engine saves the cost of waking threads; ignored when GOMAXPROCS is set")
	if err := parseFlags(f.fs, args, header); err != nil {
		return err
	}
	lg, err := lc.logger()
	if err != nil {
		return &usageError{sub: f.fs.Name(), err: err}
	}
	p := newProcess(lg)
	p.pprof = pprofOn
	if err := build(p); err != nil {
		return errors.Join(err, p.close())
	}
	p.followLoad(followLoad)
	// After the build: a process that stops on its configuration prints
	// the error alone.
	if d, err := timerSlack(); err == nil {
		lg.Info("timer slack", "slack", d, "set_at_start", timerSlackSet)
	}
	start := time.Now()
	err = p.run(ctx)
	lg.Info("ingest "+f.fs.Name()+" stopped", "after", time.Since(start).Round(time.Millisecond))
	return err
}
