package storage_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// mtier is a middletier running on loopback over a real WAL.
type mtier struct {
	addrs middletier.Addrs
	reg   *prometheus.Registry
	stop  func()
}

func startMiddletier(t *testing.T, id string, opts middletier.Options) *mtier {
	t.Helper()
	dir := t.TempDir()
	l, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{Hop: "middletier"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts.ID, opts.StateDir = id, dir
	opts.IngestAddr, opts.ConsumerAddr, opts.StreamAddr = "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
	reg := prometheus.NewRegistry()
	r, err := middletier.New(opts, l, reg, nil)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	addrs, err := r.Listen()
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	m := &mtier{addrs: addrs, reg: reg, stop: func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("middletier %s: %v", id, err)
			}
			l.Close()
		})
	}}
	t.Cleanup(m.stop)
	return m
}

// frontend sends batches to a middletier as a frontend's uplink would.
type frontend struct {
	t      *testing.T
	origin string
	acked  uint64 // the release mark sent with every batch
	sck    zmq4.Socket
	acks   chan uint64
	wg     sync.WaitGroup
}

func newFrontend(t *testing.T, origin, endpoint string) *frontend {
	t.Helper()
	sck := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(origin+"#test")), zmq4.WithTimeout(time.Second))
	if err := sck.Dial(endpoint); err != nil {
		t.Fatal(err)
	}
	fe := &frontend{t: t, origin: origin, sck: sck, acks: make(chan uint64, 1024)}
	fe.wg.Go(func() {
		for {
			msg, err := sck.Recv()
			if err != nil {
				return
			}
			if m, err := wire.Decode(msg.Frames[len(msg.Frames)-1]); err == nil {
				if a, ok := m.(*wire.Ack); ok {
					fe.acks <- a.UpTo
				}
			}
		}
	})
	t.Cleanup(func() { sck.Close(); fe.wg.Wait() })
	return fe
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
func (fe *frontend) send(from, to int, base time.Time) {
	fe.t.Helper()
	for i := from; i < to; i += 100 {
		n := min(100, to-i)
		entries := make([][]byte, n)
		for j := range entries {
			entries[j] = message(i+j, base, 10)
		}
		if err := fe.sck.Send(zmq4.NewMsg(wire.Append(nil, &wire.Batch{Origin: fe.origin, Acked: fe.acked, First: uint64(i), Entries: entries}))); err != nil {
			fe.t.Fatal(err)
		}
		deadline := time.After(10 * time.Second)
		for acked := false; !acked; {
			select {
			case up := <-fe.acks:
				acked = up >= uint64(i+n-1)
			case <-deadline:
				fe.t.Fatalf("no ack for %d..%d", i, i+n-1)
			}
		}
	}
}

// writer is a Subscriber writing into a TSDB, running until stopped.
type writer struct {
	sub  *storage.Subscriber
	reg  *prometheus.Registry
	stop func()
}

func startWriter(t *testing.T, db storage.Sink, opts storage.Options) *writer {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := storage.New(opts, db, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	w := &writer{sub: s, reg: reg, stop: func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("subscriber: %v", err)
			}
		})
	}}
	t.Cleanup(w.stop)
	return w
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func endpoints(ms ...*mtier) []storage.Endpoints {
	var out []storage.Endpoints
	for _, m := range ms {
		out = append(out, storage.Endpoints{Stream: m.addrs.Stream, Consumer: m.addrs.Consumer})
	}
	return out
}

// stored checks that the store holds messages [1, n] exactly once each.
func stored(t *testing.T, base string, n int, at time.Time) {
	t.Helper()
	q := func(expr, want string) {
		t.Helper()
		if got := scalarOf(t, base, expr, at); got != want {
			t.Fatalf("%s = %q, want %q", expr, got, want)
		}
	}
	q(`sum(count_over_time(n[1h]))`, fmt.Sprint(n))
	q(`sum(sum_over_time(n[1h]))`, fmt.Sprint(n*(n+1)/2))
	q(`sum(count_over_time(ok[1h]))`, fmt.Sprint(n))
	q(`sum(count_over_time(state_info[1h]))`, fmt.Sprint(n))
	q(`count(count_over_time(n[1h]))`, "10") // ten devices
}

