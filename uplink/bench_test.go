package uplink_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// BenchmarkHop measures the hop from a frontend's WAL to a middletier's WAL:
// b.N entries of 200 bytes, already durable in the frontend's WAL, are
// forwarded by a Link to a middletier on loopback, which appends them to its
// WAL (group commit, fsync) and acknowledges them. The clock stops when the
// frontend has released the last one.
func BenchmarkHop(b *testing.B) {
	mt := startTierB(b)
	fl := testkit.OpenWAL(b, b.TempDir(), wal.Options{Hop: "frontend"})
	batch := make([][]byte, 1024)
	for i := range batch {
		batch[i] = make([]byte, 200)
	}
	for left := b.N; left > 0; left -= len(batch) {
		if _, err := fl.AppendBatch(context.Background(), batch[:min(left, len(batch))]); err != nil {
			b.Fatal(err)
		}
	}
	k, err := uplink.New(uplink.Options{ID: "fe-bench", Middletiers: []string{mt}}, fl, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() { done <- k.Run(ctx) }()
	for fl.Released() < uint64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	elapsed := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkAckRoundTrip measures one batch of one 200-byte entry from a
// DEALER to the middletier and its acknowledgement back, one at a time: the
// latency of the hop, fsync of the middletier's WAL included. The repeat
// case sends the same batch again and again, which is acknowledged without a
// write: the hop without the fsync.
func BenchmarkAckRoundTrip(b *testing.B) {
	b.Run("new", func(b *testing.B) { benchRoundTrip(b, false) })
	b.Run("repeat", func(b *testing.B) { benchRoundTrip(b, true) })
}

func benchRoundTrip(b *testing.B, repeat bool) {
	mt := startTierB(b)
	sck := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity("fe-rtt#1")))
	defer sck.Close()
	if err := sck.Dial(mt); err != nil {
		b.Fatal(err)
	}
	entry := [][]byte{make([]byte, 200)}
	lat := make([]time.Duration, 0, b.N)
	for i := range b.N {
		first := uint64(i + 1)
		if repeat {
			first = 1
		}
		t := time.Now()
		if err := sck.Send(zmq4.NewMsg(wire.Append(nil, &wire.Batch{Origin: "fe-rtt", First: first, Entries: entry}))); err != nil {
			b.Fatal(err)
		}
		msg, err := sck.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if m, err := wire.Decode(msg.Frames[0]); err != nil || m.(*wire.Ack).UpTo != first {
			b.Fatalf("reply %v %v", m, err)
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

// startTierB runs a middletier for a benchmark and returns its ingest endpoint.
func startTierB(b *testing.B) string {
	b.Helper()
	return testkit.StartMiddletier(b, b.TempDir(), middletier.Options{ID: "mt-bench"}, wal.Options{}).Addrs.Ingest
}
