package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childEngine is the pid of the ingest process this test binary started.
func childEngine(t *testing.T) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(ingest") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			return pid
		}
	}
	t.Fatal("no ingest child process")
	return 0
}

// TestSpawnedEngineCrashFailsRun: a frontend the bench started that dies
// while the devices send is a failed run, reported as the engine's exit,
// not a run that passes with a few "conn_lost" among its errors.
func TestSpawnedEngineCrashFailsRun(t *testing.T) {
	c := config{Spawn: binPath, Devices: 4, Window: 4, Rate: 20, Size: 150, Shape: "sensor", Sources: 1,
		Duration: 3 * time.Second, Drain: 2 * time.Second, Quiet: true, JSON: filepath.Join(t.TempDir(), "r.json")}
	killed := make(chan struct{})
	c.onSendStart = func() {
		pid := childEngine(t)
		go func() {
			defer close(killed)
			time.Sleep(time.Second)
			syscall.Kill(pid, syscall.SIGKILL)
		}()
	}
	err := run(c)
	<-killed
	if err == nil || !strings.Contains(err.Error(), "frontend exited during the run") {
		t.Fatalf("run with the engine killed mid-run: err = %v, want the engine's exit reported", err)
	}
	t.Log(err)
}

// TestCheckIgnoresEarlierRun: two runs one after the other against the
// same engine, with the same device ids: the second run's check must judge
// the second run's messages only. The store still holds the first run's
// seq 1, 2, 3… of every device; counted in, each looks stored twice (and
// would hide a message of the second run that was lost).
func TestCheckIgnoresEarlierRun(t *testing.T) {
	eng, err := spawnAll(context.Background(), binPath, "")
	if err != nil {
		t.Fatal(err)
	}
	defer eng.stop()
	dir := t.TempDir()
	for i := range 2 {
		c := config{URL: eng.url, Insecure: true, Check: eng.query, Devices: 4, Rate: 20, Window: 4, Size: 150,
			Shape: "sensor", Sources: 1, Duration: 2 * time.Second, Drain: 5 * time.Second, CheckWait: 10 * time.Second,
			Quiet: true, JSON: filepath.Join(dir, strconv.Itoa(i)+".json")}
		r := runResult(t, c)
		if cp := r.Completeness; cp == nil || cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != r.Acked {
			t.Fatalf("run %d: completeness %+v, %d acknowledged", i+1, cp, r.Acked)
		}
	}
}
