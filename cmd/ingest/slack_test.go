package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseTimerSlack(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
		err  string
	}{
		{"", time.Millisecond, true, ""},
		{"off", 0, false, ""},
		{"250us", 250 * time.Microsecond, true, ""},
		{"10ms", 10 * time.Millisecond, true, ""},
		{"1us", time.Microsecond, true, ""},
		{"11ms", 0, false, "out of range"},
		{"999ns", 0, false, "out of range"},
		{"0", 0, false, "out of range"},
		{"-1ms", 0, false, "out of range"},
		{"1", 0, false, "not a duration"},
		{"OFF", 0, false, "not a duration"},
	} {
		d, ok, err := parseTimerSlack(c.in)
		if d != c.want || ok != c.ok || (err == nil) != (c.err == "") || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("parseTimerSlack(%q) = %v, %v, %v; want %v, %v, error with %q", c.in, d, ok, err, c.want, c.ok, c.err)
		}
	}
}

// FuzzParseTimerSlack: whatever INGEST_TIMER_SLACK holds, the slack set is
// within its bounds, and only "off" leaves it as it was.
func FuzzParseTimerSlack(f *testing.F) {
	for _, s := range []string{"", "off", "1ms", "250us", "10ms", "11ms", "1h", "1e3ns", "-0s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok, err := parseTimerSlack(s)
		switch {
		case err != nil:
			if ok || d != 0 || !strings.HasPrefix(err.Error(), "INGEST_TIMER_SLACK: ") {
				t.Fatalf("%q: %v, %v with error %v", s, d, ok, err)
			}
		case !ok:
			if s != "off" {
				t.Fatalf("%q: left as it was, only off should be", s)
			}
		case d < time.Microsecond || d > maxTimerSlack:
			t.Fatalf("%q: slack %v out of its bounds", s, d)
		}
	})
}
