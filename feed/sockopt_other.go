//go:build !linux

package feed

import "net"

// limitUnsent does nothing where TCP_NOTSENT_LOWAT is not known here: a slow
// reader's last notice may then wait behind the kernel's whole send buffer.
func limitUnsent(nc net.Conn, notSent int) {}
