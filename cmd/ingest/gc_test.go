package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGCSettings: the engine runs with GOGC=300 unless the environment sets
// GOGC, and keeps a GOMEMLIMIT the environment sets; the Go collector's
// metrics show what the runtime uses.
func TestGCSettings(t *testing.T) {
	gcUsed(t, []string{"GOGC=", "GOMEMLIMIT=123MiB"}, defaultGCPercent, 123<<20)
	gcUsed(t, []string{"GOGC=50", "GOMEMLIMIT=1GiB"}, 50, 1<<30)
}

// gcUsed starts the engine with env and checks the GC percent and the
// memory limit its runtime reports.
func gcUsed(t *testing.T, env []string, gogc, limit float64) {
	t.Helper()
	e := startAll(t, env)
	if got := scrape(t, e.addr, "go_gc_gogc_percent"); got != gogc {
		t.Errorf("%q: go_gc_gogc_percent %v, want %v", env, got, gogc)
	}
	if got := scrape(t, e.addr, "go_gc_gomemlimit_bytes"); got != limit {
		t.Errorf("%q: go_gc_gomemlimit_bytes %v, want %v", env, got, limit)
	}
	stopOrFail(t, e.tierProc)
}

// TestGCMemoryLimitFromCgroup: in a memory cgroup with a limit, and with
// no GOMEMLIMIT in the environment, the engine's soft memory limit is 90 %
// of the cgroup's. The test makes a cgroup of its own (v1 or v2, as root);
// it skips where it cannot.
func TestGCMemoryLimitFromCgroup(t *testing.T) {
	const limit = 1 << 30
	cg, file := memoryCgroup(t, limit)
	e := allProc(t, []string{"GOMEMLIMIT=", "INGEST_TEST_CGROUP=" + cg})
	// The shell moves itself into the cgroup, then becomes the engine.
	e.wrap = []string{"sh", "-c", `echo $$ > "$INGEST_TEST_CGROUP/cgroup.procs" && exec "$@"`, "sh"}
	e.start()
	logsOnFailure(t, 100, e.tierProc)
	if got, want := scrape(t, e.addr, "go_gc_gomemlimit_bytes"), float64(limit*9/10); got != want {
		t.Errorf("go_gc_gomemlimit_bytes %v in a cgroup whose %s is %d, want %v", got, file, limit, want)
	}
	stopOrFail(t, e.tierProc)
}

// memoryCgroup makes a memory cgroup with the limit, removed when the test
// ends, and returns its directory and the name of its limit file.
func memoryCgroup(t *testing.T, limit int64) (dir, file string) {
	t.Helper()
	for _, c := range []struct{ root, marker, file string }{
		{"/sys/fs/cgroup", "cgroup.subtree_control", "memory.max"},                  // v2
		{"/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.limit_in_bytes"}, // v1
	} {
		b, err := os.ReadFile(filepath.Join(c.root, c.marker))
		if err != nil || c.file == "memory.max" && !strings.Contains(string(b), "memory") {
			continue
		}
		dir = filepath.Join(c.root, fmt.Sprintf("ingest-test-%d", os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		t.Cleanup(func() { os.Remove(dir) })
		if err := os.WriteFile(filepath.Join(dir, c.file), []byte(fmt.Sprint(limit)), 0o644); err != nil {
			t.Skipf("cannot set %s: %v", c.file, err)
		}
		return dir, c.file
	}
	t.Skip("no memory cgroup this test can make (not root, or no memory controller)")
	return "", ""
}
