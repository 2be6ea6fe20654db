package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// events records what the parts of a process did, in order.
type events struct {
	mu  sync.Mutex
	got []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, s)
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.got)
}

// recorder is a part that records when its context ends and when it
// returns, and returns err.
func recorder(ev *events, name string, st stage, err error) part {
	return part{name: name, stage: st, run: func(ctx context.Context) error {
		<-ctx.Done()
		ev.add(name + " stopping")
		return err
	}}
}

// At shutdown the parts stop stage by stage, whatever order they were
// added in: a part is settled before its context ends, after every part of
// an earlier stage has returned; what was registered with onClose is
// released last, in reverse order.
func TestProcessStopsInStageOrder(t *testing.T) {
	ev := &events{}
	p := newProcess(slog.New(slog.DiscardHandler))
	p.onClose("first opened", func() error { ev.add("close first opened"); return nil })
	p.add(recorder(ev, "middletier", stageRouter, nil))
	p.add(recorder(ev, "frontend", stageDevices, nil))
	p.onClose("last opened", func() error { ev.add("close last opened"); return nil })
	up := recorder(ev, "uplink", stageUplink, nil)
	up.settle = func(ended <-chan struct{}) {
		select {
		case <-ended:
			t.Error("the uplink's context ended before it was settled")
		default:
		}
		ev.add("uplink settled")
	}
	p.add(up)
	p.add(recorder(ev, "query api", stageHTTP, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{"frontend stopping", "uplink settled", "uplink stopping", "middletier stopping", "query api stopping",
		"close last opened", "close first opened"}
	if got := ev.list(); !slices.Equal(got, want) {
		t.Errorf("shutdown went\n%q\nwant\n%q", got, want)
	}
	if !p.stopping.Load() {
		t.Error("the process does not report itself stopping")
	}
}

// A part that returns by itself (a failure) shuts the process down in
// order; its error comes back named, with the other parts' and the
// releases'.
func TestProcessStopsWhenAPartFails(t *testing.T) {
	ev := &events{}
	p := newProcess(slog.New(slog.DiscardHandler))
	p.add(recorder(ev, "frontend", stageDevices, nil))
	failed := errors.New("wal failed")
	p.add(part{name: "middletier", stage: stageRouter, run: func(context.Context) error { return failed }})
	p.add(recorder(ev, "registry", stageSupport, errors.New("registry odd")))
	p.onClose("wal", func() error { return errors.New("sync failed") })
	done := make(chan error, 1)
	go func() { done <- p.run(context.Background()) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a failed part did not stop the process")
	}
	if !errors.Is(err, failed) {
		t.Fatalf("run returned %v, want the middletier's failure", err)
	}
	for _, want := range []string{"middletier: wal failed", "registry: registry odd", "close wal: sync failed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("run returned %q, want it to hold %q", err, want)
		}
	}
	if got := ev.list(); !slices.Equal(got, []string{"frontend stopping", "registry stopping"}) {
		t.Errorf("shutdown went %q", got)
	}
}

// A connection to the query API (or the middletier's metrics port) that
// has made its request and stays idle is closed after httpIdleTimeout.
// These servers had no IdleTimeout, so net/http kept an idle keep-alive
// connection open for as long as its client liked: anyone who reaches the
// port, no token needed, could hold any number of them, each a goroutine
// and a file descriptor of the storage writer's process, whose TSDB needs
// descriptors too.
func TestServeHTTPClosesIdleConnections(t *testing.T) {
	defer func(d time.Duration) { httpIdleTimeout = d }(httpIdleTimeout)
	httpIdleTimeout = 200 * time.Millisecond
	p := newProcess(slog.New(slog.DiscardHandler))
	ln := testkit.Listen(t)
	p.serveHTTP("query api", ln, http.NotFoundHandler(), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	defer func() { cancel(); <-done }()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("an idle connection after its request: %v, want it closed by the server", err)
	}
}

// The part serveHTTP adds returns only once every handler has returned: a
// request still running past the grace (a long query of the embedded
// store's API) has its context ended by the server's Close, and the part
// waits for its handler, so that no handler reads what the process
// releases next (the TSDB, closed by onClose: a query reading its head's
// memory-mapped chunks as they are unmapped faults). The part used to
// return at Close, its handler still running.
func TestServeHTTPWaitsForHandlers(t *testing.T) {
	p := newProcess(slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, ended, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	p.serveHTTP("query api", ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done() // the server's Close, past the grace
		close(ended)
		<-release
		finished.Store(true)
	}), 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	asked := make(chan struct{})
	go func() {
		defer close(asked)
		if resp, err := http.Get("http://" + ln.Addr().String() + "/api/v1/query"); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	cancel()
	<-ended
	returned := false
	testkit.WaitFor(t, "the part to return, or to wait for its handler", 10*time.Second, func() bool {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
			returned = true
			return true
		default:
		}
		return testkit.Blocked("ingest.(*process).serveHTTP.", "sync.WaitGroup.Wait")
	})
	if returned {
		close(release)
		<-asked
		t.Fatal("the process stopped with a handler of its HTTP server still running")
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	if !finished.Load() {
		t.Error("the process stopped before its handler had returned")
	}
	<-asked
}

// waitFor returns as soon as its condition holds, or the part it waits for
// has ended, or its timeout has passed, reporting whether the condition
// held.
func TestWaitFor(t *testing.T) {
	never := func() bool { return false }
	start := time.Now()
	if waitFor(never, 50*time.Millisecond, nil) {
		t.Error("a condition that never holds held")
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 5*time.Second {
		t.Errorf("waited %v for a timeout of 50ms", d)
	}
	ended := make(chan struct{})
	close(ended)
	start = time.Now()
	if waitFor(never, time.Hour, ended) || time.Since(start) > 5*time.Second {
		t.Error("waitFor did not return when the part ended")
	}
	var n int
	if !waitFor(func() bool { n++; return n > 3 }, time.Hour, nil) {
		t.Error("a condition that came to hold did not")
	}
}
