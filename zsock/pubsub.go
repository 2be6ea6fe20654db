package zsock

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/ingest-io/ingest/internal/defaults"
)

// Pub is a PUB socket. zmq4 queues for every subscriber in one queue and
// writes them one after another; past the high-water mark it drops new
// messages without a word, and subscribers see the gap by sequence.
type Pub struct {
	sck  zmq4.Socket
	addr string
}

// ListenPub binds a PUB socket to addr (port 0 picks a free one) with a
// high-water mark of hwm messages.
func ListenPub(addr string, hwm int) (*Pub, error) { return ListenPubSent(addr, hwm, nil) }

// ListenPubSent is ListenPub with sent, if not nil, called with every
// buffer given to Send once the socket is done with it: written to every
// subscriber, or dropped past the high-water mark (zmq4.WithPubSent). The
// caller may then reuse it. The socket's writer may still pass back
// buffers queued when it closed, after Close. Only over tcp:// and ipc://:
// zmq4's inproc transport hands the buffer itself to its reader, which
// reads it later, so there sent is never called.
func ListenPubSent(addr string, hwm int, sent func(b []byte)) (*Pub, error) {
	var opts []zmq4.Option
	if sent != nil && (strings.HasPrefix(addr, "tcp://") || strings.HasPrefix(addr, "ipc://")) {
		opts = append(opts, zmq4.WithPubSent(func(m zmq4.Msg) { sent(m.Frames[0]) }))
	}
	sck := zmq4.NewPub(context.Background(), opts...)
	if err := sck.SetOption(zmq4.OptionHWM, hwm); err != nil {
		sck.Close()
		return nil, fmt.Errorf("set high-water mark: %w", err)
	}
	if err := sck.Listen(addr); err != nil {
		sck.Close()
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return &Pub{sck: sck, addr: resolved(addr, sck)}, nil
}

// Addr is the endpoint the socket listens on, its port resolved.
func (p *Pub) Addr() string { return p.addr }

// Send publishes b as one frame. It does not block on subscribers; what
// the socket drops is not reported.
func (p *Pub) Send(b []byte) { p.sck.Send(zmq4.NewMsg(b)) }

// Close closes the socket.
func (p *Pub) Close() { p.sck.Close() }

// SubOptions configure a Sub. Zero fields mean their defaults.
type SubOptions struct {
	// Buffer is how many messages wait between the socket and the user;
	// past it messages are dropped. Default 256.
	Buffer int
	// DialTimeout bounds the TCP connect, and then the greeting. Default
	// 1s.
	DialTimeout time.Duration
	// OnOverflow, if set, is called on the reader goroutine for every
	// message dropped because the buffer was full.
	OnOverflow func()
}

// Sub is a SUB socket connected to one PUB and subscribed to everything,
// for the life of one connection. Its reader goroutine drains the socket
// at once into a bounded buffer whatever the user does, since a subscriber
// that stops reading slows the PUB for every other one; what does not fit
// is dropped.
type Sub struct {
	sck       zmq4.Socket
	in        chan [][]byte
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// Subscribe connects a Sub to endpoint and starts its reader.
func Subscribe(endpoint string, o SubOptions) (*Sub, error) {
	defaults.Positive(&o.Buffer, 256)
	defaults.Positive(&o.DialTimeout, DefaultDialTimeout)
	sck := zmq4.NewSub(context.Background(), zmq4.WithDialerTimeout(o.DialTimeout), zmq4.WithDialerMaxRetries(0))
	if err := sck.Dial(endpoint); err != nil {
		sck.Close()
		return nil, fmt.Errorf("dial %s: %w", endpoint, err)
	}
	if err := sck.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		sck.Close()
		return nil, fmt.Errorf("subscribe %s: %w", endpoint, err)
	}
	s := &Sub{sck: sck, in: make(chan [][]byte, o.Buffer), done: make(chan struct{})}
	s.wg.Go(func() {
		defer close(s.done)
		for {
			msg, err := sck.Recv()
			if err != nil {
				return
			}
			select {
			case s.in <- msg.Frames:
			default:
				if o.OnOverflow != nil {
					o.OnOverflow()
				}
			}
		}
	})
	return s, nil
}

// Recv delivers the frames of each message received and not dropped, in
// order.
func (s *Sub) Recv() <-chan [][]byte { return s.in }

// Done is closed when the connection has ended.
func (s *Sub) Done() <-chan struct{} { return s.done }

// Close closes the socket and waits for the reader. It may be called more
// than once.
func (s *Sub) Close() {
	s.closeOnce.Do(func() {
		s.sck.Close()
		s.wg.Wait()
	})
}
