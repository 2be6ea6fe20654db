package middletier

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
)

// routerSocket is a zmq4 ROUTER that can be closed and opened again on the
// same address. zmq4's ROUTER sends have no deadline and hold one lock for
// every peer: a peer that stops reading freezes them all, and closing the
// socket is the only way to free them. Every send goes through one sender
// goroutine; its watchdog recycles the socket when a send stalls.
type routerSocket struct {
	name    string // "ingest" or "consumer", for metrics and logs
	ctx     context.Context
	stall   time.Duration
	lg      *slog.Logger
	onStall func()

	mu   sync.Mutex
	addr string // the bound endpoint, port resolved
	sck  zmq4.Socket

	out chan zmq4.Msg
}

func newRouterSocket(ctx context.Context, name, addr string, stall time.Duration, queue int, lg *slog.Logger, onStall func()) *routerSocket {
	return &routerSocket{name: name, ctx: ctx, stall: stall, lg: lg, onStall: onStall, addr: addr, out: make(chan zmq4.Msg, queue)}
}

// listen binds the socket and resolves a port 0 in its address.
func (s *routerSocket) listen() error {
	sck := zmq4.NewRouter(s.ctx, zmq4.WithTimeout(s.stall))
	if err := sck.Listen(s.addr); err != nil {
		sck.Close()
		return fmt.Errorf("listen %s: %w", s.addr, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sck = sck
	if tcp, ok := sck.Addr().(*net.TCPAddr); ok && strings.HasPrefix(s.addr, "tcp://") {
		s.addr = fmt.Sprintf("tcp://%s", tcp.String())
	}
	return nil
}

func (s *routerSocket) endpoint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

func (s *routerSocket) current() zmq4.Socket {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sck
}

// recycle closes the socket and listens again on the same address. Peers
// reconnect; whatever was in flight is retransmitted by them.
func (s *routerSocket) recycle(old zmq4.Socket) {
	s.mu.Lock()
	if s.sck != old {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	old.Close()
	for s.ctx.Err() == nil {
		if err := s.listen(); err == nil {
			return
		} else if s.lg != nil {
			s.lg.Error("middletier: listen again after a stalled send", "socket", s.name, "err", err)
		}
		select {
		case <-s.ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// recv returns the next message from any peer, across recycles.
func (s *routerSocket) recv() (zmq4.Msg, error) {
	for {
		sck := s.current()
		msg, err := sck.Recv()
		if err == nil {
			return msg, nil
		}
		if s.ctx.Err() != nil {
			return zmq4.Msg{}, s.ctx.Err()
		}
		if s.current() != sck {
			continue // recycled under us
		}
		// A failed read of one peer's connection surfaces here; the socket
		// itself goes on serving the others.
		if s.lg != nil {
			s.lg.Debug("middletier: receive", "socket", s.name, "err", err)
		}
	}
}

// send queues a reply to the peer with the given identity. It never blocks:
// when the queue is full the reply is dropped, which the protocol tolerates
// (acks are cumulative and retransmissions are answered again; fetches are
// asked again).
func (s *routerSocket) send(identity, body []byte) bool {
	select {
	case s.out <- zmq4.NewMsgFrom(identity, body):
		return true
	default:
		return false
	}
}

// sender is the one goroutine that sends on the socket, with a watchdog.
func (s *routerSocket) sender() {
	for {
		var msg zmq4.Msg
		select {
		case <-s.ctx.Done():
			return
		case msg = <-s.out:
		}
		sck := s.current()
		done := make(chan struct{})
		go func() {
			sck.Send(msg) // its error means nothing more than a lost reply
			close(done)
		}()
		select {
		case <-done:
		case <-s.ctx.Done():
			<-done
			return
		case <-time.After(s.stall):
			if s.lg != nil {
				s.lg.Warn("middletier: send stalled; closing the socket and listening again", "socket", s.name, "after", s.stall)
			}
			if s.onStall != nil {
				s.onStall()
			}
			s.recycle(sck)
			<-done
		}
	}
}

func (s *routerSocket) close() {
	if sck := s.current(); sck != nil {
		sck.Close()
	}
}
