package uplink_test

import (
	"context"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/wire"
)

// consumer commits checkpoints to a middletier as a storage writer would.
type consumer struct {
	sck  zmq4.Socket
	msgs chan zmq4.Msg
}

func newConsumer(t *testing.T, endpoint string) *consumer {
	t.Helper()
	sck := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity("storage#test")))
	if err := sck.Dial(endpoint); err != nil {
		t.Fatal(err)
	}
	c := &consumer{sck: sck, msgs: make(chan zmq4.Msg, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := sck.Recv()
			if err != nil {
				return
			}
			c.msgs <- m
		}
	}()
	t.Cleanup(func() { sck.Close(); <-done })
	return c
}

func (c *consumer) commit(t *testing.T, seq uint64) {
	t.Helper()
	if err := c.sck.Send(zmq4.NewMsg(wire.Append(nil, &wire.Commit{Consumer: "storage", Seq: seq}))); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-c.msgs:
		if _, err := wire.Decode(m.Frames[0]); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no commit ack")
	}
}
