package procs

import (
	"context"
	"runtime"
	"sync"
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

// defaultProcs sets GOMAXPROCS to the runtime's default for the test, and
// back to what the test binary ran with (-cpu, GOMAXPROCS) after it.
func defaultProcs(t *testing.T) int {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	runtime.SetDefaultGOMAXPROCS()
	return runtime.GOMAXPROCS(0)
}

// TestFollow drives the test process's own CPU use: idle, it drops to one
// processor; spinning a core, it takes every processor back; idle again,
// one; and when Follow ends, GOMAXPROCS is the runtime's default again.
func TestFollow(t *testing.T) {
	full := defaultProcs(t)
	if full < 2 {
		t.Skipf("the runtime's default GOMAXPROCS is %d: nothing to follow", full)
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
	end := sync.OnceValue(func() error { cancel(); return <-done })
	var stop atomic.Bool
	spun := make(chan struct{})
	t.Cleanup(func() { // also when a wait fails
		stop.Store(true)
		end()
	})
	waitProcs(t, 1, "idle")

	go func() {
		defer close(spun)
		for !stop.Load() {
		}
	}()
	waitProcs(t, full, "one core spinning")
	stop.Store(true)
	<-spun
	waitProcs(t, 1, "idle again")
	if n := changes.Load(); n != 3 {
		t.Errorf("Changed was called %d times, want 3", n)
	}

	if err := end(); err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if n := runtime.GOMAXPROCS(0); n != full {
		t.Fatalf("after Follow ended GOMAXPROCS is %d, want the default %d", n, full)
	}
}

// feed gives f samples every interval from at until end, using perCore
// cores, and returns the time after the last.
func feed(f *follower, at, end time.Time, cpu *time.Duration, perCore float64) time.Time {
	for ; !at.After(end); at = at.Add(f.opt.Interval) {
		*cpu += time.Duration(perCore * float64(f.opt.Interval))
		f.decide(sample{at, *cpu})
	}
	return at
}

// TestTakingTurns: where the two thresholds would take turns (a load just
// over Up on one processor and under Down on every one), each drop that
// follows a rise waits twice as long as the one before, up to
// MaxDownWindow; a rise long after the last drop starts again from
// DownWindow. Samples are made up: no clock is waited on.
func TestTakingTurns(t *testing.T) {
	full := defaultProcs(t)
	if full < 2 {
		t.Skipf("the runtime's default GOMAXPROCS is %d: nothing to follow", full)
	}
	opt := Options{Interval: 100 * time.Millisecond, Up: 0.2, UpWindow: 200 * time.Millisecond,
		Down: 0.3, DownWindow: time.Second, MaxDownWindow: 4 * time.Second}
	opt.defaults()
	t0 := time.Unix(1000, 0)
	f := newFollower(opt, t0)
	var cpu time.Duration
	at := t0
	for i, wantWait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		rose := f.since // the start, or the last rise
		// On every processor at 0.25 cores: under Down, a drop wantWait
		// after the rise.
		for !f.one {
			at = feed(f, at, at, &cpu, 0.25)
			if at.Sub(rose) > 10*time.Second {
				t.Fatalf("turn %d: no drop in 10 s", i)
			}
		}
		if got := f.lastDown.Sub(rose); got < wantWait-opt.Interval || got > wantWait+opt.Interval {
			t.Errorf("turn %d: dropped to one processor after %v, want %v", i, got, wantWait)
		}
		if n := runtime.GOMAXPROCS(0); n != 1 {
			t.Fatalf("turn %d: dropped, but GOMAXPROCS is %d", i, n)
		}
		// On one processor at 0.25 cores: over Up, a rise after 200 ms.
		at = feed(f, at, at.Add(300*time.Millisecond), &cpu, 0.25)
		if f.one || runtime.GOMAXPROCS(0) != full {
			t.Fatalf("turn %d: no rise at 0.25 cores on one processor", i)
		}
	}
	// Quiet past MaxDownWindow on one processor, then a rise: the next drop
	// waits DownWindow again.
	for start := at; !f.one; { // the drop after the last rise still waits 4 s
		at = feed(f, at, at, &cpu, 0.25)
		if at.Sub(start) > 10*time.Second {
			t.Fatal("no drop in 10 s")
		}
	}
	at = feed(f, at, at.Add(5*time.Second), &cpu, 0.1)
	feed(f, at, at.Add(300*time.Millisecond), &cpu, 0.5)
	if f.one {
		t.Fatal("no rise at 0.5 cores on one processor")
	}
	if f.downWindow != opt.DownWindow {
		t.Errorf("after a rise %v after the last drop, the drop waits %v, want %v", 5*time.Second, f.downWindow, opt.DownWindow)
	}
}

// TestCores checks the window arithmetic: CPU time over the samples that
// span the window (less half an interval), none from before the last
// change.
func TestCores(t *testing.T) {
	t0 := time.Unix(1000, 0)
	opt := Options{Interval: 100 * time.Millisecond, MaxDownWindow: 300 * time.Millisecond}
	opt.defaults()
	for _, tc := range []struct {
		window time.Duration
		since  time.Time
		want   float64
		ok     bool
	}{
		{100 * time.Millisecond, t0, 1.0, true},
		{200 * time.Millisecond, t0, 0.55, true},
		{300 * time.Millisecond, t0, 160.0 / 300, true},
		{260 * time.Millisecond, t0, 160.0 / 300, true},                    // the next sample back spans it
		{400 * time.Millisecond, t0, 0, false},                             // the samples do not span it
		{300 * time.Millisecond, t0.Add(100 * time.Millisecond), 0, false}, // the span crosses a change
		{200 * time.Millisecond, t0.Add(100 * time.Millisecond), 0.55, true},
	} {
		f := newFollower(opt, tc.since)
		for _, s := range []sample{
			{t0, 0},
			{t0.Add(100 * time.Millisecond), 50 * time.Millisecond},
			{t0.Add(200 * time.Millisecond), 60 * time.Millisecond},
			{t0.Add(300 * time.Millisecond), 160 * time.Millisecond},
		} {
			f.ring[f.next] = s
			f.next = (f.next + 1) % len(f.ring)
			f.n = min(f.n+1, len(f.ring))
		}
		c, ok := f.cores(tc.window)
		if ok != tc.ok || (ok && (c < tc.want-1e-9 || c > tc.want+1e-9)) {
			t.Errorf("cores(window %v, since +%v) = %v, %v; want %v, %v", tc.window, tc.since.Sub(t0), c, ok, tc.want, tc.ok)
		}
	}
}
