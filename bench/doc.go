// Command bench is the engine's load generator and its proof: it connects
// many devices over WebSocket with the device client and the documented
// protocol only, streams messages at a pace or with a window in flight, and
// measures acknowledgement latency (HDR histograms), throughput, errors by
// code and connection set-up times. It prints a progress line every second,
// then a summary, and can write the results as JSON and the latency
// distribution as an SVG plot.
//
// It drives an engine already running (-url), or starts one itself from the
// ingest binary (-spawn), which is how `make bench` runs the standard
// scenarios. docs/benchmarks.md records their figures.
//
// With -check it then proves completeness: it queries the store's
// Prometheus API for every device's messages (each carries its sequence
// number as a field and a device time unique to the device) and reports
// every acknowledged message that is missing (lost) or stored twice
// (duplicated); the run fails if either is not zero.
//
// With -spawn-all it starts the whole engine in one process (ingest all:
// frontend, middletier, storage writer, live feed), follows every device on
// the live feed as a dashboard would and reports the device → dashboard
// latency (from the device's send to the feed frame's arrival), then checks
// completeness in the store. -feed follows the live feed of an engine
// already running.
//
// With -chaos (and -spawn) it runs the tiers as separate processes — two
// middletiers, a storage writer following both, two frontends whose uplinks
// know both middletiers — kills a random one with SIGKILL every -chaos.every
// and starts it again while the load runs, then checks completeness. It
// reports the kills per tier and how long each took to serve again.
//
//	go run ./bench -spawn bin/ingest -devices 100 -window 16 -duration 20s
//	go run ./bench -url ws://host:8080/v1/ingest -secret-file secret -devices 10000 -rate 1 -ramp 20s
//	go run ./bench -spawn-all bin/ingest -devices 100 -rate 20 -duration 30s
//	go run ./bench -spawn bin/ingest -chaos -devices 50 -rate 20 -duration 10m
package main
