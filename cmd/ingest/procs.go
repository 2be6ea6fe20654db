package main

import (
	"context"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/procs"
)

// followLoad adds the part that runs the process's goroutines on one
// processor while it is nearly idle and on every processor once it is
// busy (--procs.follow-load, internal/procs). GOMAXPROCS in the
// environment is the operator's choice, and is kept.
func (p *process) followLoad(on bool) {
	following := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ingest_procs_follow_load",
		Help: "1 if the number of processors the process runs goroutines on follows its load (--procs.follow-load, and no GOMAXPROCS in the environment), else 0.",
	})
	p.reg.MustRegister(following)
	if !on {
		return
	}
	// The runtime takes a positive integer and ignores anything else.
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			p.lg.Info("GOMAXPROCS is set: the processors do not follow the load", "GOMAXPROCS", v)
			return
		}
	}
	following.Set(1)
	changes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ingest_procs_changes_total",
		Help: "Changes of GOMAXPROCS by --procs.follow-load, by the number of processors changed to (go_sched_gomaxprocs_threads is the current one).",
	}, []string{"procs"})
	p.reg.MustRegister(changes)
	changes.WithLabelValues("1") // from the start, for rate()
	// In the first stage: shutdown, the drains included, runs on every
	// processor.
	p.add(part{name: "procs", stage: stageDevices, run: func(ctx context.Context) error {
		return procs.Follow(ctx, procs.Options{
			Changed: func(n int, cores float64) {
				changes.WithLabelValues(strconv.Itoa(n)).Inc()
				p.lg.Debug("GOMAXPROCS changed", "procs", n, "cores_used", cores)
			},
			Stopped: func(err error) {
				following.Set(0)
				p.lg.Error("the processors follow the load no more: the process's CPU time cannot be read", "err", err)
			},
		})
	}})
}
