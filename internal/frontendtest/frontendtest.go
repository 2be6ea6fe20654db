// Package frontendtest serves a real frontend over a real WAL on
// 127.0.0.1, for the tests of the packages that dial one: the device
// client and the load generator. (The frontend's own tests, inside the
// package, have their own server with its registry and logs.)
package frontendtest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// Server is a frontend serving until Stop or the end of the test.
type Server struct {
	Addr string   // the WebSocket listener's address
	Dir  string   // the WAL's directory
	Log  *wal.Log // the WAL, open until Stop

	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
}

// Start serves a frontend on addr ("127.0.0.1:0" for any port) with its WAL
// in dir, opened with wopts as the frontend's hop. A restarted server takes
// its predecessor's port, which the predecessor's connections may hold for
// a moment: the listen is tried again for up to 5 seconds. opts is taken
// as given but for its Listener; an MQTTListener in it is served too.
func Start(t testing.TB, addr, dir string, opts frontend.Options, wopts wal.Options) *Server {
	t.Helper()
	wopts.Hop = "frontend"
	l, err := wal.Open(dir, wopts, nil, nil)
	if err != nil {
		t.Fatalf("open wal: %v", err)
	}
	var ln net.Listener
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // the pause between tries, not a wait for a condition
	}
	if err != nil {
		l.Close()
		t.Fatalf("listen: %v", err)
	}
	opts.Listener = ln
	srv, err := frontend.New(opts, l, nil, nil)
	if err != nil {
		l.Close()
		t.Fatalf("new frontend: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Addr: ln.Addr().String(), Dir: dir, Log: l, cancel: cancel, errc: make(chan error, 1)}
	go func() { s.errc <- srv.Run(ctx) }()
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// URL is the server's device endpoint.
func (s *Server) URL() string { return "ws://" + s.Addr + protocol.Path }

// Stop drains the frontend (its connections are closed with 1001) and
// closes its WAL, once.
func (s *Server) Stop(t testing.TB) {
	s.once.Do(func() {
		s.cancel()
		if err := <-s.errc; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := s.Log.Close(); err != nil {
			t.Errorf("close wal: %v", err)
		}
	})
}
