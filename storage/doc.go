// Package storage is the core of the storage tier: the Writer, which
// follows the middletiers' streams, turns each device message into a
// Point (numeric fields as samples, string fields kept, the device's
// registry labels on every series), writes points to a Sink, and commits
// its checkpoint back to the middletier only after the sink holds them.
//
// The sinks are packages of their own, split by artifact as Prometheus
// splits its tsdb; each imports storage for Point and Sink, never the
// reverse, and storage imports nothing of the Prometheus server
// (github.com/prometheus/prometheus), its TSDB least of all:
//
//   - storage/embedded: the embedded Prometheus TSDB, with its crash
//     repair, and the Prometheus HTTP query API over it, which Grafana's
//     Prometheus data source reads unchanged;
//   - storage/remotewrite: Prometheus remote-write (Prometheus,
//     VictoriaMetrics, Mimir);
//   - storage/influx: InfluxDB line protocol (InfluxDB, VictoriaMetrics).
//
// docs/storage.md has the mapping, the PromQL for each kind of field and
// the options.
//
// # Sinks
//
// A Sink's Write returns nil only once the store holds every point it was
// given, durably as far as the store goes; only then does the Writer
// commit. Write must be idempotent: after a crash the Writer writes again
// what it wrote after its last commit. A Sink is written from one
// goroutine at a time, a ConcurrentSink (the embedded TSDB) from the
// Writer's followers of every middletier at once. A sink that can never
// store a point drops and counts it rather than failing the batch for
// ever. Sink, in sink.go, has the whole contract.
//
// # Subscribing
//
// A Writer follows each middletier with a durable stream.Follower (the
// package stream has the contract): a SUB socket on its stream and a
// DEALER socket on its consumer ROUTER. A goroutine per SUB socket drains
// it at once into a bounded buffer, whatever the sink is doing: a zmq4 PUB
// socket writes its subscribers one after another, so one slow subscriber
// slows all. Records are taken strictly in sequence order. A gap in
// sequence (a message dropped at the PUB's high-water mark, at the
// buffer's bound, or before the subscription reached the PUB) is filled
// by fetch; so is anything the stream never carried (records committed
// before the middletier started, the tail of a stream that went silent:
// after Options.IdlePoll without a message the Writer fetches). The
// Follower hands the records over in batches of up to Options.MaxBatch;
// the Writer turns them into points and writes them to the sink.
//
// # Checkpoints: exactly once in effect
//
// The checkpoint is kept by the middletier, not by the writer. At start a
// writer sends Fetch{From: 0}, which the middletier answers from its
// checkpoint + 1. After every successful Sink.Write the writer commits the
// last sequence written (Commit); never before. At shutdown it sends its
// last checkpoint once more and waits a moment for the acknowledgement. So a writer killed at any
// instant loses nothing (the middletier keeps every record past the
// checkpoint of a durable consumer, named in its --consumers) and may write
// again what it wrote after its last commit: sinks are idempotent (same
// series, same timestamp, same value), and repeats do not show in the
// store. Across a middletier failover a message can be in two middletiers'
// streams; it becomes the same samples both times, so it is stored once.
//
// A writer with an external sink therefore keeps no state of its own.
// Writers that share a consumer name share a checkpoint: run one writer
// per consumer name, or make them a writer group.
//
// # Writer groups
//
// Writers given the same Options.Group divide the middletiers' streams:
// each middletier's stream is followed by one writer of the group at a
// time (a stream.Member per middletier, holding the group's lease there),
// under the consumer name Group, so that the checkpoint is the group's.
// When a writer stops it hands its streams over with their checkpoints;
// when it dies its leases run out and another member resumes from the last
// checkpoint, writing again what the dead one wrote after it (the sinks are
// idempotent). The writers of a group should write to one shared store.
// Different groups each receive everything.
//
// # Failures
//
// A failed write is retried, with backoff, with the same points, for as
// long as it fails; the stream meanwhile overflows its buffer and is
// fetched again later. A middletier that stops answering (three fetches
// unanswered, a stalled send) is dialled again, from the last sequence
// written. A middletier that comes back with its WAL created again starts
// its sequence at 1: the writer resumes from its checkpoint there. A record
// that does not decode is counted and skipped: no retry could store it. Points a sink can never store (older than its
// out-of-order window, say) are dropped by the sink and counted, rather
// than failing the batch for ever.
//
// # Limits
//
// A Limiter, put in front of a sink (Limiter.Sink), bounds what one device
// can add to the store: the series it has (a field that would make one
// more than LimitOptions.MaxSeriesPerDevice is dropped, the device's known
// series keep being written), and the series names of a point's fields
// (two fields that make one name: the first in name order is kept). What it
// drops is counted; the frontend has already refused, with an error code to
// the device, messages whose fields break the protocol's field limits.
package storage
