//go:build !linux

package main

import (
	"errors"
	"os"
	"time"
)

// timerSlackSet is false: timer slack is Linux's.
var timerSlackSet bool

// setTimerSlack checks INGEST_TIMER_SLACK. Timer slack is Linux's: the
// engine runs with the system's timers elsewhere.
func setTimerSlack() error {
	_, _, err := parseTimerSlack(os.Getenv("INGEST_TIMER_SLACK"))
	return err
}

// timerSlack reports that there is no timer slack to read.
func timerSlack() (time.Duration, error) { return 0, errors.ErrUnsupported }
