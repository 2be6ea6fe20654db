package lifecycle

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestRunOnceCloseOnce(t *testing.T) {
	var o Once
	if !o.Start() {
		t.Fatal("first Start refused")
	}
	if o.Start() {
		t.Fatal("second Start allowed")
	}
	calls := 0
	boom := errors.New("boom")
	release := func(ran bool) error {
		calls++
		if !ran {
			t.Error("release told Run never started")
		}
		return boom
	}
	if err := o.Close(release); err != boom {
		t.Fatalf("first Close: %v, want release's error", err)
	}
	if err := o.Close(release); err != nil || calls != 1 {
		t.Fatalf("second Close: err %v, release ran %d times", err, calls)
	}
}

func TestCloseBeforeRun(t *testing.T) {
	var o Once
	ranSeen := true
	o.Close(func(ran bool) error { ranSeen = ran; return nil })
	if ranSeen {
		t.Fatal("release told Run started")
	}
	if o.Start() {
		t.Fatal("Start allowed after Close")
	}
}

func TestRelease(t *testing.T) {
	for _, run := range []bool{false, true} {
		var o Once
		if run && !o.Start() {
			t.Fatal("Start refused")
		}
		always, unrun := 0, 0
		boom := errors.New("boom")
		release := func() error {
			err := o.Release(func() { always++ }, func() error { unrun++; return boom })
			return err
		}
		err := release()
		if run && (err != nil || unrun != 0) || !run && (err != boom || unrun != 1) {
			t.Errorf("run %v: first Release: err %v, unrun ran %d times", run, err, unrun)
		}
		if err := release(); err != nil || always != 1 || unrun > 1 {
			t.Errorf("run %v: second Release: err %v, always ran %d times, unrun %d", run, err, always, unrun)
		}
	}
}

func TestEvery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		var n atomic.Int32
		done := make(chan error)
		go func() { done <- Every(ctx, time.Second, func() { n.Add(1) }) }()
		time.Sleep(3500 * time.Millisecond)
		synctest.Wait()
		if got := n.Load(); got != 3 {
			t.Fatalf("ran %d times in 3.5 intervals, want 3", got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Every returned %v when its context ended, want nil", err)
		}
	})
}

func TestLogger(t *testing.T) {
	lg := slog.New(slog.NewTextHandler(io.Discard, nil))
	if Logger(lg) != lg {
		t.Fatal("Logger replaced a logger it was given")
	}
	if l := Logger(nil); l == nil || l.Enabled(context.Background(), slog.LevelError) {
		t.Fatal("Logger(nil) is not a logger that discards everything")
	}
}

// TestHandlers: End waits for the handlers running, and those called
// after it has begun are answered 503 without being run.
func TestHandlers(t *testing.T) {
	var hs Handlers
	entered, release := make(chan struct{}), make(chan struct{})
	var ran atomic.Int32
	srv := httptest.NewServer(hs.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ran.Add(1) == 1 {
			close(entered)
			<-release
		}
	})))
	defer srv.Close()
	go http.Get(srv.URL)
	<-entered
	ended := make(chan struct{})
	go func() { hs.End(); close(ended) }()
	select {
	case <-ended:
		t.Fatal("End returned with a handler running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-ended
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || ran.Load() != 1 {
		t.Fatalf("a request after End: %s, handler run %d times", resp.Status, ran.Load())
	}
}
