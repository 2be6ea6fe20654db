package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
)

// version and commit are stamped at link time by make build and make image
// (-ldflags "-X main.version=v1.2.3 -X main.commit=<sha>"); without them
// the module version and the VCS revision the Go toolchain recorded are
// printed, when it recorded them.
var (
	version = ""
	commit  = ""
)

// variant names a build that leaves subcommands out (" nostorage").
var variant = ""

// runVersion prints the binary's version: `ingest version` or `ingest --version`.
func runVersion(_ context.Context, args []string) error {
	f := newFlags("version")
	if err := parseFlags(f.fs, args, "Prints the version, the commit and the Go version the binary was built with."); err != nil {
		return err
	}
	bi, _ := debug.ReadBuildInfo()
	fmt.Fprintln(os.Stdout, versionString(version, commit, bi))
	return nil
}

// versionString is "ingest <version>[ nostorage] (commit <sha>, <go version>
// <os>/<arch>)", the version and commit stamped at link time or, failing
// that, taken from bi.
func versionString(v, rev string, bi *debug.BuildInfo) string {
	dirty := ""
	if bi != nil && rev == "" {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "+dirty"
			}
		}
	}
	if v == "" && bi != nil {
		v = bi.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("ingest %s%s (commit %s%s, %s %s/%s)", v, variant, rev, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
