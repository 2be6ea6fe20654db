package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// With --debug.pprof, every HTTP port of the process (the device port, the
// middletier's metrics port, the query API's, the feed's) serves the
// profiling endpoints; without it, none does.
func TestDebugPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("pprof=%v", on), func(t *testing.T) {
			ports := map[string]string{}
			for _, name := range []string{"listen", "middletier.http.listen", "storage.http.listen", "feed.listen"} {
				ports[name] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
			}
			args := []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--mqtt.listen", "127.0.0.1:0"}
			for name, addr := range ports {
				args = append(args, "--"+name, addr)
			}
			if on {
				args = append(args, "--debug.pprof")
			}
			p := &tierProc{t: t, name: "all", ready: regexp.MustCompile(`msg="engine running`), args: args}
			p.start()
			defer func() {
				if err := p.stop(); err != nil {
					t.Error(err)
				}
			}()
			for name, addr := range ports {
				for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap?debug=1"} {
					resp, err := http.Get("http://" + addr + path)
					if err != nil {
						t.Fatalf("--%s: GET %s: %v", name, path, err)
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case on && resp.StatusCode != http.StatusOK:
						t.Errorf("--%s with --debug.pprof: GET %s: %s", name, path, resp.Status)
					case on && path == "/debug/pprof/cmdline" && !strings.Contains(string(body), "--debug.pprof"):
						t.Errorf("--%s: GET %s: %q, want the command line", name, path, body)
					case !on && resp.StatusCode != http.StatusNotFound:
						t.Errorf("--%s without --debug.pprof: GET %s: %s, want 404", name, path, resp.Status)
					}
				}
			}
		})
	}
}

// Every tier has --debug.pprof, off by default.
func TestDebugPprofFlag(t *testing.T) {
	for _, sub := range []string{"all", "frontend", "middletier", "storage", "feed"} {
		_, help := helpFlags(t, sub)
		if !regexp.MustCompile(`(?m)^  --debug\.pprof \(INGEST_DEBUG_PPROF\)\n\s+serve Go's profiling endpoints.*\(default false\)$`).MatchString(help) {
			t.Errorf("ingest %s --help has no --debug.pprof, off by default:\n%s", sub, help)
		}
	}
}
