package feed

import (
	"net"
	"syscall"
)

// tcpNotSentLowat is TCP_NOTSENT_LOWAT (linux/tcp.h), which package
// syscall does not name.
const tcpNotSentLowat = 0x19

// limitUnsent bounds the bytes the kernel keeps queued for nc and not yet
// sent to notSent: a write waits while more are queued. What is in flight
// (sent, not yet acknowledged) stays bounded by the reader's window, and the
// send buffer keeps its automatic sizing for fast readers far away; but a
// slow reader does not have megabytes queued in front of the notice that
// it is too slow. Best effort: nc is left as it is where the option fails.
func limitUnsent(nc net.Conn, notSent int) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat, notSent)
	})
}
