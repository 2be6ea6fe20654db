package loopback_test

import (
	"net"
	"strings"
	"testing"

	"github.com/ingest-io/ingest/internal/loopback"
)

// hosts are Host headers and whether a local client names them.
var hosts = []struct {
	host  string
	local bool
}{
	{"", true},
	{"127.0.0.1", true},
	{"127.0.0.1:8080", true},
	{"[::1]:8080", true},
	{"[::1]", true},
	{"::1", true},
	{"192.168.1.20:8080", true}, // an address: no name a page's server answers for
	{"localhost", true},
	{"localhost:8080", true},
	{"LOCALHOST.:8080", true},
	{"app.localhost:8081", true},
	{"devbox", true}, // the machine's own name
	{"devbox:8080", true},
	{"evil.example", false},
	{"evil.example:8080", false},
	{"evil.example.:8080", false},
	{"127.0.0.1.nip.io:8080", false},
	{"localhost.evil.example", false},
	{"EVIL.EXAMPLE", false},
}

func TestLocal(t *testing.T) {
	for _, c := range hosts {
		if got := loopback.Local(c.host); got != c.local {
			t.Errorf("Local(%q) = %v, want %v", c.host, got, c.local)
		}
	}
}

// FuzzLocal: Local takes any Host a client sends. An address, with or
// without a port, is always local; a name with a dot whose last label is
// not localhost, never.
func FuzzLocal(f *testing.F) {
	for _, c := range hosts {
		f.Add(c.host)
	}
	f.Fuzz(func(t *testing.T, host string) {
		got := loopback.Local(host)
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		h = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), ".")
		if net.ParseIP(h) != nil && !got {
			t.Fatalf("Local(%q) = false for an address", host)
		}
		if net.ParseIP(h) == nil && strings.Contains(h, ".") && !strings.HasSuffix(strings.ToLower(h), ".localhost") && got {
			t.Fatalf("Local(%q) = true for a dotted name", host)
		}
	})
}
