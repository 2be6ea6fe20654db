package main

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// TestProcsFollowLoad: an idle engine runs its goroutines on one processor
// and says so in its metrics; with GOMAXPROCS in its environment, or
// --procs.follow-load=false, it keeps the processors it was given.
// (internal/procs tests the way back to every processor under load.)
func TestProcsFollowLoad(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: nothing to follow")
	}
	e := startAll(t, []string{"GOMAXPROCS="}) // unset, whatever the test's environment says
	base := "http://" + e.addr
	testkit.WaitFor(t, "an idle engine on one processor", 30*time.Second, func() bool {
		return metricOf(base, "go_sched_gomaxprocs_threads", "") == 1 && metricOf(base, "ingest_procs_changes_total", `procs="1"`) >= 1
	})
	if v := metricOf(base, "ingest_procs_follow_load", ""); v != 1 {
		t.Errorf("ingest_procs_follow_load = %v, want 1", v)
	}
	stopOrFail(t, e.tierProc)

	for _, c := range []struct {
		env, flags []string
		log        string
	}{
		{[]string{"GOMAXPROCS=2"}, nil, `msg="GOMAXPROCS is set: the processors do not follow the load" GOMAXPROCS=2`},
		{[]string{"GOMAXPROCS="}, []string{"--procs.follow-load=false"}, ""},
	} {
		e := startAll(t, c.env, c.flags...)
		base := "http://" + e.addr
		if v := metricOf(base, "ingest_procs_follow_load", ""); v != 0 {
			t.Errorf("%v %v: ingest_procs_follow_load = %v, want 0", c.env, c.flags, v)
		}
		if v := metricOf(base, "ingest_procs_changes_total", ""); v != -1 {
			t.Errorf("%v %v: ingest_procs_changes_total = %v, want no such series", c.env, c.flags, v)
		}
		if c.log != "" && !strings.Contains(e.logs.String(), c.log) {
			t.Errorf("%v %v: no line %s in the logs:\n%s", c.env, c.flags, c.log, e.logs.String())
		}
		stopOrFail(t, e.tierProc)
	}
}
