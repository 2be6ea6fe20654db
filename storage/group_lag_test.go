package storage_test

import (
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/storage"
)

// TestWriterGroupHandoverClearsLag: a writer of a group that hands a
// stream over to another (here while its sink is stuck, so that it is
// behind) no longer shows a lag for that middletier: the writer that
// follows it now shows the stream's lag, and once that one has caught up
// no writer of the group shows any. The writer that handed the stream
// over used to show the lag it had when it stopped following, for as long
// as it ran.
func TestWriterGroupHandoverClearsLag(t *testing.T) {
	mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"g"}, LeaseTTL: time.Second})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	db := openTSDB(t)
	stuck := &gatedSink{Sink: db, gate: make(chan struct{})}
	// The 300 are in the middletier before w-2 follows: its resume learns
	// all of them at once. (Sent while it followed, they could come in
	// several stream messages, and its lag, which it counts from what it
	// has seen, stop at the first's while its stuck sink held it.)
	send(t, fe, 1, 301, base)
	// Members in name order w-1, w-2; the middletier's slot 0 goes to w-1
	// once it asks.
	w2 := startWriter(t, stuck, storage.Options{Group: "g", Member: "w-2", Middletiers: endpoints(mt), IdlePoll: 100 * time.Millisecond})
	testkit.WaitFor(t, "w-2 to follow", 20*time.Second, func() bool {
		return testkit.Metric(t, w2.reg, "ingest_storage_group_streams") == 1
	})
	testkit.WaitFor(t, "w-2 to lag", 20*time.Second, func() bool {
		return testkit.Metric(t, w2.reg, "ingest_storage_lag_records") == 300
	})

	w1 := takeOver(t, db, mt, w2)
	testkit.WaitFor(t, "w-1 to write every point", 20*time.Second, func() bool {
		return testkit.Metric(t, w1.reg, "ingest_storage_points_written_total") == 300
	})
	testkit.WaitFor(t, "w-1 to show no lag", 20*time.Second, func() bool {
		return testkit.Metric(t, w1.reg, "ingest_storage_lag_records") == 0
	})
	if got := testkit.Metric(t, w2.reg, "ingest_storage_lag_records"); got != 0 {
		t.Fatalf("w-2, which no longer follows mt-0, shows a lag of %v records there", got)
	}
	w1.stop()
	w2.stop()
}

// TestWriterGroupHandoverClearsCheckpoint: a writer of a group that has
// handed a stream over no longer shows the checkpoint it last had
// acknowledged there, which the group has since moved past (the writer
// that follows the stream now shows it). It used to show it for as long
// as it ran: a checkpoint that looks stuck.
func TestWriterGroupHandoverClearsCheckpoint(t *testing.T) {
	mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"g"}, LeaseTTL: time.Second})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	db := openTSDB(t)
	w2 := startWriter(t, db, storage.Options{Group: "g", Member: "w-2", Middletiers: endpoints(mt), IdlePoll: 100 * time.Millisecond})
	send(t, fe, 1, 101, base)
	testkit.WaitFor(t, "w-2 to store the first 100", 20*time.Second, func() bool {
		return testkit.Metric(t, w2.reg, "ingest_storage_checkpoint") == 100
	})

	w1 := takeOver(t, db, mt, w2)
	send(t, fe, 101, 201, base)
	testkit.WaitFor(t, "w-1 to store the next 100", 20*time.Second, func() bool {
		return testkit.Metric(t, w1.reg, "ingest_storage_checkpoint") == 200
	})
	if got := testkit.Gauges(t, w2.reg, "ingest_storage_checkpoint", "middletier"); len(got) != 0 {
		t.Fatalf("w-2, which no longer follows mt-0, shows the checkpoint %v there", got)
	}
	w1.stop()
	w2.stop()
}

// TestWriterGaugesUnderMiddletierID: a writer names a middletier by its
// consumer endpoint until the middletier says its id. From then on its lag
// and checkpoint are shown under the id only: the series it had under the
// endpoint (at 0, as it had nothing yet) are gone, not left beside the
// id's for as long as the writer runs.
func TestWriterGaugesUnderMiddletierID(t *testing.T) {
	mt := startMiddletier(t, "mt-0", middletier.Options{Consumers: []string{"storage"}})
	fe := testkit.NewFrontend(t, mt.Addrs.Ingest, "fe-1.0001")
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	db := openTSDB(t)
	w := startWriter(t, db, storage.Options{Middletiers: endpoints(mt), IdlePoll: 100 * time.Millisecond})
	send(t, fe, 1, 101, base)
	testkit.WaitFor(t, "the checkpoint 100 under mt-0", 20*time.Second, func() bool {
		return testkit.Gauges(t, w.reg, "ingest_storage_checkpoint", "middletier")["mt-0"] == 100
	})
	for _, name := range []string{"ingest_storage_checkpoint", "ingest_storage_lag_records"} {
		if got := testkit.Gauges(t, w.reg, name, "middletier"); len(got) != 1 {
			t.Errorf("%s: %v, want mt-0's alone (not also under the endpoint %s)", name, got, mt.Addrs.Consumer)
		}
	}
	w.stop()
}

// takeOver starts w-1, first in name order in group g, writing to db, and
// waits for it to take mt's stream over from w2.
func takeOver(t *testing.T, db storage.Sink, mt *testkit.Middletier, w2 *writer) *writer {
	t.Helper()
	w1 := startWriter(t, db, storage.Options{Group: "g", Member: "w-1", Middletiers: endpoints(mt), IdlePoll: 100 * time.Millisecond})
	testkit.WaitFor(t, "w-1 to take the stream over", 20*time.Second, func() bool {
		return testkit.Metric(t, w1.reg, "ingest_storage_group_streams") == 1 &&
			testkit.Metric(t, w2.reg, "ingest_storage_group_streams") == 0
	})
	return w1
}
