package testkit

import (
	"bytes"
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"

	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// Router is a bare ROUTER on 127.0.0.1 standing in for a middletier or a
// command home in a test that must answer (or not) message by message.
type Router struct {
	*zsock.Router
}

// StartRouter listens on a free port and, until the test ends, calls
// handle with each message received from a peer: its identity (a copy)
// and the message. Frames that do not decode fail the test.
func StartRouter(t testing.TB, handle func(identity []byte, m wire.Message)) *Router {
	t.Helper()
	r := zsock.NewRouter("tcp://127.0.0.1:0", zsock.RouterOptions{}, nil)
	if err := r.Listen(); err != nil {
		t.Fatal(err)
	}
	Go(t, "router", func(ctx context.Context) error {
		return r.Run(ctx, func(frames [][]byte) {
			if len(frames) != 2 {
				t.Errorf("router: a message of %d frames", len(frames))
				return
			}
			m, err := wire.Decode(frames[1])
			if err != nil {
				t.Errorf("router: %v", err)
				return
			}
			handle(bytes.Clone(frames[0]), m)
		})
	})
	return &Router{r}
}

// Reply sends m to the peer with identity.
func (r *Router) Reply(identity []byte, m wire.Message) { r.Send(identity, wire.Append(nil, m)) }

// StartFlapper listens on 127.0.0.1 for a peer that greets each connection
// as a ROUTER and drops it at once (a middletier or home that takes
// connections and cannot keep them), until the test ends. It returns its
// endpoint and the count of connections greeted.
func StartFlapper(t testing.TB) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	greeted := new(atomic.Int64)
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				if _, err := zmq4.Open(nc, null.Security(), zmq4.Router, zmq4.SocketIdentity("flapper"), true, nil); err == nil {
					greeted.Add(1)
				}
			}()
		}
	}()
	return "tcp://" + ln.Addr().String(), greeted
}
