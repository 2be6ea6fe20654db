//go:build unix

package hijack

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/testkit"
)

// tcpPair returns the two ends of a TCP connection on loopback: the one
// dialed and the one accepted.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln := testkit.Listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestIdleReadsAndLetsGo: what arrives is read in order through the
// 16-byte reader, whatever the sizes of the writes and the reads; the
// connection holds a pooled buffer only while it has unread bytes.
func TestIdleReadsAndLetsGo(t *testing.T) {
	client, server := tcpPair(t)
	nc, br, ok := Idle(server, nil)
	if !ok {
		t.Fatal("a TCP connection was not taken")
	}
	ic := nc.(*idleConn)
	msg := strings.Repeat("0123456789", 1000) // 10,000 bytes: more than a pooled buffer
	if _, err := io.WriteString(client, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, len(msg))
	b, err := br.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, b)
	for _, n := range []int{1, 15, 16, 17, 300, 4096, 5000} {
		p := make([]byte, min(n, len(msg)-len(got)))
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
		got = append(got, p...)
	}
	if string(got) != msg[:len(got)] {
		t.Fatalf("read %d bytes that differ from those sent", len(got))
	}
	rest := make([]byte, len(msg)-len(got))
	if _, err := io.ReadFull(br, rest); err != nil {
		t.Fatal(err)
	}
	if string(append(got, rest...)) != msg {
		t.Fatal("the bytes read differ from those sent")
	}
	if ic.buf != nil {
		t.Error("all that arrived has been read, and the connection still holds a buffer")
	}

	// Part of what arrived read: the buffer is held until the rest is.
	if _, err := io.WriteString(client, "abcdef"); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 2)
	if _, err := io.ReadFull(ic, p); err != nil || string(p) != "ab" {
		t.Fatalf("read %q, %v", p, err)
	}
	for ic.r == ic.w && ic.buf == nil { // the rest still on its way
		if _, err := io.ReadFull(ic, p[:1]); err != nil {
			t.Fatal(err)
		}
	}
	if ic.buf == nil {
		t.Fatal("unread bytes and no buffer")
	}
	if _, err := io.ReadAll(io.LimitReader(ic, int64(ic.w-ic.r))); err != nil {
		t.Fatal(err)
	}
	if ic.buf != nil {
		t.Error("the buffer was not let go once read")
	}
}

// TestIdlePendingFirst: the bytes net/http's reader held are read before
// the socket's.
func TestIdlePendingFirst(t *testing.T) {
	client, server := tcpPair(t)
	held := bufio.NewReader(strings.NewReader("held|"))
	held.Peek(5)
	_, br, ok := Idle(server, held)
	if !ok {
		t.Fatal("a TCP connection was not taken")
	}
	if _, err := io.WriteString(client, "sent"); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, len("held|sent"))
	if _, err := io.ReadFull(br, p); err != nil || string(p) != "held|sent" {
		t.Fatalf("read %q, %v", p, err)
	}
}

// TestIdleErrors: a read ends as a net.Conn's does: at the deadline with a
// timeout, with net.ErrClosed when the connection is closed under it, and
// with io.EOF when the peer has closed.
func TestIdleErrors(t *testing.T) {
	client, server := tcpPair(t)
	nc, _, _ := Idle(server, nil)
	p := make([]byte, 8)

	nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := nc.Read(p)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || !strings.HasPrefix(err.Error(), "read tcp ") {
		t.Errorf("read past its deadline: %v, want a timeout, reading as a TCP connection's", err)
	}
	nc.SetReadDeadline(time.Time{})

	io.WriteString(client, "x")
	client.Close()
	if n, err := nc.Read(p); n != 1 || err != nil {
		t.Fatalf("read %d, %v; want the byte sent before the close", n, err)
	}
	if _, err := nc.Read(p); err != io.EOF {
		t.Errorf("read after the peer closed: %v, want io.EOF", err)
	}

	_, server2 := tcpPair(t)
	nc2, _, _ := Idle(server2, nil)
	done := make(chan error, 1)
	go func() { _, err := nc2.Read(p[:1]); done <- err }()
	time.Sleep(20 * time.Millisecond) // most likely waiting by now; if not, the read starts on a closed connection
	nc2.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("read of a connection closed under it: %v, want net.ErrClosed", err)
	}
}

// TestIdleOnlyTCP: a connection that is not a TCP socket is left to a
// reader with a buffer of its own.
func TestIdleOnlyTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, ok := Idle(a, nil); ok {
		t.Fatal("took a connection that is not TCP")
	}
}

// TestIdleReadAllocatesNothing: reading what has arrived allocates
// nothing, the wait and the pooled buffer included.
func TestIdleReadAllocatesNothing(t *testing.T) {
	client, server := tcpPair(t)
	_, br, _ := Idle(server, nil)
	msg := []byte("0123456789abcdef0123456789")
	p := make([]byte, len(msg))
	allocs := testing.AllocsPerRun(200, func() {
		client.Write(msg)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per message read, want 0", allocs)
	}
}

// TestIdleLargeReadDirect: a read as large as a pooled buffer goes
// straight into the caller's slice, as a bufio.Reader's does: 64 KiB that
// have arrived take one system call or a few, not one per 4 KiB, and no
// pooled buffer is held after.
func TestIdleLargeReadDirect(t *testing.T) {
	client, server := tcpPair(t)
	nc, _, _ := Idle(server, nil)
	msg := make([]byte, 64<<10)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	if _, err := client.Write(msg); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r0 := threadReads(t)
	p := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, p); err != nil {
		t.Fatal(err)
	}
	r1 := threadReads(t)
	if string(p) != string(msg) {
		t.Fatal("the bytes read differ from those sent")
	}
	if nc.(*idleConn).buf != nil {
		t.Error("a pooled buffer is held after a direct read")
	}
	// Two of the calls are the reading of /proc/thread-self/io itself.
	if got := r1 - r0; got == 0 {
		t.Skip("the kernel counts no system calls per thread (CONFIG_TASK_XACCT)")
	} else if got > 6 {
		t.Errorf("64 KiB read in %d read calls, want a few (16 or more through 4-KiB buffers)", got)
	}
}

// threadReads returns the read system calls the calling thread has made
// (/proc/thread-self/io); the caller has locked its goroutine to it.
func threadReads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		t.Skipf("no per-thread I/O accounting: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Skip("no syscr in /proc/thread-self/io")
	return 0
}
