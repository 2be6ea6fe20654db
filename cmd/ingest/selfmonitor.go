//go:build !nostorage

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/storage/embedded"
)

// selfMonitorConfig is --self-monitor.interval: how often a process with
// the embedded TSDB writes its own metrics into it.
type selfMonitorConfig struct {
	interval time.Duration
	f        flags
}

func newSelfMonitorConfig() selfMonitorConfig { return selfMonitorConfig{interval: 15 * time.Second} }

func (c *selfMonitorConfig) register(f flags) {
	c.f = f
	f.duration(&c.interval, "self-monitor.interval", `how often the process writes its own metrics (every tier's, as /metrics serves them) `+
		`into the embedded TSDB, with the labels job="ingest" and instance=<the query API's host:port>, so that the engine dashboard `+
		`works against the query API alone; 0: never, else at least 100ms`)
}

// build adds the part that writes p's metrics into db every interval, as
// the target instance, unless the interval is 0.
func (c *selfMonitorConfig) build(p *process, db *embedded.TSDB, instance string) error {
	if c.interval == 0 {
		return nil
	}
	if c.interval < 100*time.Millisecond {
		// Gathering every tier's metrics and writing them takes a while:
		// with 1ns the process did nothing else (60 % of a core, idle).
		return fmt.Errorf("--self-monitor.interval %s: give 0 (never) or at least 100ms", c.interval)
	}
	failures := prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_self_monitor_failures_total",
		Help: "Writes of the process's own metrics into the embedded TSDB that failed (--self-monitor.interval)."})
	if err := p.reg.Register(failures); err != nil {
		return fmt.Errorf("register self-monitoring metrics: %w", err)
	}
	p.onClose("self-monitoring metrics", func() error { p.reg.Unregister(failures); return nil })
	target := map[string]string{"job": "ingest", "instance": instanceOf(instance)}
	interval := c.interval
	p.add(part{name: "self-monitoring", stage: stageSupport, run: func(ctx context.Context) error {
		t := time.NewTicker(interval)
		defer t.Stop()
		failing := false
		for {
			mfs, err := p.reg.Gather() // what could be gathered, with err
			if err == nil {
				_, err = db.WriteGathered(ctx, mfs, target, time.Now())
			}
			switch {
			case err != nil && !failing:
				p.lg.Warn("self-monitoring: writing the process's metrics into the tsdb failed", "err", err)
			case err == nil && failing:
				p.lg.Info("self-monitoring: the process's metrics are written into the tsdb again")
			}
			if failing = err != nil; failing {
				failures.Inc()
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	}})
	return nil
}

// instanceOf is the instance label of a process listening on addr: addr,
// with the host name for an unspecified host (":9090").
func instanceOf(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}
