// Package procs lets a process's Go scheduler run goroutines on one
// processor while the process is nearly idle, and on every processor the
// runtime would give it (GOMAXPROCS) once it is busy.
//
// Why: each message the engine carries wakes a handful of goroutines in
// turn (the device's reader, the WAL's committer, the uplink, the
// middletier's router and publishers, the storage writer, the feed). With
// more than one processor, a goroutine made runnable while another
// processor is idle wakes a thread for that processor, which spins, finds
// little to do and sleeps again: futex calls, context switches and
// migrations that at a thousand messages a second took up to a third of
// the engine's CPU. On one processor the same goroutines run in turn on one
// thread. Under load every processor is busy and the wake-ups are rare,
// and the process needs them all, so it takes them back as soon as its CPU
// use rises. docs/benchmarks.md has the measurements behind the defaults.
package procs

import (
	"context"
	"runtime"
	"syscall"
	"time"

	"github.com/ingest-io/ingest/internal/lifecycle"
)

// Options say when to change. The thresholds are in cores (1.0 is one
// core busy for the whole window) of the process's user and system time.
type Options struct {
	// Interval is how often the process's CPU time is read (default
	// 100ms).
	Interval time.Duration
	// Up: on one processor, the process takes every processor back once
	// it used more than Up cores over the last UpWindow (defaults 0.22
	// and 200ms).
	Up       float64
	UpWindow time.Duration
	// Down: on every processor, the process drops to one once it used
	// less than Down cores over the last DownWindow (defaults 0.28 and
	// 3s). The same load costs more CPU on every processor than on one,
	// often enough more that 0.28 there is under 0.22 here; where it is
	// not, the two would take turns, so a drop that follows a rise by
	// less than MaxDownWindow waits twice as long as the one before, up
	// to MaxDownWindow (default 1 minute).
	Down          float64
	DownWindow    time.Duration
	MaxDownWindow time.Duration
	// Changed, if set, is called after each change with the new
	// GOMAXPROCS and the CPU use, in cores, that led to it.
	Changed func(procs int, cores float64)
	// Stopped, if set, is called if the process's CPU time cannot be
	// read: Follow then gives back every processor and follows no more.
	Stopped func(err error)
}

func (o *Options) defaults() {
	if o.Interval <= 0 {
		o.Interval = 100 * time.Millisecond
	}
	if o.Up <= 0 {
		o.Up = 0.22
	}
	if o.UpWindow <= 0 {
		o.UpWindow = 200 * time.Millisecond
	}
	if o.Down <= 0 {
		o.Down = 0.28
	}
	if o.DownWindow <= 0 {
		o.DownWindow = 3 * time.Second
	}
	if o.MaxDownWindow < o.DownWindow {
		o.MaxDownWindow = max(time.Minute, o.DownWindow)
	}
}

// sample is the process's CPU time at an instant.
type sample struct {
	at  time.Time
	cpu time.Duration
}

// Follow changes GOMAXPROCS with the process's CPU use until ctx ends, then
// hands GOMAXPROCS back to the runtime's default
// (runtime.SetDefaultGOMAXPROCS, which also resumes the runtime's own
// updates of it from the CPU limit and affinity; a limit change the
// runtime was about to apply when Follow set one processor may be left
// unapplied until Follow next gives the processors back). It starts on
// every processor, and drops to one only while the default is more. The
// caller leaves Follow out when the environment sets GOMAXPROCS.
func Follow(ctx context.Context, opt Options) error {
	opt.defaults()
	defer runtime.SetDefaultGOMAXPROCS()
	f := newFollower(opt, time.Now())
	// Sampling ends early if the CPU time cannot be read; Follow still
	// waits for ctx, for a part that returns ends its process.
	sampling, stop := context.WithCancel(ctx)
	defer stop()
	lifecycle.Every(sampling, opt.Interval, func() {
		if !f.step() {
			stop()
		}
	})
	<-ctx.Done()
	return nil
}

func newFollower(opt Options, now time.Time) *follower {
	return &follower{
		opt:        opt,
		ring:       make([]sample, int(opt.MaxDownWindow/opt.Interval)+2),
		since:      now,
		downWindow: opt.DownWindow,
	}
}

// follower is Follow's state between two samples.
type follower struct {
	opt  Options
	ring []sample // the last samples: ring[next-1] is the newest
	next int      // where the next sample goes
	n    int      // how many samples ring holds
	one  bool     // on one processor
	// since is when the current setting began; lastDown when the process
	// last dropped to one processor.
	since, lastDown time.Time
	downWindow      time.Duration // the current wait before a drop
}

// step takes a sample and changes GOMAXPROCS if the samples say so. It
// returns false, having given back every processor, if the CPU time
// cannot be read.
func (f *follower) step() bool {
	cpu, err := cpuTime()
	if err != nil {
		if f.one {
			runtime.SetDefaultGOMAXPROCS()
		}
		if f.opt.Stopped != nil {
			f.opt.Stopped(err)
		}
		return false
	}
	f.decide(sample{time.Now(), cpu})
	return true
}

// decide adds s to the samples and changes GOMAXPROCS if they say so.
func (f *follower) decide(s sample) {
	f.ring[f.next] = s
	f.next = (f.next + 1) % len(f.ring)
	f.n = min(f.n+1, len(f.ring))
	if f.one {
		if c, ok := f.cores(f.opt.UpWindow); ok && c > f.opt.Up {
			runtime.SetDefaultGOMAXPROCS()
			f.one, f.since = false, s.at
			// A rise soon after a drop: the next drop waits longer.
			if s.at.Sub(f.lastDown) < f.opt.MaxDownWindow {
				f.downWindow = min(2*f.downWindow, f.opt.MaxDownWindow)
			} else {
				f.downWindow = f.opt.DownWindow
			}
			f.changed(c)
		}
		return
	}
	if runtime.GOMAXPROCS(0) <= 1 {
		return // the runtime's default is one processor
	}
	if c, ok := f.cores(f.downWindow); ok && c < f.opt.Down {
		runtime.GOMAXPROCS(1)
		f.one, f.since, f.lastDown = true, s.at, s.at
		f.changed(c)
	}
}

func (f *follower) changed(c float64) {
	if f.opt.Changed != nil {
		f.opt.Changed(runtime.GOMAXPROCS(0), c)
	}
}

// cores is the CPU use, in cores, over the last window of samples, none
// taken before f.since (the CPU time spent under the other setting does
// not count). ok is false until the samples span the window, less half an
// interval: samples an interval apart span a window that is a whole
// number of intervals, give or take the ticker's jitter.
func (f *follower) cores(window time.Duration) (c float64, ok bool) {
	last := f.at(0)
	for i := 1; i < f.n; i++ {
		s := f.at(i)
		if s.at.Before(f.since) {
			return 0, false
		}
		if d := last.at.Sub(s.at); d >= window-f.opt.Interval/2 {
			return float64(last.cpu-s.cpu) / float64(d), true
		}
	}
	return 0, false
}

// at is the sample i before the newest.
func (f *follower) at(i int) sample {
	return f.ring[(f.next-1-i+2*len(f.ring))%len(f.ring)]
}

// cpuTime is the user and system time the process has used.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
