package procs

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// waitProcs waits, up to a deadline, for GOMAXPROCS to be want.
func waitProcs(t *testing.T, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for runtime.GOMAXPROCS(0) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: GOMAXPROCS is %d after 20s, want %d", what, runtime.GOMAXPROCS(0), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFollow drives the test process's own CPU use: idle, it drops to one
// processor; spinning a core, it takes every processor back; idle again,
// one; and when Follow ends, GOMAXPROCS is the runtime's default again.
func TestFollow(t *testing.T) {
	full := runtime.GOMAXPROCS(0)
	if full < 2 {
		t.Skipf("GOMAXPROCS is %d: nothing to follow", full)
	}
	var changes atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, Options{
			Interval: 10 * time.Millisecond,
			Up:       0.5, UpWindow: 50 * time.Millisecond,
			Down: 0.3, DownWindow: 300 * time.Millisecond,
			Changed: func(int, float64) { changes.Add(1) },
		})
	}()
	waitProcs(t, 1, "idle")

	var stop atomic.Bool
	spun := make(chan struct{})
	go func() {
		defer close(spun)
		for !stop.Load() {
		}
	}()
	waitProcs(t, full, "one core spinning")
	stop.Store(true)
	<-spun
	waitProcs(t, 1, "idle again")
	if n := changes.Load(); n < 3 {
		t.Errorf("Changed was called %d times, want at least 3", n)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if n := runtime.GOMAXPROCS(0); n != full {
		t.Fatalf("after Follow ended GOMAXPROCS is %d, want the default %d", n, full)
	}
}

// TestCores checks the window arithmetic: CPU time over the samples that
// span the window, none from before the last change.
func TestCores(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ring := []sample{
		{t0, 0},
		{t0.Add(100 * time.Millisecond), 50 * time.Millisecond},
		{t0.Add(200 * time.Millisecond), 60 * time.Millisecond},
		{t0.Add(300 * time.Millisecond), 160 * time.Millisecond},
	}
	for _, tc := range []struct {
		window time.Duration
		since  time.Time
		want   float64
		ok     bool
	}{
		{100 * time.Millisecond, t0, 1.0, true},
		{200 * time.Millisecond, t0, 0.55, true},
		{300 * time.Millisecond, t0, 160.0 / 300, true},
		{400 * time.Millisecond, t0, 0, false},                             // the samples do not span it
		{300 * time.Millisecond, t0.Add(100 * time.Millisecond), 0, false}, // the span crosses a change
		{200 * time.Millisecond, t0.Add(100 * time.Millisecond), 0.55, true},
	} {
		c, ok := cores(ring, tc.window, tc.since)
		if ok != tc.ok || (ok && (c < tc.want-1e-9 || c > tc.want+1e-9)) {
			t.Errorf("cores(window %v, since +%v) = %v, %v; want %v, %v", tc.window, tc.since.Sub(t0), c, ok, tc.want, tc.ok)
		}
	}
}
