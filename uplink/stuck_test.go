package uplink_test

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// freezer is a TCP proxy in front of a middletier. Until frozen it carries
// bytes both ways; once frozen it stops reading what the middletier sends,
// through a 4 KiB receive buffer, as a peer that has stopped reading would.
type freezer struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Go(func() { f.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *freezer) serve(client net.Conn) {
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return serr
	}}
	server, err := d.Dial("tcp", f.target)
	if err != nil {
		client.Close()
		return
	}
	f.mu.Lock()
	f.conns = append(f.conns, client, server)
	f.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() {
		io.Copy(server, client)
		server.Close()
	})
	wg.Go(func() {
		buf := make([]byte, 512)
		for !f.frozen.Load() {
			server.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			n, err := server.Read(buf)
			if n > 0 {
				client.Write(buf[:n])
			}
			if err != nil && !isTimeout(err) {
				client.Close()
				return
			}
		}
		// Frozen: read nothing more until the connection goes away.
		server.SetReadDeadline(time.Time{})
	})
	wg.Wait()
	client.Close()
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// A frontend that stops reading acknowledgements does not stall the
// others: zmq4's ROUTER would block every send behind it for good, so the
// middletier's watchdog closes the socket and listens again, and the
// healthy frontend's entries keep being acknowledged.
func TestStuckFrontendDoesNotStallOthers(t *testing.T) {
	dir := t.TempDir()
	ml, err := wal.Open(dir+"/wal", wal.Options{Hop: "middletier"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Close()
	reg := prometheus.NewRegistry()
	any := "tcp://127.0.0.1:0"
	r, err := middletier.New(middletier.Options{ID: "mt", StateDir: dir, IngestAddr: any, ConsumerAddr: any, StreamAddr: any,
		SendStall: 500 * time.Millisecond}, ml, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := r.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// The stuck frontend: a DEALER behind the freezer.
	fz := newFreezer(t, addrs.Ingest[len("tcp://"):])
	stuck := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity("stuck#1")), zmq4.WithTimeout(time.Second))
	defer stuck.Close()
	if err := stuck.Dial("tcp://" + fz.ln.Addr().String()); err != nil {
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
	fz.frozen.Store(true)

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
	took := waitFor(t, "a stalled send to the stuck frontend", 120*time.Second, func() bool {
		return gaugeOrCounter(t, reg, "ingest_middletier_send_stalls_total") >= 1
	})
	t.Logf("the middletier's send to the stuck frontend stalled after %v of flooding", took)
	// Keep streaming past the stall, then check the healthy frontend got
	// through all of it.
	mark := appended.Load()
	waitFor(t, "the healthy frontend to go on after the stall", 30*time.Second, func() bool { return f.log.Released() > mark })
	stopStreaming()
	<-streamDone
	total := appended.Load()
	waitFor(t, "every healthy entry acknowledged", 30*time.Second, func() bool { return f.log.Released() == total })
	t.Logf("healthy frontend: %d entries, all acknowledged", total)
}

func gaugeOrCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
