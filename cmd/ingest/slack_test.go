package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ingest-io/ingest/internal/testkit"
)

// TestTimerSlack: a serving tier runs with a timer slack of 1 ms unless
// INGEST_TIMER_SLACK sets another, or off keeps what it inherited; it
// takes it by executing itself again, once, and its start-up log says
// which slack it runs with and whether it did. That holds without
// capabilities and with no_new_privs, as the Kubernetes manifests run it
// (setpriv). Under a real-time policy, whose slack the kernel may keep at
// 0, the engine starts with the slack it has instead of executing itself
// again and again. A value in error stops the engine before it starts,
// with exit code 2.
func TestTimerSlack(t *testing.T) {
	n, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	inherited := time.Duration(n)
	if inherited == defaultTimerSlack {
		t.Logf("the test runs with the engine's default slack already: off cannot be told from it")
	}
	restricted := []string{testkit.Tool(t, "setpriv", "util-linux"), "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"}
	for _, c := range []struct {
		env  string
		wrap []string
		want string // the start-up log's attributes; empty: any, once
	}{
		{"INGEST_TIMER_SLACK=", nil, "slack=1ms set_at_start=true"},
		{"INGEST_TIMER_SLACK=250us", nil, "slack=250µs set_at_start=true"},
		{"INGEST_TIMER_SLACK=off", nil, fmt.Sprintf("slack=%v set_at_start=false", inherited)},
		{"INGEST_TIMER_SLACK=", restricted, "slack=1ms set_at_start=true"},
		{"INGEST_TIMER_SLACK=", realTime(t), ""},
	} {
		if c.wrap != nil && len(c.wrap) == 0 {
			continue // no real-time policy to be had here
		}
		e := allProc(t, []string{c.env})
		e.wrap = c.wrap
		e.start()
		logsOnFailure(t, 100, e.tierProc)
		// The process logs its slack once built, right after it is ready.
		testkit.WaitFor(t, "the start-up line of the timer slack", 10*time.Second, func() bool {
			return strings.Contains(e.logs.String(), `msg="timer slack"`)
		})
		logs := e.logs.String()
		if got := strings.Count(logs, `msg="timer slack"`); got != 1 {
			t.Errorf("%s %q: %d start-up lines of the timer slack, want one:\n%s", c.env, c.wrap, got, logs)
		}
		if c.want != "" && !strings.Contains(logs, `msg="timer slack" `+c.want) {
			t.Errorf("%s %q: the start-up log does not say %q:\n%s", c.env, c.wrap, c.want, logs)
		}
		stopOrFail(t, e.tierProc)
	}
	for _, v := range []string{"banana", "20ms"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, binPath, "all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", "127.0.0.1:0",
			"--feed.listen", "127.0.0.1:0", "--storage.http.listen", "127.0.0.1:0", "--mqtt.listen", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "INGEST_TIMER_SLACK="+v)
		out, err := cmd.CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "INGEST_TIMER_SLACK") {
			t.Errorf("INGEST_TIMER_SLACK=%s: %v, output %q; want exit code 2 naming the variable", v, err, out)
		}
	}
}

// realTime returns a command that runs the engine under SCHED_FIFO, or an
// empty one where this test cannot set that policy.
func realTime(t *testing.T) []string {
	chrt, err := exec.LookPath("chrt")
	if err != nil || exec.Command(chrt, "-f", "1", "true").Run() != nil {
		t.Logf("no SCHED_FIFO here (chrt: %v): the real-time case is left out", err)
		return []string{}
	}
	return []string{chrt, "-f", "1"}
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
