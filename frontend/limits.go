package frontend

import "sync"

// limits keeps the rate-limit buckets of devices between their connections,
// so that a device that reconnects carries on with the tokens it had rather
// than a fresh burst.
//
// A bucket refilled to the burst (with its receive stamps behind the
// clock) is the same as a fresh one, so only buckets still short of it are
// kept: for at most Burst/Rate after the
// device's last connection ended (2 s by default). At most max are kept;
// past that, buckets already refilled are swept out, and if none are, an
// arbitrary one is dropped, which gives that one device a fresh burst again
// (only under a reconnect storm of more than max devices within Burst/Rate).
type limits struct {
	rate, burst float64
	max         int

	mu     sync.Mutex
	saved  map[string]bucket
	sweeps int // puts since the last sweep
}

func newLimits(rate, burst float64, max int) *limits {
	return &limits{rate: rate, burst: burst, max: max, saved: make(map[string]bucket)}
}

// take returns the device's bucket: the one saved when its last connection
// ended, or a full one.
func (l *limits) take(device string, now int64) bucket {
	l.mu.Lock()
	b, ok := l.saved[device]
	if ok {
		delete(l.saved, device)
	}
	l.mu.Unlock()
	if !ok {
		return bucket{tokens: l.burst, last: now}
	}
	return b
}

// put saves the bucket of a connection that ended.
func (l *limits) put(device string, b bucket, now int64) {
	if b.spent(now, l.rate, l.burst) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweeps++
	if len(l.saved) >= l.max && l.sweeps >= l.max/4 {
		l.sweeps = 0
		for d, sb := range l.saved {
			if sb.spent(now, l.rate, l.burst) {
				delete(l.saved, d)
			}
		}
	}
	if len(l.saved) >= l.max {
		for d := range l.saved {
			delete(l.saved, d)
			break
		}
	}
	l.saved[device] = b
}

// spent reports whether a saved bucket is the same as a fresh one: refilled
// to the burst, its receive stamps behind the clock.
func (b *bucket) spent(now int64, rate, burst float64) bool {
	return b.level(now, rate, burst) >= burst && b.stampMS < now/1e6
}

func (l *limits) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.saved)
}
