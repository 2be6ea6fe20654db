package hijack

import (
	"net"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// Waiting counts the bytes a reader has not read, in the idle reader's
// buffer and in the socket, and sees the peer close its side, reading
// nothing; it declines a connection that is not an idle-reading one.
func TestWaiting(t *testing.T) {
	client, server := tcpPair(t)
	ic, br, ok := Idle(server, nil)
	if !ok {
		t.Fatal("Idle declined a TCP connection")
	}
	if _, _, _, ok := Waiting(server); ok {
		t.Fatal("Waiting answered for a connection that is not an idle reader")
	}
	waiting := func(want int, wantClosed, wantBroken bool) {
		t.Helper()
		testkit.WaitFor(t, "the bytes waiting", 5*time.Second, func() bool {
			n, closed, broken, ok := Waiting(ic)
			return ok && n+br.Buffered() == want && closed == wantClosed && broken == wantBroken
		})
	}
	waiting(0, false, false)
	if _, err := client.Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	waiting(10, false, false)
	b := make([]byte, 4)
	if _, err := br.Read(b); err != nil || string(b) != "0123" {
		t.Fatalf("read %q, %v", b, err)
	}
	waiting(6, false, false) // in the reader's and the idle buffer
	client.(*net.TCPConn).CloseWrite()
	waiting(6, true, false) // a FIN: closed, not broken
	client.(*net.TCPConn).SetLinger(0)
	client.Close()
	waiting(6, true, true) // a reset
}
