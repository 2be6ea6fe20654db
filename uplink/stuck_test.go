package uplink_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// A frontend that stops reading acknowledgements does not stall the
// others: zmq4's ROUTER would block every send behind it for good, so the
// middletier's watchdog closes the socket and listens again, and the
// healthy frontend's entries keep being acknowledged.
func TestStuckFrontendDoesNotStallOthers(t *testing.T) {
	mt := startTier(t, t.TempDir(), middletier.Options{SendStall: 500 * time.Millisecond}, wal.Options{})
	addrs := mt.Addrs

	// The stuck frontend: a DEALER behind a proxy that will stop reading
	// what the middletier sends it.
	fz := tcpproxy.Start(t, addrs.Ingest[len("tcp://"):])
	stuck := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity("stuck#1")), zmq4.WithTimeout(time.Second))
	defer stuck.Close()
	if err := stuck.Dial(fz.Endpoint()); err != nil {
		t.Fatal(err)
	}
	// A long origin makes every ack large, and sending the same batch again
	// and again draws an ack each time without touching the WAL (a repeat):
	// the buffers towards the stuck frontend fill fast.
	origin := "stuck-" + strings.Repeat("x", 200)
	repeat := zmq4.NewMsg(wire.Append(nil, &wire.Batch{Origin: origin, First: 1, Entries: [][]byte{make([]byte, 64)}}))
	if err := stuck.Send(repeat); err != nil {
		t.Fatal(err)
	}
	if _, err := stuck.Recv(); err != nil { // the path works before it freezes
		t.Fatal(err)
	}
	fz.FreezeReplies()

	// The stuck frontend floods: every batch draws an ack it never reads,
	// until the middletier's send buffer to it is full and a send stalls.
	flooding, stopFlood := context.WithCancel(context.Background())
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		for flooding.Err() == nil {
			if stuck.Send(repeat) != nil {
				return
			}
		}
	}()
	defer func() { stopFlood(); stuck.Close(); <-floodDone }()

	// The healthy frontend streams through an uplink all the while.
	f := startLink(t, uplink.Options{Middletiers: []string{addrs.Ingest}})
	streaming, stopStreaming := context.WithCancel(context.Background())
	var appended atomic.Uint64
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		for streaming.Err() == nil {
			if _, err := f.log.AppendBatch(context.Background(), [][]byte{[]byte("healthy")}); err != nil {
				t.Error(err)
				return
			}
			appended.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	took := testkit.WaitFor(t, "a stalled send to the stuck frontend", 120*time.Second, func() bool {
		return testkit.Metric(t, mt.Reg, "ingest_middletier_send_stalls_total") >= 1
	})
	t.Logf("the middletier's send to the stuck frontend stalled after %v of flooding", took)
	// Keep streaming past the stall, then check the healthy frontend got
	// through all of it.
	mark := appended.Load()
	testkit.WaitFor(t, "the healthy frontend to go on after the stall", 30*time.Second, func() bool { return f.log.Released() > mark })
	stopStreaming()
	<-streamDone
	total := appended.Load()
	testkit.WaitFor(t, "every healthy entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == total })
	t.Logf("healthy frontend: %d entries, all acknowledged", total)
}
