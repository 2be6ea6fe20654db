package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ingest-io/ingest/internal/loadgen"
)

// interval is one line of a long run (-interval): what the devices saw in
// the interval, and the engine's process at its end. A soak is judged by
// whether these lines stay flat.
type interval struct {
	End        float64 `json:"end_s"`
	Acked      int64   `json:"acked"`
	PerSec     float64 `json:"acked_per_second"`
	AckP50     float64 `json:"ack_p50_ms"`
	AckP99     float64 `json:"ack_p99_ms"`
	AckP999    float64 `json:"ack_p999_ms"`
	AckMax     float64 `json:"ack_max_ms"`
	FeedP99    float64 `json:"feed_p99_ms,omitempty"`
	Errors     int64   `json:"errors"`
	Reconnects int64   `json:"reconnects"`
	// The engine's process, when the bench started it (-spawn, -spawn-all)
	// or was given its pid and metrics (-pid, -metrics).
	RSSMiB float64 `json:"engine_rss_mib,omitempty"`
	// RSS split into anonymous memory (heap, stacks) and file pages mapped
	// into the process (the embedded TSDB's memory-mapped chunks and index),
	// which the kernel can drop and read again.
	AnonMiB    float64 `json:"engine_rss_anon_mib,omitempty"`
	FileMiB    float64 `json:"engine_rss_file_mib,omitempty"`
	FDs        int     `json:"engine_fds,omitempty"`
	Threads    int     `json:"engine_threads,omitempty"`
	Goroutines int     `json:"engine_goroutines,omitempty"`
	HeapMiB    float64 `json:"engine_heap_mib,omitempty"`
	// What the Go heap holds from the operating system: spans in use, free
	// spans not yet returned, less what was returned.
	HeapHeldMiB float64 `json:"engine_heap_held_mib,omitempty"`
	CPUPercent  float64 `json:"engine_cpu_percent,omitempty"` // of one core, over the interval
	Load1       float64 `json:"load_average_1m"`
}

// intervals samples a run every every until ctx ends, printing each line to
// w as it is taken, and returns them all.
func intervals(ctx context.Context, every time.Duration, fl *loadgen.Fleet, st, e2e *stats, pid int, metricsURL string, w io.Writer) []interval {
	t := time.NewTicker(every)
	defer t.Stop()
	start := time.Now()
	var out []interval
	var lastAcked, lastErrs, lastRecon int64
	lastCPU, _ := processCPU(pid)
	lastAt := start
	fmt.Fprintf(w, "%8s %9s %9s %9s %9s %9s %9s %9s %9s %8s %8s %8s %7s %10s %9s %8s %7s %6s\n",
		"end_s", "acked/s", "p50_ms", "p99_ms", "p99.9_ms", "max_ms", "feed_p99", "errors", "reconn", "rss_mib", "anon_mib", "file_mib", "fds", "goroutines", "heap_mib", "held_mib", "cpu_%", "load")
	line := func(now time.Time) {
		_, acked, errs := fl.Progress()
		fs := fl.Stats()
		h := st.takeInterval()
		iv := interval{
			End: now.Sub(start).Seconds(), Acked: acked - lastAcked,
			AckP50: ms(h.ValueAtQuantile(50)), AckP99: ms(h.ValueAtQuantile(99)),
			AckP999: ms(h.ValueAtQuantile(99.9)), AckMax: ms(h.Max()),
			Errors: errs - lastErrs, Reconnects: fs.Reconnects - lastRecon, Load1: loadAverage(),
		}
		iv.PerSec = float64(iv.Acked) / now.Sub(lastAt).Seconds()
		if e2e != nil && e2e.ivl != nil {
			if fh := e2e.takeInterval(); fh.TotalCount() > 0 {
				iv.FeedP99 = ms(fh.ValueAtQuantile(99))
			}
		}
		if pid > 0 {
			m := processMemory(pid)
			iv.RSSMiB, iv.AnonMiB, iv.FileMiB, iv.Threads = m.rss, m.anon, m.file, m.threads
			iv.FDs = processFDs(pid)
			if c, ok := processCPU(pid); ok {
				iv.CPUPercent = 100 * (c - lastCPU).Seconds() / now.Sub(lastAt).Seconds()
				lastCPU = c
			}
		}
		if metricsURL != "" {
			// Not ctx: the last line's scrape may outlast the run.
			rt := scrapeRuntime(context.Background(), metricsURL)
			iv.Goroutines, iv.HeapMiB, iv.HeapHeldMiB = rt.goroutines, rt.heapMiB, rt.heldMiB()
		}
		lastAcked, lastErrs, lastRecon, lastAt = acked, errs, fs.Reconnects, now
		out = append(out, iv)
		fmt.Fprintf(w, "%8.0f %9.0f %9.2f %9.2f %9.2f %9.2f %9.2f %9d %9d %8.1f %8.1f %8.1f %7d %10d %9.1f %8.1f %7.1f %6.2f\n",
			iv.End, iv.PerSec, iv.AckP50, iv.AckP99, iv.AckP999, iv.AckMax, iv.FeedP99, iv.Errors, iv.Reconnects,
			iv.RSSMiB, iv.AnonMiB, iv.FileMiB, iv.FDs, iv.Goroutines, iv.HeapMiB, iv.HeapHeldMiB, iv.CPUPercent, iv.Load1)
	}
	for {
		select {
		case <-ctx.Done():
			// The run's last part, shorter than an interval when the
			// sending ended between two ticks (a paced run ends with its
			// last message due, before the tick at its duration): what
			// was acknowledged in it gets its line too.
			if _, acked, _ := fl.Progress(); acked != lastAcked {
				line(time.Now())
			}
			return out
		case now := <-t.C:
			line(now)
		}
	}
}

