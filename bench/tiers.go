package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ingest-io/ingest/uplink"
)

// shape is how many processes of each tier a cluster runs, and the
// writers' sinks.
type shape struct {
	Frontends, Middletiers, Writers int
	Sink                            string // the writers' --sink; empty: the embedded TSDB, one per writer
}

// withDefaults is s with two frontends, two middletiers and one writer
// where it gives none: what -chaos has always run.
func (s shape) withDefaults() shape {
	if s.Frontends <= 0 {
		s.Frontends = 2
	}
	if s.Middletiers <= 0 {
		s.Middletiers = 2
	}
	if s.Writers <= 0 {
		s.Writers = 1
	}
	return s
}

// frontendIDs names n frontends such that the middletiers (their ingest
// endpoints) are the first choice of as even a number of them as can be:
// rendezvous hashing spreads a few given names as a random draw does
// (docs/scaling.md), and a measurement of the tiers' costs wants the load
// spread evenly, not the luck of the draw.
func frontendIDs(n int, middletiers []string) []string {
	most := (n + len(middletiers) - 1) / len(middletiers)
	firsts := map[string]int{}
	var ids []string
	for i := 0; len(ids) < n; i++ {
		id := fmt.Sprintf("fe-%d", i)
		first := uplink.Rank(id, middletiers)[0]
		if firsts[first] < most {
			firsts[first]++
			ids = append(ids, id)
		}
	}
	return ids
}

// tierCounter is, per kind of tier, the counter of the messages a process
// of it handled: entries into a frontend's WAL, entries into a
// middletier's, points a writer's sink took.
var tierCounter = map[string]struct{ name, key, value string }{
	"frontend":   {"ingest_wal_appended_entries_total", "hop", "frontend"},
	"middletier": {"ingest_middletier_entries_total", "", ""},
	"storage":    {"ingest_storage_points_written_total", "", ""},
}

// reading is a process's CPU time and message counter at one instant.
type reading struct {
	cpu      time.Duration
	messages float64
	alloc    float64 // bytes the Go runtime has allocated since the process started
	ok       bool
}

// read takes every process's reading.
func (c *cluster) read() []reading {
	out := make([]reading, len(c.tiers))
	for i, t := range c.tiers {
		t.mu.Lock()
		cmd := t.cmd
		t.mu.Unlock()
		if cmd == nil {
			continue
		}
		cpu, ok := processCPU(cmd.Process.Pid)
		tc := tierCounter[t.kind]
		m := scrapeEngine(context.Background(), t.metrics)
		n, nok := sampleOf(m, tc.name, tc.key, tc.value)
		alloc, aok := sampleOf(m, "go_memstats_alloc_bytes_total", "", "")
		out[i] = reading{cpu: cpu, messages: n, alloc: alloc, ok: ok && nok && aok}
	}
	return out
}

// tierFigure is what one kind of tier spent on the messages it handled
// while the devices sent.
type tierFigure struct {
	Kind        string             `json:"kind"`
	Processes   int                `json:"processes"`
	CPUSeconds  float64            `json:"cpu_seconds"`
	Messages    float64            `json:"messages"`
	MicrosPer   float64            `json:"cpu_us_per_message"` // also CPU-seconds per million messages
	AllocBytes  float64            `json:"alloc_bytes"`
	BytesPer    float64            `json:"alloc_bytes_per_message"` // also MB per million messages
	PerCore     float64            `json:"messages_per_second_per_core"`
	Shares      map[string]float64 `json:"shares"`
	Unavailable []string           `json:"unavailable,omitempty"` // processes without a reading
}

// figures compares two readings of every process, tier by tier.
func (c *cluster) figures(before, after []reading) []tierFigure {
	byKind := map[string]*tierFigure{}
	var kinds []string
	for i, t := range c.tiers {
		f := byKind[t.kind]
		if f == nil {
			f = &tierFigure{Kind: t.kind, Shares: map[string]float64{}}
			byKind[t.kind] = f
			kinds = append(kinds, t.kind)
		}
		f.Processes++
		if !before[i].ok || !after[i].ok {
			f.Unavailable = append(f.Unavailable, t.name)
			continue
		}
		f.CPUSeconds += (after[i].cpu - before[i].cpu).Seconds()
		f.AllocBytes += after[i].alloc - before[i].alloc
		f.Shares[t.name] = after[i].messages - before[i].messages
		f.Messages += f.Shares[t.name]
	}
	out := make([]tierFigure, 0, len(kinds))
	for _, k := range kinds {
		f := byKind[k]
		for name, n := range f.Shares {
			if f.Messages > 0 {
				f.Shares[name] = n / f.Messages
			}
		}
		if f.Messages > 0 && f.CPUSeconds > 0 {
			f.MicrosPer = f.CPUSeconds * 1e6 / f.Messages
			f.PerCore = f.Messages / f.CPUSeconds
		}
		if f.Messages > 0 {
			f.BytesPer = f.AllocBytes / f.Messages
		}
		out = append(out, *f)
	}
	sort.SliceStable(out, func(i, j int) bool { return rank(out[i].Kind) < rank(out[j].Kind) })
	return out
}

// printTiers prints each tier's figures and shares.
func printTiers(w io.Writer, figs []tierFigure) {
	for _, f := range figs {
		fmt.Fprintf(w, "%-11s %d× %.2f s CPU for %.0f messages: %.1f µs per message, %.0f msg/s per core, %.0f B allocated per message; shares",
			f.Kind+":", f.Processes, f.CPUSeconds, f.Messages, f.MicrosPer, f.PerCore, f.BytesPer)
		names := slices.Sorted(maps.Keys(f.Shares))
		for _, n := range names {
			fmt.Fprintf(w, " %s %.3f", n, f.Shares[n])
		}
		if len(f.Unavailable) > 0 {
			fmt.Fprintf(w, " (no reading: %s)", strings.Join(f.Unavailable, " "))
		}
		fmt.Fprintln(w)
	}
}