// TestSubscriberFetchThenStream: records committed before the writer
// starts come by fetch, later ones by the stream; each lands once, and the
// middletier's checkpoint for the writer reaches the last record.
func TestSubscriberFetchThenStream(t *testing.T) {
	mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
	fe := newFrontend(t, "fe-1.0001", mt.addrs.Ingest)
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	fe.send(1, 3001, base)

	db, _ := openTSDB(t, t.TempDir(), storage.TSDBOptions{})
	w := startWriter(t, db, storage.Options{Middletiers: endpoints(mt),
		Labels: func(dev string) map[string]string { return map[string]string{"site": "s-" + dev} }})
	waitFor(t, "fetched records", 20*time.Second, func() bool {
		return testutil.ToFloat64(counter(t, w.reg, "ingest_storage_points_written_total")) == 3000
	})
	fe.send(3001, 6001, base)
	waitFor(t, "streamed records", 20*time.Second, func() bool {
		return testutil.ToFloat64(counter(t, w.reg, "ingest_storage_points_written_total")) == 6000
	})
	waitFor(t, "the checkpoint", 10*time.Second, func() bool {
		return testutil.ToFloat64(counter(t, mt.reg, "ingest_middletier_consumer_lag_entries")) == 0
	})
	if !w.sub.CaughtUp() {
		t.Fatal("not caught up")
	}
	srv := httptest.NewServer(storage.NewAPI(db.DB(), storage.APIOptions{}, nil, nil))
	defer srv.Close()
	at := base.Add(10 * time.Second)
	stored(t, srv.URL, 6000, at)
	if got := scalarOf(t, srv.URL, `count(n{site="s-dev-3",device="dev-3"})`, base.Add(6*time.Second)); got != "1" {
		t.Fatalf("registry label: %q", got)
	}
	if got := testutil.ToFloat64(counter(t, w.reg, "ingest_storage_samples_written_total")); got != 6000*3 {
		t.Fatalf("samples written %v, want %d", got, 6000*3)
	}
	// One delivery latency per point; these were received an hour ahead
	// of the writer's clock, which counts as 0, not as a negative time.
	if n, sum := histogram(t, w.reg, "ingest_storage_delivery_latency_seconds"); n != 6000 || sum != 0 {
		t.Fatalf("delivery latency: %d observations summing to %v, want 6000 summing to 0", n, sum)
	}
}

// histogram returns the sample count and sum of the histogram called name.
func histogram(t *testing.T, reg *prometheus.Registry, name string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatalf("no histogram %s", name)
	return 0, 0
}

