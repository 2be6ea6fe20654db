package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3"); without
// it the module version and VCS revision recorded by the Go toolchain are
// printed.
var version = ""

// variant names a build that leaves subcommands out (" nostorage").
var variant = ""

// runVersion prints the binary's version: `ingest version` or `ingest --version`.
func runVersion(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(os.Stdout, versionString())
	return nil
}

func versionString() string {
	v, rev, dirty := version, "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	s := "ingest " + v
	if rev != "" {
		s += " " + rev + dirty
	}
	return s + variant + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}
