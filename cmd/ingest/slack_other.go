//go:build !linux

package main

import "os"

// setTimerSlack checks INGEST_TIMER_SLACK. Timer slack is Linux's: the
// engine runs with the system's timers elsewhere.
func setTimerSlack() error {
	_, _, err := parseTimerSlack(os.Getenv("INGEST_TIMER_SLACK"))
	return err
}
