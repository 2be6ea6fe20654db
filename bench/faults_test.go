package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/loadgen"
)

// runSignalled runs a paced load against a frontend the bench starts, and
// sends the frontend sig one second after the devices start sending. It
// returns the run's error, which must report the engine's exit.
func runSignalled(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	c := config{Spawn: binPath, Devices: 4, Window: 4, Rate: 20, Size: 150, Shape: "sensor", Sources: 1,
		Duration: 3 * time.Second, Drain: 2 * time.Second, Quiet: true, JSON: filepath.Join(t.TempDir(), "r.json")}
	signalled := make(chan struct{})
	c.onSendStart = func(pid int) {
		if pid == 0 {
			t.Error("the spawned engine's pid is not known at the start of sending")
			close(signalled)
			return
		}
		go func() {
			defer close(signalled)
			time.Sleep(time.Second)
			syscall.Kill(pid, sig)
		}()
	}
	err := run(c)
	<-signalled
	if err == nil || !strings.Contains(err.Error(), "frontend exited during the run") {
		t.Fatalf("run with the engine sent %v mid-run: err = %v, want the engine's exit reported", sig, err)
	}
	return err
}

// TestInterruptedRunFails: a run interrupted (^C, SIGINT to the bench)
// is cut short, without its drain or its check: it prints what it measured
// until then, and fails, rather than exiting 0 as a run that completed.
func TestInterruptedRunFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    config
	}{
		{"spawn", config{Spawn: binPath}},
		{"spawn-all with check", config{SpawnAll: binPath, CheckWait: 10 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.Devices, c.Window, c.Rate, c.Size, c.Shape, c.Sources = 4, 4, 20, 150, "sensor", 1
			c.Duration, c.Drain, c.Quiet, c.JSON = 4*time.Second, 2*time.Second, true, filepath.Join(t.TempDir(), "r.json")
			interrupted := make(chan struct{})
			c.onSendStart = func(int) {
				go func() {
					defer close(interrupted)
					time.Sleep(time.Second)
					syscall.Kill(os.Getpid(), syscall.SIGINT) // run's signal.NotifyContext takes it
				}()
			}
			err := run(c)
			<-interrupted
			if err == nil || !strings.Contains(err.Error(), "interrupted") {
				t.Fatalf("a run interrupted after 1 s of 4: err = %v, want it to fail as interrupted", err)
			}
			var r result
			if b, rerr := os.ReadFile(c.JSON); rerr != nil || json.Unmarshal(b, &r) != nil || r.Acked == 0 {
				t.Fatalf("what the interrupted run measured is not reported: %v, %+v", rerr, r)
			}
		})
	}
}

// TestSpawnedEngineCrashFailsRun: a frontend the bench started that dies
// while the devices send is a failed run, reported as the engine's exit,
// not a run that passes with a few "conn_lost" among its errors.
func TestSpawnedEngineCrashFailsRun(t *testing.T) {
	t.Log(runSignalled(t, syscall.SIGKILL))
}

// TestCheckIgnoresEarlierRun: runs one after the other against the same
// engine, with the same device ids: each run's check must judge its own
// messages only. The store still holds the earlier runs' seq 1, 2, 3… of
// every device; counted in, each looks stored twice (and would hide a
// message of the later run that was lost).
//
// The last two runs' devices send more than a thousand messages a second
// each, so their times run ahead of the clock: the first of them ends past
// the start of the next. The next run's messages must not take those
// times: at a time its series already holds, the store drops the next
// run's sample (one value per series and time), which the check rightly
// finds missing, and the earlier run's samples inside the next run's
// window count as its duplicates.
func TestCheckIgnoresEarlierRun(t *testing.T) {
	eng, err := spawnAll(context.Background(), binPath, "")
	if err != nil {
		t.Fatal(err)
	}
	defer eng.stop()
	dir := t.TempDir()
	paced := config{Devices: 4, Rate: 20, Window: 4, Duration: 2 * time.Second}
	ahead := config{Devices: 2, Window: 64, Duration: 3 * time.Second}
	for i, c := range []config{paced, paced, ahead, ahead} {
		c.URL, c.Insecure, c.Check, c.Size, c.Shape, c.Sources = eng.url, true, eng.query, 150, "sensor", 1
		c.Drain, c.CheckWait, c.Quiet, c.JSON = 5*time.Second, 10*time.Second, true, filepath.Join(dir, strconv.Itoa(i)+".json")
		r := runResult(t, c)
		cp := r.Completeness
		if cp == nil || cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != r.Acked {
			t.Fatalf("run %d: completeness %+v, %d acknowledged", i+1, cp, r.Acked)
		}
		// The test needs the first run ahead to end well ahead of the clock.
		if i == 2 && cp.AheadMS < 3000 {
			t.Fatalf("the first run ahead ran %d ms ahead of the clock; the test needs 3 s or more (%d messages in %v)",
				cp.AheadMS, r.Acked, c.Duration)
		}
	}
}

// TestLatencyPastHistogramRange: an ack that takes longer than the
// histograms' highest value (a message in flight while the engine was
// down for minutes) still counts, as the slowest, rather than vanishing
// from the percentiles and the max.
func TestLatencyPastHistogramRange(t *testing.T) {
	st := newStats(10)
	st.late = newShards()
	sec := int64(time.Second)
	ms := []loadgen.Msg{
		{Seq: 1, TS: 1, Due: 0, Sent: 0},
		{Seq: 2, TS: 2, Due: 0, Sent: 290 * sec}, // 300 s after its slot, acknowledged 10 s after its write
	}
	st.settle(0, ms, 300*sec)
	h := merged(st.shards)
	if h.TotalCount() != 2 || h.Max() < 299_000_000 {
		t.Errorf("ack latency: %d recorded, max %d µs; want 2, the max 300 s", h.TotalCount(), h.Max())
	}
	l := merged(st.late)
	if l.TotalCount() != 2 || l.Max() < 289_000_000 {
		t.Errorf("send lag: %d recorded, max %d µs; want 2, the max 290 s", l.TotalCount(), l.Max())
	}
	st.record(0, 200*sec)
	if h := merged(st.shards); h.TotalCount() != 3 {
		t.Errorf("record of 200 s: %d recorded, want 3", h.TotalCount())
	}
}

// TestSpawnedEngineCrashShowsItsPanic: an engine the bench started that
// dies of a Go runtime crash (here SIGQUIT, whose dump is that of a
// panic or a fatal error: a first line saying why, then every goroutine's
// stack) fails the run with that first line in the error. The last twenty
// lines alone are the end of the goroutine dump, deep in some stack.
func TestSpawnedEngineCrashShowsItsPanic(t *testing.T) {
	if err := runSignalled(t, syscall.SIGQUIT); !strings.Contains(err.Error(), "SIGQUIT: quit") {
		t.Fatalf("the engine's crash is reported without the line that says what it was:\n%v", err)
	}
}
