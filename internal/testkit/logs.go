package testkit

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
)

// Logs keeps what a logger writes, for a test to read; it is safe for
// concurrent use (the logger may write from the goroutines of the part
// under test).
type Logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Logger returns a text logger, at debug level, writing to l.
func (l *Logs) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count returns how many of the lines written so far hold s.
func (l *Logs) Count(s string) int {
	n := 0
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}
