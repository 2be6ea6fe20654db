package zsock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/ingest-io/ingest/internal/defaults"
)

var (
	// ErrStalled is why a Dealer ended whose send took longer than its
	// SendStall.
	ErrStalled = errors.New("zsock: send stalled")
	// ErrClosed is why a Dealer ended that was closed.
	ErrClosed = errors.New("zsock: closed")
)

// The defaults of every socket's bounds, for the options of their users to
// state.
const (
	// DefaultSendStall bounds one send: a zmq4 send has no deadline of its
	// own once connected.
	DefaultSendStall = 2 * time.Second
	// DefaultDialTimeout bounds one TCP connect, and then the greeting.
	DefaultDialTimeout = time.Second
)

// IdentitySuffixLen is how many bytes Identity adds to its prefix.
const IdentitySuffixLen = 13

// MaxIdentityLen is the longest socket identity: ZMTP carries at most 255
// bytes, and zmq4 cuts a longer one to that without a word.
const MaxIdentityLen = 255

// Identity returns prefix#<12 random hex digits>: a socket identity of its
// own for one connection, so that a ROUTER never answers this connection's
// requests to an earlier one that had the same prefix. A prefix too long
// for the whole to fit in MaxIdentityLen is cut, never the random part.
func Identity(prefix string) string {
	var rnd [6]byte
	rand.Read(rnd[:])
	return FitIdentity(prefix, "#"+hex.EncodeToString(rnd[:]))
}

// FitIdentity is prefix+suffix, prefix cut as needed for the whole to be at
// most MaxIdentityLen bytes: the suffix is what tells one socket from the
// next, and zmq4 would cut it first.
func FitIdentity(prefix, suffix string) string {
	if n := MaxIdentityLen - len(suffix); len(prefix) > n {
		prefix = prefix[:max(n, 0)]
	}
	return prefix + suffix
}

// DealerOptions configure a Dealer. Zero fields mean their defaults.
type DealerOptions struct {
	// Identity is the socket's ZeroMQ identity, under which the ROUTER it
	// connects to answers it. No two sockets connected to one ROUTER at the
	// same time may share one: a ROUTER answers every connection with the
	// identity. Required; at most MaxIdentityLen bytes (FitIdentity).
	Identity string
	// SendStall bounds one send: a send that takes longer closes the
	// Dealer. Default 2s.
	SendStall time.Duration
	// DialTimeout bounds the TCP connect of Dial, and then the greeting:
	// Dial takes up to twice it. Default 1s.
	DialTimeout time.Duration
	// SendQueue is how many messages Send queues for the sender; past it
	// Send refuses. Default 64.
	SendQueue int
	// RecvQueue is how many received messages wait for the user. The reader
	// waits when it is full: read Recv promptly, or the peer's sends to this
	// socket stall. Default 64.
	RecvQueue int
	// Written, if set, is called from the sender goroutine with the bytes
	// of each message Send was given, once they are written whole to the
	// connection: the Dealer is done with them, and the user may fill them
	// again. It is not called for a message whose write failed or stalled
	// (the connection may still hold them), nor for SendWait's.
	Written func(b []byte)
}

func (o DealerOptions) withDefaults() (DealerOptions, error) {
	switch {
	case o.Identity == "":
		return o, errors.New("zsock: dealer needs an identity")
	case len(o.Identity) > MaxIdentityLen:
		// zmq4 would cut it, and sockets that differ only past the cut
		// would share one: each would get the other's answers.
		return o, fmt.Errorf("zsock: identity of %d bytes, at most %d", len(o.Identity), MaxIdentityLen)
	}
	defaults.Positive(&o.SendStall, DefaultSendStall)
	defaults.Positive(&o.DialTimeout, DefaultDialTimeout)
	defaults.Positive(&o.SendQueue, 64)
	defaults.Positive(&o.RecvQueue, 64)
	return o, nil
}

// Dealer is a DEALER socket connected to exactly one peer, for the life of
// one connection: once it has ended (Done), the user dials a new one. It
// has a sender goroutine, whose watchdog closes the socket when a send
// stalls, and a reader goroutine; Close ends both and waits for them.
type Dealer struct {
	endpoint string
	sck      zmq4.Socket
	written  func([]byte) // DealerOptions.Written
	out      chan outMsg
	in       chan [][]byte
	done     chan struct{} // closed when the Dealer can carry nothing more
	quit     chan struct{} // closed by Close

	mu  sync.Mutex
	err error

	closeOnce sync.Once
	wg        sync.WaitGroup
}

// outMsg is a message queued for the sender; sent, if not nil, gets the
// outcome once the sender has handed it to the connection.
type outMsg struct {
	b    []byte
	sent chan error
}

