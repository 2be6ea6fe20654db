//go:build !linux

package hijack

import "net"

// Waiting declines where the system is not Linux: ok is false.
func Waiting(c net.Conn) (unread int, closed, broken, ok bool) { return 0, false, false, false }
