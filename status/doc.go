// Package status is the engine's status page: one HTML page, embedded in
// the binary, that shows live what the process is doing and charts the
// last minutes of it, and the JSON snapshot and history it polls.
//
// The snapshot and the history are computed from the process's own
// prometheus.Gatherer, so the page needs no Prometheus server and no PromQL: connected devices,
// messages received and acknowledged per second, the depth of every queue
// (ingest_queue_depth_entries and _bytes, by hop), ack latency (from
// ingest_frontend_ack_latency_seconds) and the live feed's end-to-end
// latency (ingest_feed_dispatch_latency_seconds, frontend receipt to feed
// dispatch), p50 and p99, and the commands the process's command homes keep,
// by state (ingest_command_commands). A figure whose metrics the process does not
// register (a tier running alone) is null, and the page shows a dash.
//
// # Windows
//
// Rates and latency quantiles cover a recent window, as rate() and
// histogram_quantile() over a range would: the handler keeps a few earlier
// gathers (at most one per Options.Window/10, for about Options.Window) and
// compares the current one with the newest that is at least Window old, or
// with the oldest it has. New takes the first gather, so the first snapshot
// already covers the time since New. Counters that went down (a component
// re-registered its metrics) count from zero, as Prometheus treats resets.
// Quantiles interpolate linearly within a bucket, as histogram_quantile
// does; one that falls in the +Inf bucket is the highest finite bound.
//
// # History
//
// The page's charts show the last Options.History (15 minutes): Run takes a
// point every Options.Interval (a second) from the Gatherer, each the
// snapshot's figures over the Window before it, and keeps them in a ring;
// /history serves them as columns, all of them or those after ?since=, so
// that a page opened late still draws the whole span. Without Run the
// history stays empty and the page shows its figures only. Snapshots do
// not depend on Run: they gather in the request.
//
// The page follows the live feed WebSocket (Options.FeedURL) for its table
// of recent messages; serve it on the feed's listener so that the browser's
// Origin is the feed's own.
package status
