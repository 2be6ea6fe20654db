package uplink

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/wire"
)

// conn is one DEALER socket connected to exactly one middletier (a zmq4
// DEALER sends every message to every peer it is connected to). It has a
// receiver goroutine and a sender goroutine; the sender's watchdog closes
// the socket when a send stalls, since zmq4 sends have no deadline once
// connected. dead is closed when either goroutine gives up.
type conn struct {
	endpoint string
	sck      zmq4.Socket
	cancel   context.CancelFunc
	out      chan []byte
	replies  chan wire.Message
	dead     chan struct{}
	deadOnce sync.Once
	wg       sync.WaitGroup
}

func dial(ctx context.Context, endpoint, identity string, o Options) (*conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	sck := zmq4.NewDealer(ctx,
		zmq4.WithID(zmq4.SocketIdentity(identity)),
		zmq4.WithTimeout(o.SendStall),
		zmq4.WithDialerTimeout(o.DialTimeout),
		zmq4.WithDialerMaxRetries(0),
	)
	if err := sck.Dial(endpoint); err != nil {
		sck.Close()
		cancel()
		return nil, fmt.Errorf("dial %s: %w", endpoint, err)
	}
	c := &conn{
		endpoint: endpoint, sck: sck, cancel: cancel,
		out:     make(chan []byte, o.Window*2),
		replies: make(chan wire.Message, o.Window*2),
		dead:    make(chan struct{}),
	}
	c.wg.Go(func() { c.receive(ctx) })
	c.wg.Go(func() { c.send(ctx, o.SendStall) })
	return c, nil
}

func (c *conn) die() { c.deadOnce.Do(func() { close(c.dead) }) }

func (c *conn) receive(ctx context.Context) {
	defer c.die()
	for {
		msg, err := c.sck.Recv()
		if err != nil {
			return
		}
		if len(msg.Frames) != 1 {
			continue
		}
		m, err := wire.Decode(msg.Frames[0])
		if err != nil {
			continue
		}
		select {
		case c.replies <- m:
		case <-ctx.Done():
			return
		}
	}
}

func (c *conn) send(ctx context.Context, stall time.Duration) {
	defer c.die()
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		var b []byte
		select {
		case <-ctx.Done():
			return
		case b = <-c.out:
		}
		done := make(chan error, 1)
		go func() { done <- c.sck.Send(zmq4.NewMsg(b)) }()
		timer.Reset(stall)
		select {
		case <-done:
			// Its error means only that the message is lost; acks tell.
		case <-timer.C:
			c.sck.Close() // frees the stalled send
			<-done
			return
		case <-ctx.Done():
			c.sck.Close()
			<-done
			return
		}
	}
}

// enqueue hands a message to the sender without blocking; false means the
// sender is not keeping up, which the caller treats as a dead link.
func (c *conn) enqueue(b []byte) bool {
	select {
	case c.out <- b:
		return true
	default:
		return false
	}
}

func (c *conn) close() {
	c.cancel()
	c.sck.Close()
	c.wg.Wait()
}
