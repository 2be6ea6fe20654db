package main

import (
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
