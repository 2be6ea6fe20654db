//go:build unix

package hijack

import (
	"bufio"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// IdleBufBytes is the size of the buffers an idle-reading connection
// (Idle) reads the socket into.
const IdleBufBytes = 4096

// idleBufs holds the buffers of idle-reading connections while no
// connection is reading into them.
var idleBufs = sync.Pool{New: func() any { b := make([]byte, IdleBufBytes); return &b }}

// idleConn is a TCP connection whose reads hold no buffer while nothing
// has arrived. A read waits for the socket to be readable with no buffer,
// reads what has arrived into a buffer from a pool, and gives the buffer
// back once it has all been read. A device that sends a message a second
// is idle nearly all the time: its connection's read buffer is one of the
// pool's only while its message is read, instead of 4 KiB held for the
// life of the connection. Reads are from one goroutine at a time, as a
// bufio.Reader's are.
type idleConn struct {
	net.Conn
	rc      syscall.RawConn
	pending []byte  // what net/http had read behind the handshake, read first
	buf     *[]byte // from idleBufs while it holds unread bytes, else nil
	r, w    int     // the unread bytes of buf

	readf   func(fd uintptr) bool // readFd, made once: a read allocates nothing
	directf func(fd uintptr) bool // readDirect, likewise
	direct  []byte                // readDirect's target
	n       int                   // the outcome of readFd or readDirect
	rerr    error
}

// Idle returns nc as a connection that reads as idleConn does, and a
// reader of it. buffered, if not nil, is the reader net/http hijacked nc
// with: the bytes it holds are read first. The reader's own buffer is
// bufio's smallest, 16 bytes; a read of more is served from the pooled
// buffer directly. ok is false where nc is not a TCP socket (a TLS
// connection, say); the caller then keeps a buffer of its own (Reader).
func Idle(nc net.Conn, buffered *bufio.Reader) (c net.Conn, br *bufio.Reader, ok bool) {
	tc, isTCP := nc.(*net.TCPConn)
	if !isTCP {
		return nil, nil, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, nil, false
	}
	ic := &idleConn{Conn: nc, rc: rc}
	ic.readf, ic.directf = ic.readFd, ic.readDirect
	if n := bufferedLen(buffered); n > 0 {
		b, _ := buffered.Peek(n)
		ic.pending = append([]byte(nil), b...)
	}
	return ic, bufio.NewReaderSize(ic, 16), true
}

func (c *idleConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		return n, nil
	}
	if c.buf == nil && len(p) >= IdleBufBytes {
		// A read as large as a pooled buffer goes straight into p, as a
		// bufio.Reader's does: a large frame takes few system calls.
		c.direct = p
		err := c.wait(c.directf)
		c.direct = nil
		return c.n, err
	}
	if c.buf == nil {
		if err := c.wait(c.readf); err != nil {
			return 0, err
		}
	}
	n := copy(p, (*c.buf)[c.r:c.w])
	c.r += n
	if c.r == c.w {
		idleBufs.Put(c.buf)
		c.buf = nil
	}
	return n, nil
}

// wait waits until the socket is readable, holding no buffer, then reads
// what has arrived with read (readFd or readDirect). Errors are those of a
// net.Conn's Read: io.EOF, or a *net.OpError for a closed connection, a
// deadline or a failed read.
func (c *idleConn) wait(read func(fd uintptr) bool) error {
	c.n, c.rerr = 0, nil
	err := c.rc.Read(read)
	switch {
	case err != nil:
		return connError(err, "read")
	case c.rerr != nil:
		return syscallError(c, "read", c.rerr)
	case c.n == 0:
		return io.EOF
	}
	return nil
}

// readDirect reads the socket into c.direct; false (nothing there yet)
// has the caller wait until the socket is readable and call it again.
func (c *idleConn) readDirect(fd uintptr) bool {
	n, err := readRetrying(fd, c.direct)
	if err == syscall.EAGAIN {
		return false
	}
	c.n, c.rerr = max(n, 0), err
	return true
}

// readFd reads the socket into a pooled buffer; false (nothing there yet)
// has the caller wait until the socket is readable and call it again.
func (c *idleConn) readFd(fd uintptr) bool {
	b := idleBufs.Get().(*[]byte)
	n, err := readRetrying(fd, *b)
	if err == syscall.EAGAIN {
		idleBufs.Put(b)
		return false
	}
	c.n, c.rerr = n, err
	if err != nil || n <= 0 {
		idleBufs.Put(b)
		return true
	}
	c.buf, c.r, c.w = b, 0, n
	return true
}

// readRetrying reads fd into p, again when a signal interrupts it.
func readRetrying(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

func bufferedLen(br *bufio.Reader) int {
	if br == nil {
		return 0
	}
	return br.Buffered()
}

// connError is err from syscall.RawConn's Read or Write as the
// connection's own Read or Write reports it: op "read" or "write", not
// "raw-read" or "raw-write".
func connError(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}

// syscallError is errno, from the read or write system call (op) on c,
// as a TCP connection's Read or Write reports it.
func syscallError(c net.Conn, op string, errno error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}
