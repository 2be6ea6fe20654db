package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuResult is the CPU time the bench and the engine it started spent
// while sending, per acknowledged message: on a machine where both share
// the cores, it shows which of the two is the limit whatever else runs.
type cpuResult struct {
	BenchSeconds       float64 `json:"bench_seconds"`
	BenchMicrosPerMsg  float64 `json:"bench_us_per_message"`
	EngineSeconds      float64 `json:"engine_seconds,omitempty"`
	EngineMicrosPerMsg float64 `json:"engine_us_per_message,omitempty"`
	LoadAverage        float64 `json:"load_average_1m"`
}

// cpuMeter measures CPU time from its start.
type cpuMeter struct {
	pid          int // the engine's process, 0 when the bench did not start it
	bench        time.Duration
	engine       time.Duration
	engineLoaded bool
}

func startCPU(enginePID int) *cpuMeter {
	m := &cpuMeter{pid: enginePID, bench: selfCPU()}
	if enginePID > 0 {
		m.engine, m.engineLoaded = processCPU(enginePID)
	}
	return m
}

// stop returns the CPU time spent since start, per message of acked.
func (m *cpuMeter) stop(acked int64) *cpuResult {
	r := &cpuResult{BenchSeconds: (selfCPU() - m.bench).Seconds(), LoadAverage: loadAverage()}
	if m.engineLoaded {
		if t, ok := processCPU(m.pid); ok {
			r.EngineSeconds = (t - m.engine).Seconds()
		}
	}
	if acked > 0 {
		r.BenchMicrosPerMsg = r.BenchSeconds * 1e6 / float64(acked)
		r.EngineMicrosPerMsg = r.EngineSeconds * 1e6 / float64(acked)
	}
	return r
}

// selfCPU is the user and system time of the bench process.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is the unit of /proc/<pid>/stat's times (USER_HZ), 100 on
// every Linux the engine runs on.
const clockTick = 10 * time.Millisecond

// processCPU reads the user and system time of process pid from
// /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+st) * clockTick, true
}

// loadAverage is the 1-minute load average.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
