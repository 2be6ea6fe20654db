// Package commandtest runs a real command home for the tests of the
// packages that talk to one: the home's own and the frontends' downlink.
package commandtest

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/wal"
)

// Home is a real command.Home on 127.0.0.1 over a real WAL in a directory
// of the test's. Stop and Start again keep its directory and address, as
// a restarted middletier does.
type Home struct {
	Dir, Addr string
	Home      *command.Home
	Log       *wal.Log
	Reg       *prometheus.Registry // the running home's metrics

	opts   command.Options
	wopts  wal.Options
	cancel context.CancelFunc
	errc   chan error
}

// Start runs a home with options o (on a free loopback port unless o.Addr
// says where) over a WAL with options wo (its hop "command"), stopped when
// the test ends.
func Start(t testing.TB, o command.Options, wo wal.Options) *Home {
	t.Helper()
	if o.Addr == "" {
		o.Addr = "tcp://127.0.0.1:0"
	}
	wo.Hop = "command"
	h := &Home{Dir: t.TempDir(), opts: o, wopts: wo}
	h.Start(t)
	t.Cleanup(func() { h.Stop(t) })
	return h
}

// Start opens the WAL and runs the home again, at the address it had.
func (h *Home) Start(t testing.TB) {
	t.Helper()
	l, err := wal.Open(h.Dir, h.wopts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := h.opts
	if h.Addr != "" {
		o.Addr = h.Addr
	}
	h.Reg = prometheus.NewRegistry()
	home, err := command.New(o, l, h.Reg, nil)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	h.Addr, h.Home, h.Log = home.Addr(), home, l
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.errc = cancel, make(chan error, 1)
	go func() { h.errc <- home.Run(ctx) }()
}

// Stop stops the home and closes its WAL; an error from its Run is an
// error of the test. Stopping a stopped home does nothing.
func (h *Home) Stop(t testing.TB) {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.errc; err != nil {
		t.Errorf("home: %v", err)
	}
	h.Home.Close()
	h.Log.Close()
	h.cancel = nil
}
