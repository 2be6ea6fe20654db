package frontend

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/wal"
)

// raiseFileLimit lifts RLIMIT_NOFILE so that one process can hold both ends
// of n connections.
func raiseFileLimit(t testing.TB, n uint64) {
	t.Helper()
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	if r.Cur >= n {
		return
	}
	r.Cur = n
	if r.Max < n {
		r.Max = n
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Skipf("cannot raise RLIMIT_NOFILE to %d: %v", n, err)
	}
}

// TestManyConnections holds 5,000 device connections open at once; every one
// sends and is acknowledged.
func TestManyConnections(t *testing.T) {
	const conns = 5000
	raiseFileLimit(t, 2*conns+1000)
	// Thousands of connections on a loaded machine: a handshake, a pong or
	// a write can wait for the CPU longer than the defaults allow, and a
	// connection closed for it is dialled again and resends what it had in
	// flight, which counts acks twice. The timeouts are beyond what the
	// test waits, so that none ends a connection; the test checks that
	// none ended.
	const patient = 10 * time.Minute
	ts := startServer(t, Options{DrainWindow: time.Second, PingInterval: patient, PongTimeout: patient,
		WriteTimeout: patient, HandshakeTimeout: patient}, wal.Options{})
	ctx := context.Background()
	clients := make([]*client.Client, conns)
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 64)
		errs = make(chan error, conns)
	)
	start := time.Now()
	for i := range clients {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := client.Dial(ctx, client.Options{URL: ts.url(), Token: hsToken(t, fmt.Sprintf("dev-%d", i), nil),
				DialTimeout: patient, WriteTimeout: patient})
			if err != nil {
				errs <- err
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dial: %v", err)
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	testkit.WaitFor(t, "all connections registered", 30*time.Second, func() bool {
		return testutil.ToFloat64(ts.srv.m.connections) == conns
	})
	t.Logf("%d connections up in %v", conns, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	sendErrs := make(chan error, conns)
	for i, c := range clients {
		wg.Go(func() {
			for k := range 2 {
				if err := c.SendWait(ctx, fmt.Appendf(nil, `{"id":%d,"n":%d}`, k, i)); err != nil {
					sendErrs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(sendErrs)
	for err := range sendErrs {
		t.Fatalf("send: %v", err)
	}
	t.Logf("%d messages acknowledged in %v", 2*conns, time.Since(start).Round(time.Millisecond))
	if got := testutil.ToFloat64(ts.srv.m.acked); got != 2*conns {
		t.Fatalf("acked %v, want %d", got, 2*conns)
	}
	if got := testutil.ToFloat64(ts.srv.m.connections); got != conns {
		t.Fatalf("connections %v while all were sending, want %d", got, conns)
	}
	if got := testutil.CollectAndCount(ts.srv.m.closes); got != 0 {
		t.Fatalf("%d close reasons counted while every connection was to stay open", got)
	}
}
