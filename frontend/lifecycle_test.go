package frontend

import (
	"context"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

// Close releases what New took from a Server that never ran: the listeners
// and the metrics' registrations. It may be called again, and a closed
// Server does not run. After Run, Close leaves the listener to Run, which
// closed it, and a second Run is refused.
func TestCloseWithoutRun(t *testing.T) {
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{Hop: "frontend"})
	reg := prometheus.NewRegistry()
	ln := testkit.Listen(t)
	mln := testkit.Listen(t)
	s, err := New(Options{Listener: ln, MQTTListener: mln, ID: "fe", InsecureNoAuth: true}, l, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	testkit.CheckCloseWithoutRun(t, s.Close, s.Run, reg, map[string]net.Listener{"listener": ln, "MQTT listener": mln})

	ln = testkit.Listen(t)
	s, err = New(Options{Listener: ln, ID: "fe", InsecureNoAuth: true}, l, reg, nil)
	if err != nil {
		t.Fatalf("New after Close on the same registry: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("Run left the listener open")
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("a Server ran twice")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
