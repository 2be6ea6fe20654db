// Package lograte spaces the log lines of a condition that repeats at
// every write or retry for as long as a fault lasts (a batch that can never
// fit, samples a store cannot hold, lines it refuses), so that the fault
// does not flood the log: a line at most every so often, saying how many
// were left out since the last. The metrics still count every occurrence.
package lograte

import (
	"sync"
	"time"
)

// Every is how often, at most, the engine logs a fault that repeats at
// every write or retry (docs say "at most every 10 s").
const Every = 10 * time.Second

// Limiter allows a line at most every Every (its field; the package's
// Every for the engine's lines). The zero value allows every line; it is
// safe for concurrent use.
type Limiter struct {
	Every time.Duration

	mu     sync.Mutex
	last   time.Time
	missed int
}

// Allow reports whether a line is due at now, with how many calls were
// refused since the last line allowed.
func (l *Limiter) Allow(now time.Time) (missed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.Every {
		l.missed++
		return 0, false
	}
	missed, l.last, l.missed = l.missed, now, 0
	return missed, true
}
