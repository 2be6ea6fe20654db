//go:build unix

package hijack

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPairTCP is tcpPair's two ends as TCP sockets: the server's first.
func tcpPairTCP(t *testing.T) (srv, cli *net.TCPConn) {
	c, s := tcpPair(t)
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

// TestBoundedTimesOut: a peer that reads nothing fills the socket, and the
// write that has to wait ends with the deadline it set.
func TestBoundedTimesOut(t *testing.T) {
	srv, cli := tcpPairTCP(t)
	cli.SetReadBuffer(4096)
	srv.SetWriteBuffer(4096)
	bc, ok := Bounded(srv, 200*time.Millisecond)
	if !ok {
		t.Fatal("Bounded declined a TCP connection")
	}
	chunk := make([]byte, 64<<10)
	var err error
	for i := 0; i < 1024 && err == nil; i++ { // up to 64 MiB: far more than the buffers hold
		_, err = bc.Write(chunk)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("writing to a peer that reads nothing: %v, want a deadline exceeded", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Errorf("error %v: want a *net.OpError of op write", err)
	}
}

// TestBoundedClearsDeadline: a write that had to wait clears the deadline
// it set, so a write after the deadline would have passed still succeeds;
// every byte arrives in order.
func TestBoundedClearsDeadline(t *testing.T) {
	srv, cli := tcpPairTCP(t)
	srv.SetWriteBuffer(4096) // the peer reads as fast as it can, the socket takes a few KiB at a time
	const timeout = time.Second
	bc, ok := Bounded(srv, timeout)
	if !ok {
		t.Fatal("Bounded declined a TCP connection")
	}
	got := make(chan []byte, 1)
	go func() {
		// Late, so that the socket fills and the write has to wait:
		// over loopback a reader from the start can keep up with it.
		time.Sleep(50 * time.Millisecond)
		b, _ := io.ReadAll(cli)
		got <- b
	}()
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB: more than the socket takes at once
	if n, err := bc.Write(want); err != nil || n != len(want) {
		t.Fatalf("write of %d bytes: %d, %v", len(want), n, err)
	}
	if w := bc.(*bounded).waits; w != 1 {
		t.Fatalf("%d writes waited, want 1: the test does not exercise the deadline", w)
	}
	time.Sleep(timeout + 200*time.Millisecond) // past the deadline the wait set
	tail := []byte("after the deadline")
	if _, err := bc.Write(tail); err != nil {
		t.Fatalf("write after the wait's deadline would have passed: %v", err)
	}
	srv.CloseWrite()
	if b := <-got; !bytes.Equal(b, append(want, tail...)) {
		t.Fatalf("the peer read %d bytes, not the %d written in order", len(b), len(want)+len(tail))
	}
}

// TestBoundedDeclines: a connection that is not TCP, or no timeout, is
// left to the caller.
func TestBoundedDeclines(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := Bounded(a, time.Second); ok {
		t.Error("Bounded took a net.Pipe")
	}
	srv, _ := tcpPairTCP(t)
	if _, ok := Bounded(srv, 0); ok {
		t.Error("Bounded took a zero timeout")
	}
}

// TestBoundedClosed: a write waiting on a full socket ends when another
// goroutine closes the connection, and a write after the close fails, as a
// TCP connection's do (net.ErrClosed, a *net.OpError of op write).
func TestBoundedClosed(t *testing.T) {
	srv, cli := tcpPairTCP(t)
	cli.SetReadBuffer(4096)
	srv.SetWriteBuffer(4096)
	bc, ok := Bounded(srv, time.Minute)
	if !ok {
		t.Fatal("Bounded declined a TCP connection")
	}
	ended := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		var err error
		for i := 0; i < 1024 && err == nil; i++ { // the peer reads nothing: a write waits
			_, err = bc.Write(chunk)
		}
		ended <- err
	}()
	time.Sleep(100 * time.Millisecond)
	bc.Close()
	select {
	case err := <-ended:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("the waiting write ended with %v, want net.ErrClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a write waiting on a full socket did not end when the connection closed")
	}
	_, err := bc.Write([]byte("after the close"))
	var oe *net.OpError
	if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != "write" {
		t.Errorf("a write after the close: %v, want net.ErrClosed in a *net.OpError of op write", err)
	}
}
