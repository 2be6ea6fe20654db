// Package freeport picks loopback ports for the servers a test or the
// bench starts as processes, which must be told their port before they
// bind it.
//
// A port the kernel hands out for a listener on port 0 comes from its
// range for ephemeral ports, the same range every outgoing connection on
// the machine takes its local port from. Between the moment such a port
// is picked and the moment the process binds it, a connection anywhere on
// the machine (a load test's devices, another package's tests) may take
// it, and the process fails with "address already in use". Port picks at
// random outside that range, where only a bind by name can take a port.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// rangeFile holds the kernel's range for ephemeral ports: "low high".
const rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// Below the ephemeral range, Port stays above the ports well-known
// servers use.
const floor = 10000

var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// Port returns a port of 127.0.0.1 that nothing was bound to a moment
// ago, outside the kernel's range for ephemeral ports, and that it has
// not returned before in this process (the kernel may hand a port just
// closed out again, and a caller that picks several ports before starting
// the processes that bind them would then give two of them the same one).
// Where the ephemeral range leaves no room, it falls back to one the
// kernel picks.
func Port() (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	lo, hi := candidates()
	for range 1000 {
		p := kernelPick
		if hi > lo {
			p = lo + rand.IntN(hi-lo)
		}
		got, err := bind(p)
		if err != nil {
			if p == kernelPick {
				return 0, err
			}
			continue // taken
		}
		if !handedOut.ports[got] {
			handedOut.ports[got] = true
			return got, nil
		}
	}
	return 0, errors.New("freeport: no free loopback port in 1000 tries")
}

// kernelPick asks bind for a port the kernel picks.
const kernelPick = 0

// bind binds 127.0.0.1:port, closes it and returns its port.
func bind(port int) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// candidates returns the ports [lo, hi) Port picks from: the larger of
// those below and above the ephemeral range, or an empty range if
// neither has a thousand.
func candidates() (lo, hi int) {
	elo, ehi := ephemeral()
	below, above := elo-floor, 65536-(ehi+1)
	switch {
	case below >= 1000 && below >= above:
		return floor, elo
	case above >= 1000:
		return ehi + 1, 65536
	}
	return 0, 0
}

// ephemeral reads the kernel's range for ephemeral ports; Linux's default
// where it cannot.
func ephemeral() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile(rangeFile)
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return lo, hi
	}
	l, err1 := strconv.Atoi(f[0])
	h, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || l < 1 || h < l || h > 65535 {
		return lo, hi
	}
	return l, h
}
