// Command bench is the engine's load generator and its proof: it connects
// many devices over WebSocket with the documented protocol only, streams
// messages at a pace or with a window in flight, and measures
// acknowledgement latency (HDR histograms), throughput, errors by code and
// connection set-up times. It prints a progress line every second, then a
// summary, and can write the results as JSON and the latency distribution
// as an SVG plot.
//
// Its devices are those of internal/loadgen, which the frontend's Go
// benchmarks use too: one goroutine per device that reads the server's
// acks and writes the frames they let go, with one read and one write
// system call per ack, over plain TCP, so that the generator costs a
// fraction of what the engine it measures costs per message on the same
// cores. The summary says how much: the bench's CPU time per acknowledged
// message while sending, and, for an engine it started, the engine's.
// Each frame holds one message; the frames one ack lets go leave with one
// write (-frame-per-write writes each with its own, as the client package
// does). A device whose connection ends (the server closed it with a
// retry hint, or its process was killed) reconnects with backoff and sends
// again, in order, every message not yet acknowledged, as docs/protocol.md
// asks of a device. Error frames are counted by their code, close frames
// by theirs ("close_1013"), connections that ended without one as
// "conn_lost".
//
// Ack latency runs from just before the write that first carried a
// message to just after the read that brought its ack. A paced device's
// messages come due on a schedule, the devices' phases spread evenly over
// one period; one that cannot go at once (its window is full, or its
// connection is being made again) waits, and the time from its slot in the
// schedule to its write is reported apart as the send lag.
//
// Every message carries its device's sequence number (1, 2, 3…) as the
// field "seq" and a device time "ts" unique to the device; -shape chooses
// the other fields: sensor (temp, hum, battery and ok, which with seq make
// five samples in the store) or gps, padded to -size bytes (200).
//
// It drives an engine already running (-url, with -secret-file to sign
// device tokens, sent as "Authorization: Bearer", or -insecure for an
// engine without auth, where devices name themselves with ?device=), or
// starts one itself from the ingest binary (-spawn), which is how `make
// bench` runs the standard scenarios. docs/benchmarks.md records their
// figures. An engine it starts keeps its data in a new directory under
// $TMPDIR (/tmp); where that is a file system in memory (tmpfs), its
// fsyncs cost nothing, and the bench warns that the figures are not a
// disk's: set TMPDIR to a directory on disk.
//
// With -check it then proves completeness: it queries the store's
// Prometheus API for every device's messages and reports every
// acknowledged message that is missing (lost) or stored twice
// (duplicated); the run fails if either is not zero. A device's times
// are distinct milliseconds, so a device sending more than a thousand
// messages a second stamps them ahead of the clock (a minute ahead after a
// minute at 2,000 a second); the store is queried as of the latest time
// sent, and the report says how far ahead that was. The frontend refuses
// a time more than an hour ahead (bad_timestamp): a device at N messages
// a second reaches it after 3,600 / (N/1,000 − 1) seconds (an hour at
// 2,000 a second, four minutes at 16,000), so a long run at full load
// needs devices enough to keep each near a thousand a second (-devices
// 100 at 150,000 msg/s: 1,500 each, two hours). It reads the store
// from the earliest time the run's acknowledged messages carry: what the
// store holds of the same devices from an earlier run against the same
// engine is not counted. Where that earlier run's devices ran ahead of the
// clock, the store holds points of theirs at times still to come; this
// run's device times start after the latest of them (the bench says so),
// or the store, which keeps one value per series and time, would drop
// this run's points at those times.
//
// A run interrupted (^C: SIGINT, or SIGTERM) stops sending at once,
// prints what it measured until then and fails (exit status 1), without
// its drain or its completeness check.
//
// An engine the bench started (-spawn, -spawn-all) that exits during the
// run ends the run at once, which fails with the engine's exit status and
// its last 20 log lines, after the first lines of a panic, fatal error or
// signal dump if it died of one. Latencies are recorded from 1 µs to an
// hour; a longer one counts as an hour.
//
// With -spawn-all it starts the whole engine in one process (ingest all:
// frontend, middletier, storage writer, live feed), follows every device on
// the live feed as a dashboard would and reports the device → dashboard
// latency (from the device's write to the feed frame's arrival), then
// checks completeness in the store. -feed follows the live feed of an
// engine already running. A dashboard the feed closes (4000: too slow, as
// at the highest rates on two cores, where the bench's own reader shares
// the cores) is reported as closed, with the close code, on a second
// "live feed:" line: what it showed stops there.
//
// With an engine's metrics endpoint (-spawn, -spawn-all, or -metrics) it
// also reports what the engine's own metrics gained over the run: the
// fsyncs each write-ahead log waited for in the same minutes
// (ingest_wal_fsync_duration_seconds, by hop), the bytes the engine
// allocated per acknowledged message, and, once the store is checked, the
// latency from a message's receipt at the frontend to the store holding it
// (ingest_storage_delivery_latency_seconds). Their quantiles are
// interpolated within the histograms' buckets, as PromQL's
// histogram_quantile does.
//
// With -chaos (and -spawn) it runs the tiers as separate processes — two
// middletiers, a storage writer following both, two frontends whose uplinks
// know both middletiers — kills a random one with SIGKILL every -chaos.every
// and starts it again while the load runs, then checks completeness. It
// reports the kills per tier and how long each took to serve again. A
// process that exits on its own meanwhile (a crash) fails the run.
// -tiers.frontends, -tiers.middletiers and -tiers.writers choose how many
// of each it runs (several writers form one writer group), -tiers.sink the
// writers' sink.
//
// With -tiers (and -spawn) it runs the tiers the same way without killing
// any, and reports for each tier the CPU time its processes spent while
// the devices sent (from /proc/<pid>/stat), per message it handled
// (entries into a frontend's or a middletier's WAL, points a writer's sink
// took, from each process's own counters), as µs per message (which is
// also CPU-seconds per million messages) and msg/s per core, the bytes its
// Go runtime allocated per message (go_memstats_alloc_bytes_total), and
// each process's share of its tier's messages. The frontends are
// named such that each middletier is the first choice of as many as can
// be, so that the load is spread evenly rather than as a draw of a few
// names happens to spread it.
//
// With -commands RATE it measures device commands instead
// (docs/commands.md): its devices are the client package's, send no
// messages, and answer every command ok; the bench, as an application,
// submits RATE commands a second in all through the command API (POST
// /v1/devices/{id}/commands), each to a device drawn at random among those
// connected, from 256 requests in flight at most. Each command's payload
// carries its number in the run, so a device names what it got before the
// API's 202 has come back. Latencies run from just before the POST is
// written: to the 202 (the command durable in its home), to the device's
// handler receiving it (API → device), and, for every -commands.poll'th
// command, to a GET /v1/commands/{cid} showing it acknowledged (API →
// result; the bench reads it every 2 ms from the device's answer on, a
// load on the API it counts). It prints the counts and these latencies a
// second (or with -interval, as lines with the engine's process), then the
// summary; after the drain it lists every device's commands through the
// API and fails the run if an accepted command was not delivered, or is
// not acknowledged there. It runs with -spawn-all (the engine without
// auth, the API on its device listener) or -url (with -secret-file it
// signs an application token with the scope "commands", or give one with
// -commands.token-file; -commands.api if the API is not on -url's host).
//
// -cpuprofile writes the bench's own CPU profile, for go tool pprof.
//
// -proto mqtt (MQTT 3.1.1) or mqtt5 (MQTT 5) makes the devices MQTT
// clients instead (docs/mqtt.md): each message is a QoS 1 PUBLISH to
// devices/{id}, settled by its PUBACK. With -url the endpoint is
// mqtt://host:1883, which may be any MQTT broker (the same generator
// measures the engine and the broker alike); -spawn and -spawn-all start
// the engine with an MQTT listener on a free port.
//
//	go run ./bench -spawn bin/ingest -devices 100 -window 16 -duration 20s
//	go run ./bench -url ws://host:8080/v1/ingest -secret-file secret -devices 10000 -rate 1 -ramp 20s
//	go run ./bench -spawn-all bin/ingest -devices 100 -rate 20 -duration 30s
//	go run ./bench -spawn bin/ingest -chaos -devices 50 -rate 20 -duration 10m
//	go run ./bench -spawn bin/ingest -tiers -tiers.frontends 3 -tiers.middletiers 3 -tiers.writers 2 -devices 3000 -rate 1 -ramp 10s -duration 40s
//	go run ./bench -spawn bin/ingest -proto mqtt -devices 100 -window 16 -duration 10s
//	go run ./bench -spawn-all bin/ingest -commands 1000 -devices 10000 -ramp 20s -duration 60s
//	go run ./bench -url mqtt://127.0.0.1:1883 -insecure -proto mqtt5 -devices 10000 -rate 1 -ramp 10s
package main
