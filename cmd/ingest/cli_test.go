package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// runBin runs the built binary with args (and env added) in dir, and
// returns its stdout, its stderr and its exit code.
func runBin(t *testing.T, dir string, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee) && ee.Exited():
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("ingest %q: %v\n%s", args, err, stderr.String())
	return "", "", -1
}

// helpFlags are the flags `ingest <sub> --help` lists, each checked to be
// shown with its environment twin.
func helpFlags(t *testing.T, sub string) (names []string, help string) {
	t.Helper()
	out, errOut, code := runBin(t, "", nil, sub, "--help")
	if code != 0 {
		t.Fatalf("ingest %s --help exited %d: %s", sub, code, errOut)
	}
	for _, m := range regexp.MustCompile(`(?m)^  --(\S+) \((\S+)\)$`).FindAllStringSubmatch(out, -1) {
		if m[2] != envName(m[1]) {
			t.Errorf("ingest %s --help: --%s shown with %s, want %s", sub, m[1], m[2], envName(m[1]))
		}
		names = append(names, m[1])
	}
	if len(names) == 0 {
		t.Fatalf("ingest %s --help lists no flags:\n%s", sub, out)
	}
	return names, out
}

// ingest all has every flag of every tier: the frontend's under the same
// names, the others' under their tier's prefix, the shared ones once; the
// only ones missing are the documented exceptions, each a real flag of its
// tier that all really lacks, and named in all's --help.
func TestAllHasEveryTierFlag(t *testing.T) {
	all, allHelp := helpFlags(t, "all")
	fe, _ := helpFlags(t, "frontend")
	for _, name := range fe {
		if _, excepted := allExceptions["frontend"][name]; excepted {
			continue
		}
		if !slices.Contains(all, name) {
			t.Errorf("ingest frontend --%s: ingest all has no flag of that name", name)
		}
	}
	if got := slices.Sorted(maps.Keys(allExceptions["frontend"])); !slices.Equal(got, []string{"commands.homes", "uplink.dns", "uplink.middletiers"}) {
		t.Errorf("the frontend has flags %v that ingest all lacks, want only --commands.homes, --uplink.middletiers and --uplink.dns", got)
	}
	for tier := range allPrefixes {
		flags, _ := helpFlags(t, tier)
		for _, name := range flags {
			inAll, ok := allFlagName(tier, name)
			switch {
			case ok && !slices.Contains(all, inAll):
				t.Errorf("ingest %s --%s: ingest all has no --%s", tier, name, inAll)
			case !ok && slices.Contains(all, allPrefixes[tier]+name):
				t.Errorf("ingest %s --%s is listed as an exception, but ingest all has --%s", tier, name, allPrefixes[tier]+name)
			}
		}
		for name := range allExceptions[tier] {
			if !slices.Contains(flags, name) {
				t.Errorf("exception %s --%s: ingest %s has no such flag", tier, name, tier)
			}
			if !strings.Contains(allHelp, fmt.Sprintf("ingest %s --%s: ", tier, name)) {
				t.Errorf("ingest all --help does not explain why it lacks ingest %s --%s", tier, name)
			}
		}
	}
}

// ingest with no arguments, --help and help list every subcommand with a
// line each; a misspelt subcommand is named, with the nearest one.
func TestSubcommandList(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
	}{{nil, 2}, {[]string{"--help"}, 0}, {[]string{"-h"}, 0}, {[]string{"help"}, 0}, {[]string{"help", "help"}, 0}, {[]string{"help", "--help"}, 0}, {[]string{"help", "-h"}, 0}} {
		out, errOut, code := runBin(t, "", nil, c.args...)
		if code != c.code {
			t.Errorf("ingest %q exited %d, want %d", c.args, code, c.code)
		}
		text := out + errOut
		for _, s := range subcommands {
			if !regexp.MustCompile(`(?m)^  ` + s.name + ` +` + regexp.QuoteMeta(s.summary) + `$`).MatchString(text) {
				t.Errorf("ingest %q does not list %s with its line:\n%s", c.args, s.name, text)
			}
		}
	}
	for _, c := range []struct{ arg, want string }{
		{"fronted", `ingest: unknown subcommand "fronted"; did you mean frontend?`},
		{"midletier", `ingest: unknown subcommand "midletier"; did you mean middletier?`},
		{"launch", `ingest: unknown subcommand "launch"` + "\n"},
	} {
		_, errOut, code := runBin(t, "", nil, c.arg)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("ingest %s: exit %d, printed %q; want exit 2 and %q", c.arg, code, errOut, c.want)
		}
	}
	if out, _, code := runBin(t, "", nil, "help", "feed"); code != 0 || !strings.Contains(out, "--max-readers (INGEST_MAX_READERS)") {
		t.Errorf("ingest help feed: exit %d, printed %q; want the feed's flags", code, out)
	}
}

