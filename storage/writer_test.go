package storage_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
	"github.com/ingest-io/ingest/wal"
)

// openTSDB opens an embedded TSDB in a directory of the test's, closed when
// the test ends: the sink of these tests, a storage.ConcurrentSink, whose
// query API shows what was stored.
func openTSDB(t *testing.T) *embedded.TSDB {
	t.Helper()
	db, err := embedded.Open(embedded.Options{Dir: t.TempDir()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// startMiddletier runs a middletier called id on loopback until the test
// ends.
func startMiddletier(t *testing.T, id string, opts middletier.Options) *testkit.Middletier {
	t.Helper()
	opts.ID = id
	return testkit.StartMiddletier(t, t.TempDir(), opts, wal.Options{})
}

// message is the envelope of message i: device dev-(i%devices), device
// time base + i ms, payload {"n":i,"ok":true,"state":"s<i%3>"}.
func message(i int, base time.Time, devices int) []byte {
	return envelope.AppendEncode(nil, &envelope.Envelope{
		Frontend: "fe-1", Device: fmt.Sprintf("dev-%d", i%devices),
		Received: base.Add(time.Hour).UnixNano(), HasDeviceTime: true, DeviceTime: base.Add(time.Duration(i) * time.Millisecond).UnixNano(),
		Payload: fmt.Appendf(nil, `{"id":%d,"n":%d,"ok":true,"state":"s%d"}`, i, i, i%3),
	})
}

// send sends messages [from, to) (indexes from 1) in batches of 100 and
// waits for their acknowledgement.
func send(t *testing.T, fe *testkit.Frontend, from, to int, base time.Time) {
	t.Helper()
	fe.Next = uint64(from)
	for i := from; i < to; i += 100 {
		entries := make([][]byte, min(100, to-i))
		for j := range entries {
			entries[j] = message(i+j, base, 10)
		}
		fe.Send(t, entries...)
	}
}

// writer is a Writer writing into a sink, running until stopped.
type writer struct {
	wr   *storage.Writer
	reg  *prometheus.Registry
	stop func()
}

func startWriter(t *testing.T, db storage.Sink, opts storage.Options, lg ...*slog.Logger) *writer {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := storage.New(opts, db, reg, append(lg, nil)[0])
	if err != nil {
		t.Fatal(err)
	}
	stop := testkit.Go(t, "writer", s.Run)
	return &writer{wr: s, reg: reg, stop: func() { stop() }}
}

func endpoints(ms ...*testkit.Middletier) []storage.Endpoints {
	var out []storage.Endpoints
	for _, m := range ms {
		out = append(out, storage.Endpoints{Stream: m.Addrs.Stream, Consumer: m.Addrs.Consumer})
	}
	return out
}

// stored checks that the store holds messages [1, n] exactly once each.
func stored(t *testing.T, base string, n int, at time.Time) {
	t.Helper()
	q := func(expr, want string) {
		t.Helper()
		if got := testkit.PromScalar(t, base, expr, at); got != want {
			t.Fatalf("%s = %q, want %q", expr, got, want)
		}
	}
	q(`sum(count_over_time(n[1h]))`, fmt.Sprint(n))
	q(`sum(sum_over_time(n[1h]))`, fmt.Sprint(n*(n+1)/2))
	q(`sum(count_over_time(ok[1h]))`, fmt.Sprint(n))
	q(`sum(count_over_time(state_info[1h]))`, fmt.Sprint(n))
	q(`count(count_over_time(n[1h]))`, "10") // ten devices
}

// TestWriterFetchThenStream: records committed before the writer
// starts come by fetch, later ones by the stream; each lands once, and the
// middletier's checkpoint for the writer reaches the last record.
func TestWriterFetchThenStream(t *testing.T) {
	mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	send(t, fe, 1, 3001, base)

	db := openTSDB(t)
	w := startWriter(t, db, storage.Options{Middletiers: endpoints(mt),
		Labels: func(dev string) map[string]string { return map[string]string{"site": "s-" + dev} }})
	testkit.WaitFor(t, "fetched records", 20*time.Second, func() bool {
		return testkit.Metric(t, w.reg, "ingest_storage_points_written_total") == 3000
	})
	send(t, fe, 3001, 6001, base)
	testkit.WaitFor(t, "streamed records", 20*time.Second, func() bool {
		return testkit.Metric(t, w.reg, "ingest_storage_points_written_total") == 6000
	})
	testkit.WaitFor(t, "the checkpoint", 10*time.Second, func() bool {
		return testkit.Metric(t, mt.Reg, "ingest_middletier_consumer_lag_entries") == 0
	})
	if !w.wr.CaughtUp() {
		t.Fatal("not caught up")
	}
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	at := base.Add(10 * time.Second)
	stored(t, srv.URL, 6000, at)
	if got := testkit.PromScalar(t, srv.URL, `count(n{site="s-dev-3",device="dev-3"})`, base.Add(6*time.Second)); got != "1" {
		t.Fatalf("registry label: %q", got)
	}
	if got := testkit.Metric(t, w.reg, "ingest_storage_samples_written_total"); got != 6000*3 {
		t.Fatalf("samples written %v, want %d", got, 6000*3)
	}
	// One delivery latency per point; these were received an hour ahead
	// of the writer's clock, which counts as 0, not as a negative time.
	if n, sum := histogram(t, w.reg, "ingest_storage_delivery_latency_seconds"); n != 6000 || sum != 0 {
		t.Fatalf("delivery latency: %d observations summing to %v, want 6000 summing to 0", n, sum)
	}
}

// TestWriterAtRecordOfAnotherVersion: a record in a format newer than the
// writer reads (an envelope of version 3, as a frontend upgraded before the
// writers would write) holds the writer: it says so, takes nothing from
// that record on, and the middletier keeps it for a writer that reads it.
// It used to be counted invalid and skipped, and the checkpoint committed
// past it: lost for good, and every later one of its kind. An envelope of
// version 0, which no engine writes, is not newer: it is counted invalid
// and skipped, and the writer commits past it (taken for a newer one, it
// held the writer for good, the middletier keeping every later record
// while the writer said to upgrade the writers).
func TestWriterAtRecordOfAnotherVersion(t *testing.T) {
	for _, version := range []byte{3, 0} {
		t.Run(fmt.Sprint("version ", version), func(t *testing.T) {
			mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
			fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
			base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
			send(t, fe, 1, 11, base)
			rec := message(11, base, 10)
			body := rec[:len(rec)-4]
			body[0] = version
			binary.LittleEndian.PutUint32(rec[len(body):], crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
			if _, err := envelope.Decode(rec); !errors.Is(err, envelope.ErrVersion) || errors.Is(err, envelope.ErrNewer) != (version == 3) {
				t.Fatalf("the test's record: %v", err)
			}
			fe.Send(t, rec)
			send(t, fe, 12, 22, base)
			var logs testkit.Logs
			w := startWriter(t, openTSDB(t), storage.Options{Middletiers: endpoints(mt)}, logs.Logger())
			if version == 0 {
				testkit.WaitFor(t, "the writer to commit past the record", 20*time.Second, func() bool {
					return testkit.Metric(t, w.reg, "ingest_storage_checkpoint") == 21
				})
				if n := testkit.Metric(t, w.reg, "ingest_storage_points_written_total"); n != 20 {
					t.Fatalf("%v points written, want 20", n)
				}
				if n := testkit.Metric(t, w.reg, "ingest_storage_invalid_records_total"); n != 1 {
					t.Fatalf("%v records counted invalid, want 1", n)
				}
				if n := logs.Count("newer format"); n != 0 {
					t.Fatalf("the writer said %d times that the record is of a newer format", n)
				}
				return
			}
			testkit.WaitFor(t, "the writer to say it waits", 20*time.Second, func() bool { return logs.Count("newer format") > 0 })
			if ck := testkit.Metric(t, w.reg, "ingest_storage_checkpoint"); ck >= 11 {
				t.Fatalf("checkpoint %v: past the record it could not read", ck)
			}
			if n := testkit.Metric(t, w.reg, "ingest_storage_invalid_records_total"); n != 0 {
				t.Fatalf("%v records counted invalid", n)
			}
			// The middletier keeps the newer record and those after it.
			testkit.WaitFor(t, "the middletier's lag for the writer", 20*time.Second, func() bool {
				return testkit.Metric(t, mt.Reg, "ingest_middletier_consumer_lag_entries") >= 10
			})
		})
	}
}

// histogram returns the sample count and sum of the histogram called name.
func histogram(t *testing.T, reg *prometheus.Registry, name string) (uint64, float64) {
	t.Helper()
	ms := testkit.Series(t, reg, name)
	if len(ms) != 1 {
		t.Fatalf("no histogram %s", name)
	}
	h := ms[0].GetHistogram()
	return h.GetSampleCount(), h.GetSampleSum()
}

// TestWriterResumes: a writer stopped and started again resumes from
// the checkpoint the middletier keeps: it writes only what came after.
func TestWriterResumes(t *testing.T) {
	mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	db := openTSDB(t)

	w := startWriter(t, db, storage.Options{Middletiers: endpoints(mt)})
	send(t, fe, 1, 1001, base)
	testkit.WaitFor(t, "first records", 20*time.Second, func() bool {
		return testkit.Metric(t, w.reg, "ingest_storage_points_written_total") == 1000
	})
	w.stop()
	send(t, fe, 1001, 2001, base)

	w2 := startWriter(t, db, storage.Options{Middletiers: endpoints(mt)})
	testkit.WaitFor(t, "records after the restart", 20*time.Second, func() bool {
		return testkit.Metric(t, w2.reg, "ingest_storage_points_written_total") >= 1000
	})
	if got := testkit.Metric(t, w2.reg, "ingest_storage_points_written_total"); got != 1000 {
		t.Fatalf("second writer wrote %v points, want the 1000 after the checkpoint", got)
	}
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	stored(t, srv.URL, 2000, base.Add(10*time.Second))
}

// gatedSink holds every Write until the gate opens, so that the stream
// piles up behind a sink that does not keep up.
type gatedSink struct {
	storage.Sink
	gate chan struct{}
}

func (g *gatedSink) Write(ctx context.Context, pts []storage.Point) error {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Sink.Write(ctx, pts)
}

// TestWriterOverflowFetches: a sink that stalls makes the stream
// overflow the writer's buffer; the writer keeps draining its socket, and
// fetches what it dropped once the sink is back: a gap, seen when a later
// stream message arrives, or the stream's lost tail, found when the stream
// stays silent. Nothing is lost.
func TestWriterOverflowFetches(t *testing.T) {
	for _, c := range []struct {
		name     string
		idlePoll time.Duration
		more     bool // send more after the sink is back
	}{
		{"gap", time.Hour, true},
		{"tail", 200 * time.Millisecond, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}, StreamBatch: 10})
			fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
			base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
			db := openTSDB(t)
			g := &gatedSink{Sink: db, gate: make(chan struct{})}
			w := startWriter(t, g, storage.Options{Middletiers: endpoints(mt), StreamBuffer: 2, MaxBatch: 50, IdlePoll: c.idlePoll})
			testkit.WaitFor(t, "caught up", 10*time.Second, w.wr.CaughtUp)
			send(t, fe, 1, 3001, base)
			testkit.WaitFor(t, "overflow", 10*time.Second, func() bool {
				return testkit.Metric(t, w.reg, "ingest_storage_stream_overflows_total") > 0
			})
			close(g.gate)
			n := 3000
			written := func() bool {
				return testkit.Metric(t, w.reg, "ingest_storage_points_written_total") == float64(n)
			}
			if c.more {
				// Keep the stream flowing, ten at a time, until the writer
				// has all: the gap shows when a later message arrives.
				deadline := time.Now().Add(30 * time.Second)
				for !written() {
					if time.Now().After(deadline) {
						t.Fatal("timed out waiting for every record")
					}
					send(t, fe, n+1, n+11, base)
					n += 10
				}
			}
			testkit.WaitFor(t, "every record", 30*time.Second, written)
			if c.more && testkit.Metric(t, w.reg, "ingest_storage_stream_gaps_total") == 0 {
				t.Fatal("no gap counted")
			}
			srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
			defer srv.Close()
			// Message i is stamped base+i ms: ask after the last of them.
			stored(t, srv.URL, n, base.Add(time.Duration(n)*time.Millisecond+time.Second))
		})
	}
}

