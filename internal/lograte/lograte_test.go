package lograte

import (
	"testing"
	"time"
)

// A line is allowed at once, then at most every Every, with the count of
// those refused in between; the zero value allows every line.
func TestAllow(t *testing.T) {
	l := Limiter{Every: 10 * time.Second}
	t0 := time.Unix(1_700_000_000, 0)
	for i, c := range []struct {
		at     time.Duration
		ok     bool
		missed int
	}{{0, true, 0}, {time.Second, false, 0}, {9 * time.Second, false, 0}, {10 * time.Second, true, 2}, {11 * time.Second, false, 0}, {time.Minute, true, 1}} {
		if missed, ok := l.Allow(t0.Add(c.at)); ok != c.ok || missed != c.missed {
			t.Fatalf("call %d at %v: %d, %v; want %d, %v", i, c.at, missed, ok, c.missed, c.ok)
		}
	}
	var z Limiter
	for range 3 {
		if _, ok := z.Allow(t0); !ok {
			t.Fatal("the zero Limiter refused a line")
		}
	}
}