func ms(us int64) float64 { return float64(us) / 1000 }

// memory is a process's resident memory (MiB), split as the kernel counts
// it, and its thread count.
type memory struct {
	rss, anon, file float64
	threads         int
}

// processMemory reads a process's memory and thread count from
// /proc/<pid>/status.
func processMemory(pid int) memory {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}
	}
	return parseStatus(string(b))
}

// parseStatus picks VmRSS, RssAnon, RssFile (kB) and Threads out of a
// /proc/<pid>/status text.
func parseStatus(s string) memory {
	var m memory
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.rss = float64(n) / 1024
		case "RssAnon":
			m.anon = float64(n) / 1024
		case "RssFile":
			m.file = float64(n) / 1024
		case "Threads":
			m.threads = int(n)
		}
	}
	return m
}

// processFDs counts a process's open file descriptors.
func processFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return len(ents)
}

// runtimeStats is what the bench reads of the Go runtime from the engine's
// metrics.
type runtimeStats struct {
	goroutines                   int
	heapMiB, sysMiB, releasedMiB float64
}

// heldMiB is the memory the Go heap holds from the operating system.
func (r runtimeStats) heldMiB() float64 { return r.sysMiB - r.releasedMiB }

// scrapeRuntime reads the Go runtime's figures from a Prometheus metrics
// endpoint; zero figures if it cannot.
func scrapeRuntime(ctx context.Context, url string) runtimeStats {
	return runtimeOf(scrapeEngine(ctx, url))
}

// runtimeOf picks the goroutine count and the heap's in-use, obtained and
// released bytes out of a scrape.
func runtimeOf(s scrape) runtimeStats {
	mib := func(name string) float64 {
		v, _ := sampleOf(s, name, "", "")
		return v / (1 << 20)
	}
	g, _ := sampleOf(s, "go_goroutines", "", "")
	return runtimeStats{goroutines: int(g), heapMiB: mib("go_memstats_heap_inuse_bytes"),
		sysMiB: mib("go_memstats_heap_sys_bytes"), releasedMiB: mib("go_memstats_heap_released_bytes")}
}
