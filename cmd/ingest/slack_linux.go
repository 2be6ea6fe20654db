package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// slackExecEnv marks the execution again that gives the process its timer
// slack, so that it happens once; the new process removes it.
const slackExecEnv = "INGEST_TIMER_SLACK_EXEC"

// timerSlackSet tells whether this process was executed again to take
// its timer slack (the start-up log says so).
var timerSlackSet bool

// setTimerSlack gives the process the timer slack INGEST_TIMER_SLACK asks
// for (defaultTimerSlack unless it is set). A thread's slack is set for
// that thread alone, and a new thread takes its creator's. The Go runtime
// has made its threads by the time main runs, so where the slack is not
// already the one wanted, setTimerSlack sets it on its own thread and
// executes the binary again from that thread: the new runtime's threads,
// sysmon among them, all start with it. The process keeps its PID, its
// arguments and its environment. Where that cannot be done (a real-time
// scheduling policy, whose slack the kernel keeps at 0; a binary replaced
// on disk) it says so, and the engine runs with the slack it had. A value
// in error is returned.
func setTimerSlack() error {
	if os.Getenv(slackExecEnv) != "" {
		os.Unsetenv(slackExecEnv)
		timerSlackSet = true
		return nil
	}
	want, ok, err := parseTimerSlack(os.Getenv("INGEST_TIMER_SLACK"))
	if err != nil || !ok {
		return err
	}
	runtime.LockOSThread() // the prctl and the exec on one thread
	defer runtime.UnlockOSThread()
	cur, err := timerSlack()
	if err != nil || cur == want {
		return nil
	}
	err = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(want), 0, 0, 0)
	if err == nil {
		if now, _ := timerSlack(); now != want {
			err = fmt.Errorf("the kernel keeps %v (a real-time scheduling policy?)", now)
		}
	}
	if err == nil {
		err = execAgain()
	}
	unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(cur), 0, 0, 0)
	fmt.Fprintf(os.Stderr, "ingest: timer slack left at %v: %v\n", cur, err)
	return nil
}

// execAgain executes the binary the process runs, with its arguments and
// environment and slackExecEnv; it returns only if it cannot.
func execAgain() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	on, errOn := os.Stat(exe)
	running, errRunning := os.Stat("/proc/self/exe")
	if err := errors.Join(errOn, errRunning); err != nil {
		return err
	}
	if !os.SameFile(on, running) {
		return fmt.Errorf("%s is no longer the binary this process runs", exe)
	}
	return syscall.Exec(exe, os.Args, append(os.Environ(), slackExecEnv+"=1"))
}

// timerSlack returns the calling thread's timer slack.
func timerSlack() (time.Duration, error) {
	n, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	return time.Duration(n), err
}
