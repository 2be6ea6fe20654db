package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// setTimerSlack gives the process the timer slack INGEST_TIMER_SLACK asks
// for (defaultTimerSlack unless it is set). A thread's slack is set for
// that thread alone, and a new thread takes its creator's. The Go runtime
// has made its threads by the time main runs, so where the slack is not
// already the one wanted, setTimerSlack sets it on its own thread and
// executes the binary again from that thread: the new runtime's threads,
// sysmon among them, all start with it. The process keeps its PID, its
// arguments and its environment. Where that cannot be done it says so
// and the engine runs with the slack it has. A value in error is returned.
func setTimerSlack() error {
	want, ok, err := parseTimerSlack(os.Getenv("INGEST_TIMER_SLACK"))
	if err != nil || !ok {
		return err
	}
	runtime.LockOSThread() // the prctl and the exec on one thread
	defer runtime.UnlockOSThread()
	cur, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil || time.Duration(cur) == want {
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(want), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "ingest: timer slack left at %v: %v\n", time.Duration(cur), err)
		return nil
	}
	exe, err := os.Executable()
	if err == nil {
		err = syscall.Exec(exe, os.Args, os.Environ())
	}
	fmt.Fprintf(os.Stderr, "ingest: timer slack left at %v: cannot execute the binary again: %v\n", time.Duration(cur), err)
	return nil
}
