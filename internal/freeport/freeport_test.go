package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestPortAvoidsEphemeral: the ports Port returns are distinct, bindable
// and never among the local ports of outgoing connections, which the
// kernel takes from its ephemeral range.
func TestPortAvoidsEphemeral(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	outgoing := map[int]bool{}
	for range 200 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		outgoing[c.LocalAddr().(*net.TCPAddr).Port] = true
	}
	elo, ehi := ephemeral()
	seen := map[int]bool{}
	for range 200 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d returned twice", p)
		}
		seen[p] = true
		if outgoing[p] {
			t.Fatalf("port %d is an outgoing connection's local port", p)
		}
		if lo, hi := candidates(); hi > lo && p >= elo && p <= ehi {
			t.Fatalf("port %d is in the ephemeral range %d-%d", p, elo, ehi)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		l.Close()
	}
}