// The errors a user meets first say what to do: a duration without a unit,
// a flag that does not exist, a port in use named by its flag.
func TestCLIErrors(t *testing.T) {
	busy := testkit.Listen(t)
	defer busy.Close()
	b := busy.Addr().String()
	loop := "tcp://127.0.0.1:0"
	for _, c := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"duration without unit", nil, []string{"frontend", "--drain-window", "5"}, 2,
			`ingest frontend: invalid value "5" for flag --drain-window: a duration needs a unit: "5s"?`},
		{"duration without unit in all", nil, []string{"all", "--feed.slow-grace", "2.5"}, 2,
			`ingest all: invalid value "2.5" for flag --feed.slow-grace: a duration needs a unit: "2.5s"?`},
		{"duration without unit from the environment", []string{"INGEST_PONG_TIMEOUT=15"}, []string{"feed"}, 2,
			`ingest feed: invalid value "15" for INGEST_PONG_TIMEOUT (--pong-timeout): a duration needs a unit: "15s"?`},
		{"not a duration", nil, []string{"middletier", "--send-stall", "soon"}, 2,
			`ingest middletier: invalid value "soon" for flag --send-stall: not a duration: write it as 5s, 250ms or 1m30s`},
		{"misspelt flag", nil, []string{"frontend", "--rat", "10"}, 2,
			`ingest frontend: flag provided but not defined: --rat; did you mean --rate?`},
		{"frontend port in use", nil, []string{"frontend", "--insecure-no-auth", "--wal.dir", t.TempDir(), "--listen", b}, 1,
			fmt.Sprintf("ingest frontend: listen %s (--listen): address already in use", b)},
		{"feed port in use in all", nil, []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(),
			"--listen", "127.0.0.1:0", "--mqtt.listen", "127.0.0.1:0", "--storage.http.listen", "127.0.0.1:0", "--feed.listen", b}, 1,
			fmt.Sprintf("ingest all: listen %s (--feed.listen): address already in use", b)},
		{"mqtt port in use", nil, []string{"frontend", "--insecure-no-auth", "--wal.dir", t.TempDir(), "--listen", "127.0.0.1:0", "--mqtt.listen", b}, 1,
			fmt.Sprintf("ingest frontend: listen %s (--mqtt.listen): address already in use", b)},
		{"middletier socket in use", nil, []string{"middletier", "--id", "mt-0", "--data.dir", t.TempDir(),
			"--ingest.addr", loop, "--consumer.addr", "tcp://" + b, "--stream.addr", loop, "--http.listen", "127.0.0.1:0"}, 1,
			fmt.Sprintf("ingest middletier: listen tcp://%s (--consumer.addr): address already in use", b)},
		{"storage port in use", nil, []string{"storage", "--data.dir", t.TempDir(), "--http.listen", b}, 1,
			fmt.Sprintf("ingest storage: listen %s (--http.listen): address already in use", b)},
		// Without keys or --insecure-no-auth the frontend and the feed name
		// the flags to give, as all does, before the WAL is opened. Before,
		// they opened it and said "configure JWT keys or set
		// InsecureNoAuth", the names of the packages' option fields.
		{"frontend without auth", nil, []string{"frontend", "--wal.dir", t.TempDir(), "--listen", "127.0.0.1:0"}, 1,
			"ingest frontend: " + errNoAuth.Error()},
		{"feed without auth", nil, []string{"feed", "--middletiers", loop, "--listen", "127.0.0.1:0"}, 1,
			"ingest feed: " + errNoAuth.Error()},
		// Without auth a listener off loopback is refused naming its
		// flag, before the WAL is opened; it was refused after, naming
		// the address the server bound ("check listener [::]:8080").
		{"frontend without auth off loopback", nil, []string{"frontend", "--insecure-no-auth", "--wal.dir", t.TempDir(), "--listen", ":0"}, 1,
			"ingest frontend: --insecure-no-auth serves loopback only: --listen :0 is not"},
		{"mqtt without auth off loopback", nil, []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", "127.0.0.1:0",
			"--mqtt.listen", "0.0.0.0:0", "--storage.http.listen", "127.0.0.1:0", "--feed.listen", "127.0.0.1:0"}, 1,
			"ingest all: --insecure-no-auth serves loopback only: --mqtt.listen 0.0.0.0:0 is not"},
		{"feed without auth off loopback", nil, []string{"feed", "--insecure-no-auth", "--middletiers", loop, "--listen", "[::]:0"}, 1,
			"ingest feed: --insecure-no-auth serves loopback only: --listen [::]:0 is not"},
		{"required flag", nil, []string{"frontend", "--insecure-no-auth"}, 1,
			"ingest frontend: --wal.dir (INGEST_WAL_DIR) is required"},
		// 1ns gathered and wrote the metrics as fast as it could: 60 % of
		// a core, idle.
		{"self-monitoring under a second", nil, []string{"storage", "--data.dir", t.TempDir(), "--http.listen", "127.0.0.1:0",
			"--self-monitor.interval", "1ns"}, 1, "ingest storage: --self-monitor.interval 1ns: give 0 (never) or at least 100ms"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, errOut, code := runBin(t, "", c.env, c.args...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Errorf("ingest %q: exit %d, printed\n%s\nwant exit %d and %q", c.args, code, errOut, c.code, c.want)
			}
		})
	}
}

