// Package testkit is what the tests of the tiers share: waiting for a
// condition with a deadline, running a component until the test ends, free
// ports, summing a metric or reading its series, the checks of the
// lifecycle contract (Close and Run unregister, Close without Run), the
// zmq4 goroutines a leak check ignores, and a real middletier in the test
// process, on loopback over a real WAL, with peers that talk to its
// sockets as a frontend or a consumer does; reading a stopped frontend's
// WAL; keys and tokens, and a WebSocket dial with a token; the external
// stores the storage sinks are tested against (Prometheus, InfluxDB,
// VictoriaMetrics from Debian's packages, on loopback), and points to
// write to them; a client of the Prometheus HTTP query API, as the
// embedded store serves it.
package testkit

import (
	"context"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/zsock"
)

// WaitFor polls cond until it holds, and fails the test if it does not
// within the given time. It returns how long it waited. It polls at once,
// then after 1ms, doubling the pause up to 20ms: a cheap condition is seen
// soon after it holds, and one that costs a request (a scrape of /metrics)
// is not asked hundreds of times a second. It is the one way the tests
// wait for something; a test that only waits on time uses testing/synctest.
func WaitFor(t testing.TB, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	pause := time.Millisecond
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(pause) // the polling interval, not a wait for the condition
		pause = min(2*pause, 20*time.Millisecond)
	}
	return time.Since(start)
}

// Blocked reports whether some goroutine is blocked in fn, as
// runtime.Stack spells it ("client.(*Client).Flush("), waiting as state
// says ("sync.Cond.Wait", "chan receive", "select"): a test that must act
// only once another goroutine waits waits for this, not for a time.
func Blocked(fn, state string) bool {
	buf := make([]byte, 1<<20)
	for g := range strings.SplitSeq(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		header, body, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "["+state) && strings.Contains(body, fn) {
			return true
		}
	}
	return false
}

// Go runs run in a goroutine until stop is called or the test ends, when
// run's context is cancelled; stop waits for run to return and returns
// its error. A non-nil error fails the test, named by what, unless the
// test called stop and looked at it itself.
func Go(t testing.TB, what string, run func(ctx context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
	return stop
}

// zmq4 v0.17.0 leaks a goroutine when a socket is closed at the wrong
// moment, and nothing a caller does can end it (zsock/doc.go, Known
// limits). Leak checks ignore these by name, and only these.
var (
	// PubWriterLeak: pubMWriter.Close signals its writer goroutine once; if
	// the writer is sending at that moment the signal is lost and it waits
	// on its condition variable for good (pub.go, run). One goroutine per
	// closed PUB socket.
	PubWriterLeak = goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run")
	// RouterReaderLeak: a ROUTER's reader goroutine for one connection
	// sends each message it reads into the socket's queue of ten with no
	// way out (router.go, listen); closed while that queue is full and the
	// peer still sending, it waits there for good.
	RouterReaderLeak = goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*routerQReader).listen")
)

// Main runs a package's tests, stops the external store servers they
// started, and then checks that no goroutine is left, but for those of
// ignore (PubWriterLeak, RouterReaderLeak: what the package's sockets can
// strand). It is the TestMain of a package that starts stores or zmq4
// sockets. Frames released to the sockets' reads are poisoned
// (zsock.PoisonReleasedFrames): one used after its release reads as
// garbage at once.
func Main(m *testing.M, ignore ...goleak.Option) {
	zsock.PoisonReleasedFrames(true)
	goleak.VerifyTestMain(stopStoresAfter{m}, ignore...)
}

// stopStoresAfter runs the tests, then stops the external store servers
// they started, before goleak looks.
type stopStoresAfter struct{ m *testing.M }

func (s stopStoresAfter) Run() int {
	code := s.m.Run()
	StopStores()
	return code
}

// Tool returns the path of the program name, which the Debian package pkg
// installs (make deps does), and fails the test if it is not installed.
func Tool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install Debian's %s package (make deps)", name, pkg)
	}
	return path
}

// Listen listens on a free port of 127.0.0.1, for a server under test to
// serve on: its address is known before it serves.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}