// TestWriterTwoMiddletiers: after a failover the same messages are in
// two middletiers' streams; the writer follows both and stores each once.
func TestWriterTwoMiddletiers(t *testing.T) {
	mt0 := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
	mt1 := startMiddletier(t, "mt-1", middletier.Options{Consumers: []string{"storage"}})
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	db := openTSDB(t)
	w := startWriter(t, db, storage.Options{Middletiers: endpoints(mt0, mt1)})
	send(t, testkit.NewFrontend(t, mt0.Addrs.Ingest, "fe-1.0001"), 1, 1501, base)
	// The frontend failed over before mt-0's acks reached it: mt-1 gets
	// 1001.. again, then the rest.
	fe := testkit.NewFrontend(t, mt1.Addrs.Ingest, "fe-1.0001")
	send(t, fe, 1001, 2001, base)
	testkit.WaitFor(t, "both streams", 20*time.Second, func() bool {
		return testkit.Metric(t, w.reg, "ingest_storage_points_written_total") == 2500
	})
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	stored(t, srv.URL, 2000, base.Add(10*time.Second))
}

// Close unregisters the metrics of a Writer that never ran, as Run does
// when it returns, and may be called again: a new Writer can then register
// its metrics on the same Registerer.
func TestWriterCloseUnregisters(t *testing.T) {
	db := openTSDB(t)
	reg := prometheus.NewRegistry()
	opts := storage.Options{Middletiers: []storage.Endpoints{{Stream: "tcp://127.0.0.1:1", Consumer: "tcp://127.0.0.1:2"}}}
	testkit.CheckCloseUnregisters(t, reg, "Writer", func() (*storage.Writer, error) { return storage.New(opts, db, reg, nil) })
}
