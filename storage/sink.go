package storage

import (
	"context"
	"errors"
)

// Sink writes points durably into a store. The embedded TSDB and the
// external stores (Prometheus remote-write, InfluxDB line protocol) are
// sinks; a Writer drives one.
//
// Write returns nil only once the store holds every point in points: the
// Writer then commits its checkpoint to the middletier, and the records
// behind those points may be released there for good. An error means some
// points may or may not be stored; the Writer retries the same points
// later, so Write must be idempotent: writing points the store already holds
// (same series, same timestamp, same value) creates no duplicate data and
// returns no error.
//
// A sink may drop a point the store can never take (older than the store
// accepts, say) instead of failing the batch forever, but it must count it
// in a metric: a dropped point is not retried.
//
// Write is called from one goroutine at a time, unless the sink is a
// ConcurrentSink. points and everything in them belong to the caller after
// Write returns. Close releases the sink's resources; it is called once,
// after the last Write.
type Sink interface {
	Write(ctx context.Context, points []Point) error
	Close() error
}

// ConcurrentSink is a Sink whose Write may be called from several
// goroutines at once. A Writer follows each middletier from a goroutine of
// its own; it makes them take turns at a Sink, and lets their Writes
// overlap at a ConcurrentSink whose ConcurrentWrites returns true. Such a
// sink can then do one goroutine's work while another waits: the embedded
// TSDB (storage/embedded) runs one transaction during another's fsync, and
// the Writes committed during one fsync share the next.
//
// Every promise of Sink holds for each Write on its own: a Write returns
// nil only once the store holds all of its points, whatever the others do.
type ConcurrentSink interface {
	Sink
	// ConcurrentWrites reports whether Write may be called from several
	// goroutines at once. A Writer asks once, in New.
	ConcurrentWrites() bool
}

// KindError names the kind of a sink's failure ("timeout", "rejected",
// "unavailable", "append"…), which the Writer counts in
// ingest_storage_sink_errors_total{kind}. Errors that are not a KindError
// are counted as "timeout" when they wrap context.DeadlineExceeded, else
// as "other".
type KindError struct {
	Kind string
	Err  error
}

func (e *KindError) Error() string { return e.Err.Error() }
func (e *KindError) Unwrap() error { return e.Err }

// errorKind is the kind label of a sink error.
func errorKind(err error) string {
	var ke *KindError
	switch {
	case errors.As(err, &ke):
		return ke.Kind
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "other"
}
