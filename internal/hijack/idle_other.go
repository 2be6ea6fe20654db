//go:build !unix

package hijack

import (
	"bufio"
	"net"
	"time"
)

// IdleBufBytes is the size of the buffers an idle-reading connection
// reads into, where there is one.
const IdleBufBytes = 4096

// Idle reads sockets through syscall.RawConn where the system is Unix;
// elsewhere it declines, and the caller keeps a buffer of its own.
func Idle(nc net.Conn, buffered *bufio.Reader) (c net.Conn, br *bufio.Reader, ok bool) {
	return nil, nil, false
}

// Bounded declines where the system is not Unix: the caller bounds its
// writes itself.
func Bounded(nc net.Conn, timeout time.Duration) (net.Conn, bool) {
	return nil, false
}
