// Package influx is a storage sink that writes points as InfluxDB line
// protocol over HTTP: InfluxDB 1.x (/write?db=…), VictoriaMetrics
// (/write). A storage.Writer drives it like any storage.Sink.
//
//	s, err := influx.New(influx.Options{URL: "http://influxdb:8086/write?db=ingest"}, reg, lg)
//	w, err := storage.New(storage.Options{Middletiers: mts}, s, reg, lg)
//
// # What lands in the store
//
// One line per point, in the measurement of Options.Measurement, at the
// point's time in milliseconds: the tags device and the registry labels
// (named as the embedded TSDB names them, storage.LabelName), every numeric
// field as a float field, every string field as a string field (or none,
// with NoStrings):
//
//	ingest,device=d1,site=lab gps.lat=52.1,status="ok" 1700000000000
//
// Fields line protocol cannot carry (NaN, infinities, empty names) and
// strings over 64 KiB are dropped and counted.
//
// # Durable when
//
// Write returns nil only once the store has answered 2xx for every line,
// or said it dropped lines for good (a partial write), or the sink has
// dropped (and counted) a line the store refused: then the writer commits
// its checkpoint and the middletiers may release the records. What
// survives a power loss after a 2xx is the store's own guarantee
// (docs/storage.md, Crash safety). Repeats are harmless: InfluxDB keeps
// one value per measurement, tag set, field and timestamp
// (VictoriaMetrics with -dedup.minScrapeInterval).
//
// # Failures
//
// Network errors, 5xx and 429 are retried with backoff for up to
// MaxRetryTime; then Write returns a *storage.KindError of kind
// "unavailable", and the writer retries the points later. A 4xx about the
// request itself (a missing database, authentication) fails the Write at
// once with kind "rejected" wrapping a *StatusError, dropping nothing.
// Points beyond the retention policy and fields of a type other than the
// one stored come back as a partial write, counted as dropped, and so do
// the lines a partial write says InfluxDB could not parse; a request
// refused as unparseable is split until the bad lines stand alone, which
// are dropped. docs/storage-sinks.md has the details and the metrics.
package influx
