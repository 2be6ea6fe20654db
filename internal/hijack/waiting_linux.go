package hijack

import (
	"net"

	"golang.org/x/sys/unix"
)

// Waiting reports, without reading, how many bytes wait unread in c (the
// idle reader's buffer and the socket's receive queue); whether its peer
// has closed its side of the connection (a FIN: what it sent before may
// still be read); and whether the connection is broken (reset, or an
// error such as a keepalive's timeout: nothing more can be written). ok is
// false where c is not an idle-reading TCP connection (Idle), or the
// socket cannot be asked. A session that has stopped reading
// (backpressure) uses it to tell a device that waits from one that is
// gone.
func Waiting(c net.Conn) (unread int, closed, broken, ok bool) {
	ic, isIdle := c.(*idleConn)
	if !isIdle {
		return 0, false, false, false
	}
	unread = len(ic.pending)
	if ic.buf != nil {
		unread += ic.w - ic.r
	}
	var queued int
	var ierr, perr error
	err := ic.rc.Control(func(fd uintptr) {
		queued, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if _, perr = unix.Poll(fds, 0); perr == nil {
			closed = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
			broken = fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	if err != nil || ierr != nil || perr != nil {
		return 0, false, false, false
	}
	return unread + queued, closed, broken, true
}
