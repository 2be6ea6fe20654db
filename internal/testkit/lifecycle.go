package testkit

import (
	"context"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// CheckCloseWithoutRun checks what Close must do for a server that never
// ran: it may be called twice without error, it closes every listener New
// took (listeners, by name), it unregisters every metric from reg, and
// the server refuses to run after it.
func CheckCloseWithoutRun(t testing.TB, close func() error, run func(context.Context) error, reg prometheus.Gatherer, listeners map[string]net.Listener) {
	t.Helper()
	for range 2 {
		if err := close(); err != nil {
			t.Fatal(err)
		}
	}
	for name, ln := range listeners {
		if _, err := ln.Accept(); err == nil {
			t.Fatalf("Close left the %s open", name)
		}
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("after Close %d metric families remain", len(mfs))
	}
	if err := run(context.Background()); err == nil {
		t.Fatal("a closed Server ran")
	}
}

// CheckCloseUnregisters checks what Close must do for a component that
// registers metrics on reg and never ran (newC makes one, named what in
// failures): while it lives a second cannot register the same metrics;
// Close, which may be called twice, unregisters them; and a new one can
// then register, which it returns.
func CheckCloseUnregisters[C interface{ Close() error }](t testing.TB, reg prometheus.Gatherer, what string, newC func() (C, error)) C {
	t.Helper()
	c, err := newC()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newC(); err == nil {
		t.Fatalf("a second %s registered the same metrics", what)
	}
	for range 2 {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("after Close %d metric families remain", len(mfs))
	}
	c2, err := newC()
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	return c2
}

// CheckRunUnregisters runs run with its context ended: it must return nil,
// having unregistered every metric from reg.
func CheckRunUnregisters(t testing.TB, reg prometheus.Gatherer, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := run(ctx); err != nil {
		t.Fatal(err)
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("after Run %d metric families remain", len(mfs))
	}
}
