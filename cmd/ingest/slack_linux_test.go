package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

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
