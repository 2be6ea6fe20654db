// Package remotewrite is a storage sink that writes points to a store that
// speaks the Prometheus remote-write protocol 1.0: Prometheus (started with
// --web.enable-remote-write-receiver), VictoriaMetrics, Mimir. A
// storage.Writer drives it like any storage.Sink.
//
//	s, err := remotewrite.New(remotewrite.Options{URL: "http://prometheus:9090/api/v1/write"}, reg, lg)
//	w, err := storage.New(storage.Options{Middletiers: mts}, s, reg, lg)
//
// # What lands in the store
//
// The series of the embedded TSDB (storage/embedded), exactly: a numeric
// field f is the sample of {__name__=storage.MetricName(f), device,
// registry labels}; a string field f is a sample of value 1 of
// {__name__=storage.MetricName(f)+"_info", device, registry labels,
// value=<the string>}, left out and counted when longer than
// MaxStringBytes. Each sample is its own TimeSeries, the labels sorted; a
// Write sends its samples oldest first, MaxSamplesPerRequest to a request,
// one request at a time.
//
// # Durable when
//
// Write returns nil only once the store has answered 2xx for every sample
// of the points, or the sink has dropped (and counted) a sample the store
// refused for good: then the writer commits its checkpoint and the
// middletiers may release the records. What survives a power loss after a
// 2xx is the store's own guarantee (docs/storage.md, Crash safety).
// Repeats are harmless: Prometheus (with an out-of-order window) and
// VictoriaMetrics (with -dedup.minScrapeInterval) keep one sample per
// series and timestamp.
//
// # Failures
//
// Network errors, 5xx and 429 are retried with backoff for up to
// MaxRetryTime; then Write returns a *storage.KindError of kind
// "unavailable", and the writer retries the points later. A 4xx about the
// request itself (401, 403, 404, a body the store could not decode) fails
// the Write at once with kind "rejected" wrapping a *StatusError, dropping
// nothing. Samples refused for good (older than the store accepts, a
// different value at a timestamp already taken, otherwise unstorable) are
// found by splitting the request in halves, since Prometheus refuses a
// whole request for one bad sample without saying which; they are dropped
// and counted in ingest_storage_external_dropped_samples_total{reason}.
// docs/storage-sinks.md has the details, the metrics and what each store
// needs.
package remotewrite