// TestSubscriberResumes: a writer stopped and started again resumes from
// the checkpoint the middletier keeps: it writes only what came after.
func TestSubscriberResumes(t *testing.T) {
	mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
	fe := newFrontend(t, "fe-1.0001", mt.addrs.Ingest)
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	db, _ := openTSDB(t, t.TempDir(), storage.TSDBOptions{})

	w := startWriter(t, db, storage.Options{Middletiers: endpoints(mt)})
	fe.send(1, 1001, base)
	waitFor(t, "first records", 20*time.Second, func() bool {
		return testutil.ToFloat64(counter(t, w.reg, "ingest_storage_points_written_total")) == 1000
	})
	w.stop()
	fe.send(1001, 2001, base)

	w2 := startWriter(t, db, storage.Options{Middletiers: endpoints(mt)})
	waitFor(t, "records after the restart", 20*time.Second, func() bool {
		return testutil.ToFloat64(counter(t, w2.reg, "ingest_storage_points_written_total")) >= 1000
	})
	if got := testutil.ToFloat64(counter(t, w2.reg, "ingest_storage_points_written_total")); got != 1000 {
		t.Fatalf("second writer wrote %v points, want the 1000 after the checkpoint", got)
	}
	srv := httptest.NewServer(storage.NewAPI(db.DB(), storage.APIOptions{}, nil, nil))
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

// TestSubscriberOverflowFetches: a sink that stalls makes the stream
// overflow the writer's buffer; the writer keeps draining its socket, and
// fetches what it dropped once the sink is back: a gap, seen when a later
// stream message arrives, or the stream's lost tail, found when the stream
// stays silent. Nothing is lost.
func TestSubscriberOverflowFetches(t *testing.T) {
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
			fe := newFrontend(t, "fe-1.0001", mt.addrs.Ingest)
			base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
			db, _ := openTSDB(t, t.TempDir(), storage.TSDBOptions{})
			g := &gatedSink{Sink: db, gate: make(chan struct{})}
			w := startWriter(t, g, storage.Options{Middletiers: endpoints(mt), StreamBuffer: 2, MaxBatch: 50, IdlePoll: c.idlePoll})
			waitFor(t, "caught up", 10*time.Second, w.sub.CaughtUp)
			fe.send(1, 3001, base)
			waitFor(t, "overflow", 10*time.Second, func() bool {
				return testutil.ToFloat64(counter(t, w.reg, "ingest_storage_stream_overflows_total")) > 0
			})
			close(g.gate)
			n := 3000
			written := func() bool {
				return testutil.ToFloat64(counter(t, w.reg, "ingest_storage_points_written_total")) == float64(n)
			}
			if c.more {
				// Keep the stream flowing, ten at a time, until the writer
				// has all: the gap shows when a later message arrives.
				deadline := time.Now().Add(30 * time.Second)
				for !written() {
					if time.Now().After(deadline) {
						t.Fatal("timed out waiting for every record")
					}
					fe.send(n+1, n+11, base)
					n += 10
				}
			}
			waitFor(t, "every record", 30*time.Second, written)
			if c.more && testutil.ToFloat64(counter(t, w.reg, "ingest_storage_stream_gaps_total")) == 0 {
				t.Fatal("no gap counted")
			}
			srv := httptest.NewServer(storage.NewAPI(db.DB(), storage.APIOptions{}, nil, nil))
			defer srv.Close()
			// Message i is stamped base+i ms: ask after the last of them.
			stored(t, srv.URL, n, base.Add(time.Duration(n)*time.Millisecond+time.Second))
		})
	}
}

// TestSubscriberTwoMiddletiers: after a failover the same messages are in
// two middletiers' streams; the writer follows both and stores each once.
func TestSubscriberTwoMiddletiers(t *testing.T) {
	mt0 := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
	mt1 := startMiddletier(t, "mt-1", middletier.Options{Consumers: []string{"storage"}})
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	db, _ := openTSDB(t, t.TempDir(), storage.TSDBOptions{})
	w := startWriter(t, db, storage.Options{Middletiers: endpoints(mt0, mt1)})
	newFrontend(t, "fe-1.0001", mt0.addrs.Ingest).send(1, 1501, base)
	// The frontend failed over before mt-0's acks reached it: mt-1 gets
	// 1001.. again, then the rest.
	fe := newFrontend(t, "fe-1.0001", mt1.addrs.Ingest)
	fe.acked = 1000
	fe.send(1001, 2001, base)
	waitFor(t, "both streams", 20*time.Second, func() bool {
		return testutil.ToFloat64(counter(t, w.reg, "ingest_storage_points_written_total")) == 2500
	})
	srv := httptest.NewServer(storage.NewAPI(db.DB(), storage.APIOptions{}, nil, nil))
	defer srv.Close()
	stored(t, srv.URL, 2000, base.Add(10*time.Second))
}

// counter sums every series of the metric called name.
func counter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("sum", "sum", nil, nil), prometheus.CounterValue, sum)
	})
}