// A data directory held by another process is refused with that
// process's id: `make run` twice says "data/ is in use by ingest pid N".
func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	args := []string{"all", "--insecure-no-auth", "--data.dir", "data", "--listen", "127.0.0.1:0",
		"--mqtt.listen", "127.0.0.1:0", "--feed.listen", "127.0.0.1:0", "--storage.http.listen", "127.0.0.1:0"}
	first := &tierProc{t: t, name: "all", dir: dir, ready: regexp.MustCompile(`msg="engine running`), args: args}
	first.start()
	defer first.kill()
	_, errOut, code := runBin(t, dir, nil, args...)
	want := fmt.Sprintf("ingest all: data/ is in use by ingest pid %d\n", first.pid())
	if code != 1 || errOut != want {
		t.Errorf("a second ingest all on data/: exit %d, printed %q; want exit 1 and %q", code, errOut, want)
	}

	walDir := t.TempDir()
	fe, _ := startFrontend(t, walDir, "127.0.0.1:0")
	defer fe.kill()
	_, errOut, code = runBin(t, "", []string{"INGEST_AUTH_HS256_SECRET_FILE=" + writeSecret(t)},
		"frontend", "--wal.dir", walDir, "--listen", "127.0.0.1:0")
	want = fmt.Sprintf("ingest frontend: open frontend wal: %s/ is in use by ingest pid %d\n", walDir, fe.pid())
	if code != 1 || errOut != want {
		t.Errorf("a second frontend on its WAL: exit %d, printed %q; want exit 1 and %q", code, errOut, want)
	}
}

func writeSecret(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ingest version prints the version and commit make build stamps, and the
// Go version; make build and make image stamp both.
func TestVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ingest")
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v9.9.9-test -X main.commit=0123abcd", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	want := fmt.Sprintf("ingest v9.9.9-test (commit 0123abcd, %s %s/%s)\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	for _, arg := range []string{"version", "--version"} {
		if out, err := exec.Command(bin, arg).Output(); err != nil || string(out) != want {
			t.Errorf("ingest %s: %v, printed %q, want %q", arg, err, out, want)
		}
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse HEAD: %v", err)
	}
	for _, target := range []string{"build", "image"} {
		out, err := exec.Command("make", "-C", "../..", "-n", target).CombinedOutput()
		if err != nil {
			t.Fatalf("make -n %s: %v\n%s", target, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.Contains(line, " build ") || !strings.Contains(line, "./cmd/ingest") {
				continue
			}
			if !strings.Contains(line, "-X main.version=") || !strings.Contains(line, "-X main.commit="+strings.TrimSpace(string(head))) {
				t.Errorf("make %s builds without stamping the version and commit: %s", target, line)
			}
		}
	}
}

// Without stamps, the version and commit come from what the Go toolchain
// recorded.
func TestVersionString(t *testing.T) {
	goVer := fmt.Sprintf("%s %s/%s)", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	vcs := &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20260101000000-deadbeef0000"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "deadbeef0000"}, {Key: "vcs.modified", Value: "true"}}}
	for _, c := range []struct {
		v, rev string
		bi     *debug.BuildInfo
		want   string
	}{
		{"v1.2.3", "abc", vcs, "ingest v1.2.3 (commit abc, " + goVer},
		{"", "", vcs, "ingest v0.0.0-20260101000000-deadbeef0000 (commit deadbeef0000+dirty, " + goVer},
		{"", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "ingest (devel) (commit unknown, " + goVer},
		{"", "", nil, "ingest (devel) (commit unknown, " + goVer},
	} {
		if got := versionString(c.v, c.rev, c.bi); got != c.want {
			t.Errorf("versionString(%q, %q) = %q, want %q", c.v, c.rev, got, c.want)
		}
	}
}

// No function of the command, nor of its tests, is longer than 80 lines:
// each tier's wiring and each test stays readable at a glance.
func TestNoLongFunctions(t *testing.T) {
	fset := gotoken.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok {
				if n := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1; n > 80 {
					t.Errorf("%s: %s is %d lines, over 80", name, fn.Name.Name, n)
				}
			}
		}
	}
}
