// Package lifecycle holds the rule the engine's components share: New
// starts nothing, Run runs once, and Close is idempotent and releases what
// New took when Run never ran (Run releases it itself when it returns).
package lifecycle

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Once guards a component's Run and Close. Its zero value is ready; it is a
// leaf lock.
type Once struct {
	mu     sync.Mutex
	ran    bool
	closed bool
}

// Start marks the component running. It reports false when Run has already
// started or Close was called: a component runs once.
func (o *Once) Start() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ran || o.closed {
		return false
	}
	o.ran = true
	return true
}

// Close marks the component closed. The first call runs release, told
// whether Run started, and returns its error; later calls return nil.
// release runs under the lock, so Run cannot start while it does.
func (o *Once) Close(release func(ran bool) error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	return release(o.ran)
}

// Release is Close for a component whose Run releases what New took when
// it returns: the first call runs always (undoing what New did that Run
// does not, such as registering metrics) and then, only if Run never
// started, unrun (releasing what Run would have, such as a listener), and
// returns unrun's error.
func (o *Once) Release(always func(), unrun func() error) error {
	return o.Close(func(ran bool) error {
		always()
		if ran {
			return nil
		}
		return unrun()
	})
}

// Every runs f every interval until ctx ends, and returns nil then: the
// Run of a component whose work is periodic.
func Every(ctx context.Context, interval time.Duration, f func()) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f()
		}
	}
}

// Sleep waits d or until ctx ends; it reports whether it waited d.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Logger is the logger a component was given, or one that discards
// everything when it was given nil: a nil logger means no logs.
func Logger(lg *slog.Logger) *slog.Logger {
	if lg == nil {
		return slog.New(slog.DiscardHandler)
	}
	return lg
}

// Handlers counts the calls of an HTTP server's handler, so that the Run
// that serves it returns only once every one has returned: net/http's
// Shutdown waits for none past its context, and Close waits for none at
// all. Wrap the handler; after Shutdown and Close, End waits. A request
// net/http still starts on a connection Close is closing, after End has
// begun, is answered 503.
type Handlers struct {
	mu     sync.Mutex
	ended  bool
	active sync.WaitGroup
}

// Wrap returns h, counted.
func (hs *Handlers) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.mu.Lock()
		if hs.ended {
			hs.mu.Unlock()
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		hs.active.Add(1)
		hs.mu.Unlock()
		defer hs.active.Done()
		h.ServeHTTP(w, r)
	})
}

// End refuses handlers from now on and waits for those running.
func (hs *Handlers) End() {
	hs.mu.Lock()
	hs.ended = true
	hs.mu.Unlock()
	hs.active.Wait()
}
