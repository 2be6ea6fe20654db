package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// defaultGCPercent is the engine's GOGC when the environment sets none.
// The garbage collector's cycles set the engine's latency tails: each one
// marks every connection's state, and while it runs it takes a quarter of
// the cores and makes the goroutines that allocate help it. At 10,000
// devices × 1 msg/s into `ingest all` on two cores, GOGC=100 gave an ack
// p99 of 28–33 ms and a feed p99 of 85–92 ms, GOGC=300 8–11 ms and 28–38 ms,
// for about twice the resident memory (docs/benchmarks.md, "Garbage
// collection and the tails"). 300 lets the heap grow to four times what is
// live before a cycle.
const defaultGCPercent = 300

// tuneGC sets the garbage collector for the engine where the environment
// leaves it to us: GOGC to defaultGCPercent unless GOGC is set, and, unless
// GOMEMLIMIT is set (or AUTOMEMLIMIT=off; AUTOMEMLIMIT=0.8 sets another
// share), a soft memory limit of 90 % of the container's memory limit (the
// cgroup's, v1 or v2, through automemlimit), so that the larger heap
// goal gives way to more frequent cycles before the container is killed
// for its memory. Outside a container with a limit, no memory limit is set.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
		// As the query API's runtimeinfo reports it.
		os.Setenv("GOGC", strconv.Itoa(defaultGCPercent))
	}
	// An error (no cgroup to read) leaves the memory limit as it was: none.
	// One that AUTOMEMLIMIT caused (a ratio that is not one) is said.
	_, err := memlimit.Set(memlimit.WithRatio(0.9), memlimit.WithProvider(memlimit.FromCgroup))
	if err != nil && os.Getenv("AUTOMEMLIMIT") != "" {
		fmt.Fprintf(os.Stderr, "ingest: AUTOMEMLIMIT: %v; no memory limit set\n", err)
	}
}
