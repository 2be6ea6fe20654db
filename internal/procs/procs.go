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
// migrations that at a thousand messages a second cost more CPU than the
// messages do. On one processor the same goroutines run in turn on one
// thread. Under load every processor is busy and the wake-ups are rare,
// and the process needs them all, so it takes them back as soon as its CPU
// use rises. docs/benchmarks.md has the measurements behind the defaults.
package procs

import (
	"context"
	"runtime"
	"syscall"
	"time"
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
	// so Down is above Up.
	Down       float64
	DownWindow time.Duration
	// Changed, if set, is called after each change with the new
	// GOMAXPROCS and the CPU use, in cores, that led to it.
	Changed func(procs int, cores float64)
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
}

// sample is the process's CPU time at an instant.
type sample struct {
	at  time.Time
	cpu time.Duration
}

// Follow changes GOMAXPROCS with the process's CPU use until ctx ends, then
// hands GOMAXPROCS back to the runtime's default (runtime.SetDefaultGOMAXPROCS,
// which also resumes the runtime's own updates of it from the CPU limit).
// It starts on every processor. A process whose default is one processor
// has nothing to follow: Follow waits for ctx. The caller leaves Follow
// out when the environment sets GOMAXPROCS.
func Follow(ctx context.Context, opt Options) error {
	opt.defaults()
	defer runtime.SetDefaultGOMAXPROCS()
	if runtime.GOMAXPROCS(0) <= 1 {
		<-ctx.Done()
		return nil
	}
	n := int(opt.DownWindow/opt.Interval) + 2
	ring := make([]sample, 0, n) // the last n samples, oldest first
	one := false
	since := time.Now() // when the current setting began
	t := time.NewTicker(opt.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cpu, err := cpuTime()
		if err != nil {
			continue
		}
		s := sample{time.Now(), cpu}
		if len(ring) == n {
			ring = append(ring[:0], ring[1:]...)
		}
		ring = append(ring, s)
		if one {
			if c, ok := cores(ring, opt.UpWindow, since); ok && c > opt.Up {
				runtime.SetDefaultGOMAXPROCS()
				one, since = false, s.at
				changed(opt, c)
			}
			continue
		}
		if c, ok := cores(ring, opt.DownWindow, since); ok && c < opt.Down {
			runtime.GOMAXPROCS(1)
			one, since = true, s.at
			changed(opt, c)
		}
	}
}

func changed(opt Options, c float64) {
	if opt.Changed != nil {
		opt.Changed(runtime.GOMAXPROCS(0), c)
	}
}

// cores is the CPU use, in cores, over the last window of the samples in
// ring, none taken before since (the CPU time spent under the other
// setting does not count). ok is false until the samples span the window.
func cores(ring []sample, window time.Duration, since time.Time) (c float64, ok bool) {
	last := ring[len(ring)-1]
	for i := len(ring) - 2; i >= 0; i-- {
		s := ring[i]
		if s.at.Before(since) {
			return 0, false
		}
		if d := last.at.Sub(s.at); d >= window {
			return float64(last.cpu-s.cpu) / float64(d), true
		}
	}
	return 0, false
}

// cpuTime is the user and system time the process has used.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
