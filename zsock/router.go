package zsock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/internal/lifecycle"
)

// RouterOptions configure a Router. Zero fields mean their defaults.
type RouterOptions struct {
	// SendStall bounds one send: zmq4's ROUTER sends have no deadline and
	// hold one lock for every peer, so a send that takes longer closes the
	// socket and listens again on the same address. Default 2s.
	SendStall time.Duration
	// SendQueue is how many replies wait for the sender; past it Send
	// drops them. Default 256.
	SendQueue int
	// OnStall, if set, is called when a send has stalled, before the socket
	// is recycled, on the watchdog's goroutine: for the user's log line and
	// metric.
	OnStall func()
}

// Router is a ROUTER socket that recycles itself when a send stalls: it
// closes the socket, which frees the send, and listens again on the same
// address; its peers reconnect and ask again. New starts nothing; Listen
// binds; Run receives and sends until its context ends.
type Router struct {
	o    RouterOptions
	lg   *slog.Logger
	out  chan zmq4.Msg
	quit chan struct{} // closed by Close

	mu      sync.Mutex
	addr    string        // the endpoint, port resolved once bound
	sck     zmq4.Socket   // nil before Listen, while recycling and once closed
	changed chan struct{} // closed when sck is replaced
	heard   zmq4.Socket   // the socket a message was last received on
	closed  bool
	ran     bool

	closeOnce sync.Once
}

// NewRouter returns a Router for addr (tcp://host:port; port 0 picks a free
// one). It starts nothing. lg may be nil.
func NewRouter(addr string, o RouterOptions, lg *slog.Logger) *Router {
	defaults.Positive(&o.SendStall, DefaultSendStall)
	defaults.Positive(&o.SendQueue, 256)
	lg = lifecycle.Logger(lg)
	return &Router{o: o, lg: lg, addr: addr, out: make(chan zmq4.Msg, o.SendQueue), quit: make(chan struct{}), changed: make(chan struct{})}
}

// Listen binds the socket and resolves a port 0 in its address. A second
// call does nothing.
func (r *Router) Listen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if r.sck != nil {
		return nil
	}
	sck, addr, err := r.listen(r.addr)
	if err != nil {
		return err
	}
	r.sck, r.addr = sck, addr
	return nil
}

func (r *Router) listen(addr string) (zmq4.Socket, string, error) {
	sck := zmq4.NewRouter(context.Background(), zmq4.WithTimeout(r.o.SendStall))
	if err := sck.Listen(addr); err != nil {
		sck.Close()
		return nil, "", fmt.Errorf("listen %s: %w", addr, err)
	}
	return sck, resolved(addr, sck), nil
}

// resolved is addr with the port the socket bound, for a tcp:// address.
func resolved(addr string, sck zmq4.Socket) string {
	if tcp, ok := sck.Addr().(*net.TCPAddr); ok && strings.HasPrefix(addr, "tcp://") {
		return "tcp://" + tcp.String()
	}
	return addr
}

// Addr is the endpoint the Router listens on, its port resolved once
// Listen has bound it.
func (r *Router) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// heardOn reports whether a message was received on sck: before one is,
// no peer of its own has an identity sck can reply to.
func (r *Router) heardOn(sck zmq4.Socket) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.heard == sck
}

// current is the socket and a channel closed when it is replaced.
func (r *Router) current() (zmq4.Socket, chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sck, r.changed
}

// Send queues body for the peer with the given identity without blocking,
// and reports whether it did: when the queue is full the reply is dropped,
// which the protocol tolerates (acks are cumulative and retransmissions are
// answered again; fetches are asked again). A ROUTER drops a message to an
// identity it has no connection for.
func (r *Router) Send(identity, body []byte) bool {
	select {
	case r.out <- zmq4.NewMsgFrom(identity, body):
		return true
	default:
		return false
	}
}

// Run hands every message received, its frames led by the peer's identity,
// to handle on the reader goroutine, and sends what Send queued, until ctx
// ends or Close is called. Then it closes the socket, and returns once its
// goroutines have ended. Listen must have succeeded.
func (r *Router) Run(ctx context.Context, handle func(frames [][]byte)) error {
	r.mu.Lock()
	if r.sck == nil || r.closed || r.ran {
		r.mu.Unlock()
		return errors.New("zsock: run a router that is not listening")
	}
	r.ran = true
	r.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { r.receive(handle) })
	wg.Go(r.send)
	select {
	case <-ctx.Done():
	case <-r.quit:
	}
	r.Close()
	return nil
}

func (r *Router) receive(handle func([][]byte)) {
	var heard zmq4.Socket // r.heard, as this goroutine last set it
	for {
		sck, changed := r.current()
		if sck != nil {
			msg, err := sck.Recv()
			if err == nil {
				if sck != heard { // once a socket: before the reply handle may queue
					heard = sck
					r.mu.Lock()
					r.heard = sck
					r.mu.Unlock()
				}
				handle(msg.Frames)
				continue
			}
			// zmq4 returns an error only once the socket is closed: by
			// a recycle, which replaces it, or by Close.
		}
		select {
		case <-changed:
		case <-r.quit:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *Router) send() {
	w := newWatchdog(r.o.SendStall, r.recycle)
	for {
		var msg zmq4.Msg
		select {
		case <-r.quit:
			return
		case msg = <-r.out:
		}
		sck, _ := r.current()
		if sck == nil || !r.heardOn(sck) {
			// Nothing received on this socket yet (it was recycled
			// since the message the reply answers): the reply's peer is
			// one of the old socket's, which this one does not know.
			// zmq4 would hold the send until a first peer came, and the
			// watchdog take that for a stall and recycle again. Dropped,
			// as replies may be.
			continue
		}
		w.arm()
		sck.Send(msg) // its error means nothing more than a lost reply
		w.disarm()
	}
}

// recycle closes the socket whose send stalled and listens again on the
// same address, trying again every 100ms until it can or the Router is
// closed.
func (r *Router) recycle() {
	if r.o.OnStall != nil {
		r.o.OnStall()
	}
	r.mu.Lock()
	old, addr := r.sck, r.addr
	if old == nil || r.closed {
		r.mu.Unlock()
		return
	}
	r.sck = nil
	r.mu.Unlock()
	old.Close()
	for {
		sck, _, err := r.listen(addr)
		if err == nil {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.closed {
				sck.Close()
				return
			}
			r.sck = sck
			close(r.changed)
			r.changed = make(chan struct{})
			return
		}
		r.lg.Error("zsock: listen again after a stalled send", "addr", addr, "err", err)
		select {
		case <-r.quit:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close closes the socket and ends Run. It may be called more than once,
// and on a Router that never ran.
func (r *Router) Close() {
	r.closeOnce.Do(func() {
		close(r.quit)
		r.mu.Lock()
		r.closed = true
		sck := r.sck
		r.sck = nil
		r.mu.Unlock()
		if sck != nil {
			sck.Close()
		}
	})
}
