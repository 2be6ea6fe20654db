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
