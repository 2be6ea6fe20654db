//go:build unix

package hijack

import (
	"io"
	"net"
	"syscall"
	"time"
)

// bounded is a TCP connection whose writes are bounded by a timeout with
// no timer for a write the socket takes at once. Bounding each write with
// a socket deadline, set before it and cleared after, adds and removes a
// runtime timer per write: at 10,000 devices, a few percent of the
// engine's CPU went to the acks' deadlines and the timer heap they churn
// (docs/benchmarks.md). Nearly every ack fits in the socket's send buffer,
// so a write first tries the socket once without waiting, and only a write
// the socket could not take whole waits for the rest, under a deadline.
type bounded struct {
	net.Conn
	rc      syscall.RawConn
	timeout time.Duration
	writef  func(fd uintptr) bool // writeFd, made once: a write allocates nothing
	p       []byte                // what writeFd writes
	n       int                   // how much of p writeFd wrote
	err     error                 // writeFd's error, EAGAIN when the socket is full
	waits   int                   // writes that had to wait (for tests)
}

// Bounded returns nc as a connection whose every Write takes at most
// timeout to complete (a deadline it sets only if the write has to wait,
// and clears after), and true; false where nc is not a TCP socket, whose
// writes the caller bounds itself. Writes are from one goroutine at a
// time, as a bufio.Writer's are. The connection owns its write deadline:
// callers set none (one they set would be replaced and cleared by the
// next write that waits).
func Bounded(nc net.Conn, timeout time.Duration) (net.Conn, bool) {
	tc, isTCP := nc.(*net.TCPConn)
	if !isTCP || timeout <= 0 {
		return nil, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, false
	}
	b := &bounded{Conn: nc, rc: rc, timeout: timeout}
	b.writef = b.writeFd
	return b, true
}

func (b *bounded) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b.p, b.n, b.err = p, 0, nil
	err := b.rc.Write(b.writef)
	n, werr := b.n, b.err
	b.p = nil
	switch {
	case err != nil:
		return n, connError(err, "write")
	case werr == syscall.EAGAIN:
		// The socket is full: the rest waits, within the timeout.
		b.waits++
		b.Conn.SetWriteDeadline(time.Now().Add(b.timeout))
		m, err := b.Conn.Write(p[n:])
		b.Conn.SetWriteDeadline(time.Time{})
		return n + m, err
	case werr != nil:
		return n, syscallError(b, "write", werr)
	}
	return n, nil
}

// writeFd writes b.p to the socket as far as it takes it without waiting,
// and never asks RawConn.Write to wait.
func (b *bounded) writeFd(fd uintptr) bool {
	for b.n < len(b.p) {
		n, err := syscall.Write(int(fd), b.p[b.n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			b.err = err
			return true
		}
		if n <= 0 || n > len(b.p)-b.n {
			// A socket that takes nothing without an error, or claims
			// more than it was given: stop, as the standard library's
			// writes do, rather than spin or overrun.
			b.err = io.ErrUnexpectedEOF
			return true
		}
		b.n += n
	}
	return true
}
