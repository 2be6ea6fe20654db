// Package embedded is the storage tier's own store: a Prometheus TSDB on
// local disk (TSDB), a storage.Sink, with its crash repair, and the
// Prometheus HTTP query API over it (API), which Grafana's Prometheus data
// source and promtool read unchanged.
//
//	db, err := embedded.Open(embedded.Options{Dir: dir}, reg, lg)
//	defer db.Close()
//	w, err := storage.New(storage.Options{Middletiers: mts}, db, reg, lg)
//	http.Handle("/", embedded.NewAPI(db.DB(), embedded.APIOptions{Healthy: ..., Ready: ...}, reg, lg))
//
// docs/storage.md has the mapping of points to series, the PromQL for each
// kind of field, and the options.
//
// # Durable when
//
// TSDB.Write returns nil only after the appender's commit has written every
// sample of its points to the TSDB's write logs (its WAL, and the
// write-behind log, WBL, of samples that went in out of order), which the
// TSDB replays at start, and after an fsync of those logs has returned.
// The library fsyncs its logs only when it completes a segment and at
// close; the package does the rest (logSync): one fsync per log per Write
// at most, shared by the Writes committed while one runs (group commit),
// and of a log's directory when a segment was created since. A power loss
// or a SIGKILL after Write returns loses nothing; the storage writer
// commits its checkpoint to the middletiers only then.
//
// Write is idempotent, so that a repeat of what was written before a crash
// does not show: the TSDB keeps one sample per series and timestamp, in
// order, out of order, and after compaction into blocks. Samples it can
// never take (older than the out-of-order window, a different value at a
// timestamp already taken, a string over MaxStringBytes) are dropped and
// counted in ingest_storage_dropped_samples_total{sink="tsdb",reason}.
// Writes may come from several goroutines at once (TSDB is a
// storage.ConcurrentSink): their transactions take turns, since the
// library's WAL replay assumes commits to one series do not overlap.
//
// # Fail stop
//
// A failed fsync of the write logs, a failed write to them (a full disk
// among the causes; the library only logs a failed WBL write, which the
// TSDB finds in the library's own metric) stops the TSDB's writes for
// good: after it the logs' state is unknown, so nothing more is reported
// stored. Failed returns the failure, ingest_storage_tsdb_failed (and
// ingest_storage_tsdb_no_space for a full disk) is 1, and the process
// must restart; the middletiers keep every record not committed.
//
// # Crash repair
//
// Open takes its own lock on the directory (ingest.lock), then, if the last
// process did not close it cleanly (Close writes the mark
// ingest-closed-cleanly after everything is durable; Open removes it
// first), repairs what the library would lose samples over, before the
// library opens it (tsdb_recover.go):
//
//   - A WAL whose last record a crash tore is cut before it, as the
//     library would cut it, but before the library opens it: the library's
//     own repair skips the WBL's replay and loses the out-of-order samples
//     it holds. Damage before the WAL's newest segment is no crash's, and
//     Open refuses it rather than drop the samples after it.
//   - The WBL is rewritten without its chunk markers (whose chunks a crash
//     may have lost from the head's write buffer), so that replay takes
//     every out-of-order sample; a sample also in a chunk on disk is read
//     once. The rewrite is swapped in by renames that a crash midway
//     completes or undoes at the next Open. Damage before the WBL's newest
//     segment is refused as the WAL's is.
//
// A directory closed cleanly is read whole too, both logs: a clean close
// fsynced them, so any damage in them is no crash's (a bad sector, a stray
// write), and Open refuses it, naming the log, rather than let the
// library's repair cut the log there and drop the samples after it
// (TestTSDBDamageAfterCleanClose). The clean mark stays until then.
//
// Every Open fsyncs everything in the logs once, crash or not: what a
// killed process wrote and never synced may still be only in the OS. TestTSDBCrash kills
// writers at random moments, TestTSDBTornWAL and TestTSDBKillInsideWBLWrite
// at the moments that lost samples, and TestTSDBDiskFull fills the disk;
// each checks that every sample a Write reported stored is there after.
//
// # Query API
//
// API serves, over any Queryable (TSDB.DB), the part of the Prometheus HTTP
// API Grafana, Grafana's alerting and promtool use: query, query_range,
// series, labels, label values, metadata, buildinfo and the other status
// endpoints, empty rules, alerts and exemplars; and Prometheus's health
// endpoints /-/healthy and /-/ready. Errors have Prometheus's JSON shape
// and status codes.
package embedded
