package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// TestTimerSlack: a serving tier runs with a timer slack of 1 ms unless
// INGEST_TIMER_SLACK sets another, or off keeps what it inherited. The
// slack is read from the process the test started, which keeps its PID
// through the execution again that sets it, also without capabilities and
// with no_new_privs, as the Kubernetes manifests run it (setpriv). A value
// in error stops the engine before it starts, with exit code 2.
func TestTimerSlack(t *testing.T) {
	inherited := timerSlackOf(t, "self")
	if inherited == defaultTimerSlack.Nanoseconds() {
		t.Logf("the test runs with the engine's default slack already: off cannot be told from it")
	}
	restricted := []string{testkit.Tool(t, "setpriv", "util-linux"), "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"}
	for _, c := range []struct {
		env  string
		wrap []string
		want int64
	}{
		{"INGEST_TIMER_SLACK=", nil, 1_000_000},
		{"INGEST_TIMER_SLACK=250us", nil, 250_000},
		{"INGEST_TIMER_SLACK=off", nil, inherited},
		{"INGEST_TIMER_SLACK=", restricted, 1_000_000},
	} {
		e := allProc(t, []string{c.env})
		e.wrap = c.wrap
		e.start()
		logsOnFailure(t, 100, e.tierProc)
		if got := timerSlackOf(t, strconv.Itoa(e.pid())); got != c.want {
			t.Errorf("%s %q: the engine's timer slack is %d ns, want %d", c.env, c.wrap, got, c.want)
		}
		stopOrFail(t, e.tierProc)
	}
	for _, v := range []string{"banana", "20ms"} {
		cmd := exec.Command(binPath, "all", "--insecure-no-auth", "--data.dir", t.TempDir())
		cmd.Env = append(os.Environ(), "INGEST_TIMER_SLACK="+v)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "INGEST_TIMER_SLACK") {
			t.Errorf("INGEST_TIMER_SLACK=%s: %v, output %q; want exit code 2 naming the variable", v, err, out)
		}
	}
}

// timerSlackOf reads the timer slack of the process pid ("self": this one).
func timerSlackOf(t *testing.T, pid string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%s/timerslack_ns", pid))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestParseTimerSlack: INGEST_TIMER_SLACK takes a duration within its
// bounds, empty for the default, or off; anything else is an error that
// names the variable.
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
