package zsock_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ingest-io/ingest/zsock"
)

// TestRouterNoPeerNoStall: a healthy ROUTER with no peer connected (as it
// is after every recycle, until its peers have dialled again) is handed
// replies for identities it does not know. They are dropped; none counts
// as a stall or recycles the socket. Before, zmq4 held each send until a
// first peer came, the watchdog fired first, and the socket was recycled
// once per reply.
func TestRouterNoPeerNoStall(t *testing.T) {
	var stalls atomic.Int32
	r := runRouter(t, zsock.RouterOptions{SendStall: 300 * time.Millisecond, OnStall: func() { stalls.Add(1) }}, echo)
	for range 3 {
		r.Send([]byte("gone#0123456789ab"), []byte("stale reply"))
	}
	time.Sleep(2 * time.Second)
	if n := stalls.Load(); n != 0 {
		t.Fatalf("a router with no peer and nothing stuck recycled itself %d times (OnStall)", n)
	}
}

// TestRouterOneStallOneRecycle: one real stall recycles the ROUTER once.
// The replies still queued for the peers of the old socket do not recycle
// the new one again and again while no peer has reconnected (before: ten
// recycles in 3 s with SendStall 300 ms).
func TestRouterOneStallOneRecycle(t *testing.T) {
	_, stalls, stuck, _ := stalledRouter(t)
	stuck.Close() // the stalled peer is gone for good
	time.Sleep(3 * time.Second)
	if n := stalls.Load(); n != 1 {
		t.Fatalf("one stalled peer, then no peer at all: the router recycled itself %d times in 3s (SendStall 300ms)", n)
	}
}
