package storage_test

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
)

// holders returns, per middletier, the writers its holder gauge names for
// group g.
func holders(t *testing.T, g string, mts ...*testkit.Middletier) [][]string {
	t.Helper()
	out := make([][]string, len(mts))
	for i, mt := range mts {
		mfs, err := mt.Reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "ingest_middletier_group_holder" {
				continue
			}
			for _, m := range mf.GetMetric() {
				var group, writer string
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "group":
						group = l.GetValue()
					case "writer":
						writer = l.GetValue()
					}
				}
				if group == g && m.GetGauge().GetValue() == 1 {
					out[i] = append(out[i], writer)
				}
			}
		}
	}
	return out
}

// TestWriterGroup: two writers of one group over three middletiers divide
// the streams before anything is sent (each middletier followed by one writer, two by one and one
// by the other, as their slots say), and everything sent is stored once in
// the store they share; when one stops, the other takes its streams over
// with their checkpoints, and what is sent next is stored once too. A
// writer of a second group, with a store of its own, receives everything.
func TestWriterGroup(t *testing.T) {
	opts := middletier.Options{Consumers: []string{"g", "replica"}, LeaseTTL: time.Second}
	mts := []*testkit.Middletier{startMiddletier(t, "mt-0", opts), startMiddletier(t, "mt-1", opts), startMiddletier(t, "mt-2", opts)}
	var fes []*testkit.Frontend
	for i, mt := range mts {
		fes = append(fes, testkit.NewFrontend(t, mt.Addrs.Ingest, fmt.Sprintf("fe-%d.0001", i)))
	}
	base := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	// Message i goes to middletier i%3, each frontend's own indexes
	// counting from 1.
	sendAll := func(from, to int) {
		for k, fe := range fes {
			var entries [][]byte
			for i := from; i < to; i++ {
				if i%3 == k {
					entries = append(entries, message(i, base, 10))
				}
			}
			for len(entries) > 0 {
				n := min(100, len(entries))
				fe.Send(t, entries[:n]...)
				entries = entries[n:]
			}
		}
	}
	shared := openTSDB(t)
	group := func(member string) *writer {
		return startWriter(t, shared, storage.Options{Group: "g", Member: member, Middletiers: endpoints(mts...), IdlePoll: 100 * time.Millisecond})
	}
	a, b := group("a"), group("b")
	own := openTSDB(t)
	replica := startWriter(t, own, storage.Options{Group: "replica", Middletiers: endpoints(mts...)})

	// Members in name order a, b; slots 0, 1, 2: a, b, a.
	testkit.WaitFor(t, "the streams divided", 20*time.Second, func() bool {
		h := holders(t, "g", mts...)
		return len(h[0]) == 1 && h[0][0] == "a" && len(h[1]) == 1 && h[1][0] == "b" && len(h[2]) == 1 && h[2][0] == "a" &&
			testkit.Metric(t, a.reg, "ingest_storage_group_streams") == 2 && testkit.Metric(t, b.reg, "ingest_storage_group_streams") == 1
	})
	sendAll(1, 6001)
	at := base.Add(time.Hour)
	wait := func(db *embedded.TSDB, n int) {
		t.Helper()
		api := httpAPI(t, db)
		testkit.WaitFor(t, fmt.Sprintf("%d messages stored", n), 30*time.Second, func() bool {
			return testkit.PromScalar(t, api, `sum(count_over_time(n[1h]))`, at) == fmt.Sprint(n)
		})
		stored(t, api, n, at)
	}
	wait(shared, 6000)
	wait(own, 6000)
	if pa, pb := testkit.Metric(t, a.reg, "ingest_storage_points_written_total"), testkit.Metric(t, b.reg, "ingest_storage_points_written_total"); pa != 4000 || pb != 2000 {
		t.Errorf("points written by a %v and b %v, want 4000 and 2000: each stream by one writer", pa, pb)
	}

	// Once a's checkpoints cover everything it wrote, a stops and leaves
	// the group; b takes its two streams over from there.
	for _, mt := range mts {
		testkit.WaitFor(t, mt.Opts.ID+"'s checkpoints", 20*time.Second, func() bool {
			return testkit.Metric(t, mt.Reg, "ingest_middletier_consumer_lag_entries") == 0
		})
	}
	stopped := time.Now()
	a.stop()
	took := testkit.WaitFor(t, "b to hold every stream", 20*time.Second, func() bool {
		h := holders(t, "g", mts...)
		return len(h[0]) == 1 && h[0][0] == "b" && len(h[1]) == 1 && h[1][0] == "b" && len(h[2]) == 1 && h[2][0] == "b" &&
			testkit.Metric(t, b.reg, "ingest_storage_group_streams") == 3
	})
	t.Logf("b held every stream %v after a stopped (%v after its stop returned)", time.Since(stopped), took)
	sendAll(6001, 9001)
	wait(shared, 9000)
	wait(own, 9000)
	// b resumed from a's checkpoints: it wrote what a had not, and only
	// that.
	if pb := testkit.Metric(t, b.reg, "ingest_storage_points_written_total"); pb != 2000+3000 {
		t.Errorf("b wrote %v points, want 5000: a's streams resumed from its checkpoints", pb)
	}
	for _, mt := range mts {
		w := testkit.Gauges(t, mt.Reg, "ingest_middletier_group_writers", "group")
		if w["g"] != 1 {
			t.Errorf("%s: group g has %v writers, want 1", mt.Opts.ID, w["g"])
		}
	}
	replica.stop()
	b.stop()
}

// httpAPI serves db's query API until the test ends and returns its URL.
func httpAPI(t *testing.T, db *embedded.TSDB) string {
	t.Helper()
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	t.Cleanup(srv.Close)
	return srv.URL
}
