package storage

import "context"

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
// Write is called from one goroutine at a time. points and everything in
// them belong to the caller after Write returns. Close releases the sink's
// resources; it is called once, after the last Write.
type Sink interface {
	Write(ctx context.Context, points []Point) error
	Close() error
}