// Dial connects a Dealer to endpoint (tcp://host:port) and starts its
// sender and reader.
func Dial(endpoint string, o DealerOptions) (*Dealer, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	sck := zmq4.NewDealer(context.Background(),
		zmq4.WithID(zmq4.SocketIdentity(o.Identity)),
		zmq4.WithTimeout(o.SendStall),
		zmq4.WithDialerTimeout(o.DialTimeout),
		zmq4.WithDialerMaxRetries(0),
	)
	if err := sck.Dial(endpoint); err != nil {
		sck.Close()
		return nil, fmt.Errorf("dial %s: %w", endpoint, err)
	}
	d := &Dealer{
		endpoint: endpoint, sck: sck, written: o.Written,
		out:  make(chan outMsg, o.SendQueue),
		in:   make(chan [][]byte, o.RecvQueue),
		done: make(chan struct{}),
		quit: make(chan struct{}),
	}
	d.wg.Go(d.receive)
	d.wg.Go(func() { d.send(o.SendStall) })
	return d, nil
}

// Endpoint is the endpoint the Dealer is connected to.
func (d *Dealer) Endpoint() string { return d.endpoint }

// Send queues b, one frame, for the sender without blocking, and reports
// whether it did: false means the queue is full (the peer is not keeping
// up) or the Dealer has ended. The Dealer owns b from then on. A queued
// message may still be lost: only the peer's answer proves delivery.
func (d *Dealer) Send(b []byte) bool { return d.queue(outMsg{b: b}) }

func (d *Dealer) queue(m outMsg) bool {
	select {
	case <-d.done:
		return false
	default:
	}
	select {
	case d.out <- m:
		return true
	default:
		return false
	}
}

// errQueueFull is why SendWait could not queue a message.
var errQueueFull = errors.New("zsock: send queue full")

// SendWait sends b, one frame, as Send does, and returns once the sender
// has handed it to the connection: its bytes are written, in order with
// what the caller does next, though only the peer's answer proves delivery.
// It returns an error if the message could not be queued or sent, or the
// Dealer ended first. It waits at most about SendStall, the watchdog's
// limit.
func (d *Dealer) SendWait(b []byte) error {
	sent := make(chan error, 1)
	if !d.queue(outMsg{b: b, sent: sent}) {
		if err := d.Err(); err != nil {
			return err
		}
		return errQueueFull
	}
	select {
	case err := <-sent:
		return err
	case <-d.done:
		select {
		case err := <-sent:
			return err
		default:
			return d.Err()
		}
	}
}

// Recv delivers the frames of each message received, in order.
func (d *Dealer) Recv() <-chan [][]byte { return d.in }

// Done is closed when the Dealer can carry nothing more: a send stalled or
// failed, the connection broke, or Close was called.
func (d *Dealer) Done() <-chan struct{} { return d.done }

// Err says why the Dealer ended (ErrStalled, ErrClosed or the socket's
// error), nil while it has not.
func (d *Dealer) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// end records why the Dealer ended, once, and closes the socket, which
// frees a stalled send and ends the reader.
func (d *Dealer) end(err error) {
	d.mu.Lock()
	first := d.err == nil
	if first {
		d.err = err
		close(d.done)
	}
	d.mu.Unlock()
	if first {
		d.sck.Close()
	}
}

func (d *Dealer) receive() {
	for {
		msg, err := d.sck.Recv()
		if err != nil {
			d.end(fmt.Errorf("receive: %w", err))
			return
		}
		select {
		case d.in <- msg.Frames:
		case <-d.quit:
			return
		}
	}
}

func (d *Dealer) send(stall time.Duration) {
	w := newWatchdog(stall, func() { d.end(ErrStalled) })
	for {
		var m outMsg
		select {
		case <-d.done:
			return
		case m = <-d.out:
		}
		w.arm()
		err := d.sck.Send(zmq4.NewMsg(m.b))
		switch {
		case w.disarm():
			err = ErrStalled
		case errors.Is(err, context.DeadlineExceeded):
			// zmq4 gave up waiting on the write after its own send
			// timeout, the same SendStall, before the watchdog fired: the
			// same stall, and the write is still stuck on the socket.
			err = ErrStalled
			d.end(err)
		case err != nil:
			// A write failed: the connection is broken.
			err = fmt.Errorf("send: %w", err)
			d.end(err)
		}
		if m.sent != nil {
			m.sent <- err
		} else if err == nil && d.written != nil {
			d.written(m.b)
		}
		if err != nil {
			return
		}
	}
}

// Close ends the Dealer and waits for its goroutines. It may be called more
// than once.
func (d *Dealer) Close() {
	d.closeOnce.Do(func() {
		close(d.quit)
		d.end(ErrClosed)
		d.wg.Wait()
	})
}

// RedialAfter is how long to wait before dialing again after n failures in
// a row (refused dials, or connections that ended as soon as they began):
// from 50 ms, doubling up to 2 s, the second half of it at random, so that
// the peers of a middletier or home that comes back do not all dial it at
// once.
func RedialAfter(n int) time.Duration {
	d := min(50*time.Millisecond<<min(n, 6), 2*time.Second)
	return d/2 + mrand.N(d/2+1)
}
