package uplink_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/tcpproxy"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/middletier"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// stoppedAfterFirst listens on 127.0.0.1 and forwards its first
// connection to target; later ones it takes and never answers, as the
// kernel of a stopped process does from its listen backlog. It returns its
// endpoint.
func stoppedAfterFirst(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		held []net.Conn
		wg   sync.WaitGroup
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for first := true; ; first = false {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
			if !first {
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			held = append(held, s)
			mu.Unlock()
			wg.Go(func() { io.Copy(s, c); s.Close() })
			wg.Go(func() { io.Copy(c, s); c.Close() })
		}
	})
	return "tcp://" + ln.Addr().String()
}

// TestCurrentLostDuringAReturnsProbation: the Link is on its second
// choice, which takes batches and acknowledges none (a stopped process),
// when its first choice comes back and a look connects a standby socket to
// it. The second choice's socket is closed for want of acknowledgements
// while the standby is on probation, and dialing it again hangs until the
// greeting's timeout. The Link must go on to the standby (its current
// connection is gone, as when it ends) and have everything acknowledged
// there. Before, probation logged the current connection's endpoint with
// no current connection, and the frontend's process panicked.
func TestCurrentLostDuringAReturnsProbation(t *testing.T) {
	a := startTier(t, t.TempDir(), middletier.Options{ID: "mt-a"}, wal.Options{})
	pa := tcpproxy.Start(t, strings.TrimPrefix(a.Addrs.Ingest, "tcp://"))
	pa.Cut() // the first choice is down when the Link starts
	silent := testkit.StartRouter(t, func([]byte, wire.Message) {})
	b := stoppedAfterFirst(t, strings.TrimPrefix(silent.Addr(), "tcp://"))
	eps := []string{pa.Endpoint(), b}
	id := rankingFirst(pa.Endpoint(), eps)
	f := startLink(t, uplink.Options{ID: id, Middletiers: eps, AckTimeout: 200 * time.Millisecond,
		Failover: time.Hour, Return: 300 * time.Millisecond})
	f.appendEntries(t, 10, 0)
	time.Sleep(100 * time.Millisecond) // on the second choice by now
	pa.Restore()
	testkit.WaitFor(t, "every entry acknowledged by the first choice", 15*time.Second, func() bool { return f.log.Released() == 10 })
	f.stop()
	a.Stop()
	exactlyOnce(t, records(t, a), 10)
}
