package middletier_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/wal"
)

// New binds every socket, so that the addresses are known before Run;
// Close releases them for a Router that never ran, and may be called
// again; a closed Router does not run.
func TestNewBindsCloseReleases(t *testing.T) {
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{})
	loop := "tcp://127.0.0.1:0"
	opts := middletier.Options{ID: "mt", StateDir: t.TempDir(), IngestAddr: loop, ConsumerAddr: loop, StreamAddr: loop, FeedAddr: loop}
	reg := prometheus.NewRegistry()
	r, err := middletier.New(opts, l, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := r.Addrs()
	for _, ep := range []string{a.Ingest, a.Consumer, a.Stream, a.Feed} {
		if !strings.HasPrefix(ep, "tcp://127.0.0.1:") || strings.HasSuffix(ep, ":0") {
			t.Fatalf("addresses %+v: want every port resolved", a)
		}
		// Bound: nobody else can listen there.
		if ln, err := net.Listen("tcp", strings.TrimPrefix(ep, "tcp://")); err == nil {
			ln.Close()
			t.Fatalf("%s is not bound after New", ep)
		}
	}
	for range 2 {
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Run(context.Background()); err == nil {
		t.Fatal("a closed Router ran")
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("after Close %d metric families remain", len(mfs))
	}
	// The same addresses bind again: Close released them.
	opts.IngestAddr, opts.ConsumerAddr, opts.StreamAddr, opts.FeedAddr = a.Ingest, a.Consumer, a.Stream, a.Feed
	r2, err := middletier.New(opts, l, reg, nil)
	if err != nil {
		t.Fatalf("New on the addresses Close released: %v", err)
	}
	r2.Close()
}

// An address in use fails New with a ListenError that names the socket,
// and leaves nothing bound or registered.
func TestNewAddressInUse(t *testing.T) {
	l := testkit.OpenWAL(t, t.TempDir(), wal.Options{})
	busy := testkit.Listen(t)
	defer busy.Close()
	loop := "tcp://127.0.0.1:0"
	reg := prometheus.NewRegistry()
	_, err := middletier.New(middletier.Options{ID: "mt", StateDir: t.TempDir(), IngestAddr: loop, ConsumerAddr: loop,
		StreamAddr: "tcp://" + busy.Addr().String()}, l, reg, nil)
	var le *middletier.ListenError
	if !errors.As(err, &le) || le.Socket != "stream" || le.Addr != "tcp://"+busy.Addr().String() || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("New on a port in use: %v, want a ListenError for the stream socket wrapping EADDRINUSE", err)
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("after a failed New %d metric families remain", len(mfs))
	}
}
