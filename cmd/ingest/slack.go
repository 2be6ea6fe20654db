package main

import (
	"fmt"
	"time"
)

// defaultTimerSlack is the timer slack of the engine's threads unless
// INGEST_TIMER_SLACK sets another. Linux lets a sleeping thread wake up to
// its timer slack late (50 µs unless a parent set another), so that
// wake-ups can be merged. The Go runtime's monitor thread (sysmon) sleeps
// 20 µs at a time while the process is busy, and every syscall made after
// a moment with nothing to run puts it back to 20 µs. A syscall-bound
// engine at a steady rate, such as 1,000 fsynced messages a second, keeps
// it there: at that rate its sleeps took a sixth of the engine's CPU. With
// a slack of 1 ms it sleeps at least that long, and the engine used 0.73
// of the CPU per message at 1,000 msg/s and 0.84 at 10,000 devices × 1/s,
// with the same latencies or shorter tails (docs/benchmarks.md, "Timer
// slack"). Timers and sleeps that the engine sets may end up to 1 ms
// late: its lingers of 5 ms and more, and the WALs' commit interval
// (--wal.commit-interval, 1 ms), whose wait then lasts up to about 2 ms.
const defaultTimerSlack = time.Millisecond

// maxTimerSlack bounds INGEST_TIMER_SLACK: a slack is how late a timer
// may fire, and the engine's shortest linger is a few milliseconds.
const maxTimerSlack = 10 * time.Millisecond

// parseTimerSlack reads INGEST_TIMER_SLACK: empty is the default, "off"
// keeps the slack the process inherited (ok false), else a duration from
// 1µs to maxTimerSlack.
func parseTimerSlack(s string) (d time.Duration, ok bool, err error) {
	switch s {
	case "":
		return defaultTimerSlack, true, nil
	case "off":
		return 0, false, nil
	}
	d, err = time.ParseDuration(s)
	if err != nil {
		return 0, false, fmt.Errorf("INGEST_TIMER_SLACK: %q is not a duration (1ms) or off", s)
	}
	if d < time.Microsecond || d > maxTimerSlack {
		return 0, false, fmt.Errorf("INGEST_TIMER_SLACK: %v is out of range: 1µs to %v, or off", d, maxTimerSlack)
	}
	return d, true, nil
}
