// Package tcpproxy is a TCP proxy on loopback for tests that break the link
// between two tiers: it can cut every connection and refuse new ones, or
// stop reading one direction, as a peer that stops reading does. Both of its
// sockets have 4 KiB receive buffers, so that a direction that stops being
// read backs up into the sender at once rather than into megabytes of
// kernel buffers.
package tcpproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Proxy forwards every connection to its target.
type Proxy struct {
	ln     net.Listener
	target string

	frozenUp   atomic.Bool // client to target not read
	frozenDown atomic.Bool // target to client not read

	mu     sync.Mutex
	down   bool
	silent bool       // new connections held, neither forwarded nor answered
	held   []net.Conn // connections held while silent
	pairs  map[*pair]struct{}
	order  []*pair // every pair forwarded, in the order accepted
	wg     sync.WaitGroup
}

// pair is a client's connection and the proxy's to the target.
type pair struct {
	client, server net.Conn
	once           sync.Once
	done           chan struct{}
	// stranded: neither direction is read again, and the connection stays
	// open (Strand).
	stranded atomic.Bool
}

func (pr *pair) close() {
	pr.once.Do(func() {
		pr.client.Close()
		pr.server.Close()
		close(pr.done)
	})
}

// SmallBuffer, as a net.Dialer's or net.ListenConfig's Control, gives a
// socket a 4 KiB receive buffer before it connects.
func SmallBuffer(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
	})
	if err != nil {
		return err
	}
	return serr
}

// Start listens on 127.0.0.1 and forwards to target (host:port) until the
// test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	lc := net.ListenConfig{Control: SmallBuffer}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, pairs: map[*pair]struct{}{}}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.serve(c)
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Endpoint is the proxy's ZeroMQ endpoint, tcp://host:port.
func (p *Proxy) Endpoint() string { return "tcp://" + p.Addr() }

func (p *Proxy) serve(client net.Conn) {
	d := net.Dialer{Control: SmallBuffer}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		client.Close()
		return
	}
	if p.silent {
		p.held = append(p.held, client)
		return
	}
	server, err := d.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	pr := &pair{client: client, server: server, done: make(chan struct{})}
	p.pairs[pr] = struct{}{}
	p.order = append(p.order, pr)
	p.wg.Go(func() { p.pump(pr, server, client, &p.frozenUp) })
	p.wg.Go(func() { p.pump(pr, client, server, &p.frozenDown) })
}

// pump copies from src to dst until the pair closes; while frozen it reads
// nothing.
func (p *Proxy) pump(pr *pair, dst, src net.Conn, frozen *atomic.Bool) {
	defer func() {
		pr.close()
		p.mu.Lock()
		delete(p.pairs, pr)
		p.mu.Unlock()
	}()
	buf := make([]byte, 512)
	for {
		if frozen.Load() || pr.stranded.Load() {
			select {
			case <-pr.done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		src.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil && !isTimeout(err) {
			return
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// FreezeRequests stops reading what clients send: their sends back up.
func (p *Proxy) FreezeRequests() { p.frozenUp.Store(true) }

// FreezeReplies stops reading what the target sends: its sends back up.
func (p *Proxy) FreezeReplies() { p.frozenDown.Store(true) }

// Strand stops forwarding, either way, on every connection forwarded so
// far, and keeps them open, as a peer whose host went away without a word
// (a half-open connection); connections taken from now on are forwarded.
func (p *Proxy) Strand() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		pr.stranded.Store(true)
	}
}

// Cut closes every forwarded connection and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	p.closeLocked()
}

// SilenceFirst closes the first connection it forwarded, keeps the others,
// and takes new ones without forwarding or answering them, as the kernel
// of a stopped process does from its listen backlog.
func (p *Proxy) SilenceFirst() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silent = true
	if len(p.order) > 0 {
		p.order[0].close()
		delete(p.pairs, p.order[0])
	}
}

// closeLocked closes every connection, forwarded or held. The caller holds
// mu.
func (p *Proxy) closeLocked() {
	for pr := range p.pairs {
		pr.close()
		delete(p.pairs, pr)
	}
	for _, c := range p.held {
		c.Close()
	}
	p.held = nil
}

// Restore accepts and forwards connections again, and reads both
// directions again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down, p.silent = false, false
	for _, c := range p.held {
		c.Close()
	}
	p.held = nil
	p.frozenUp.Store(false)
	p.frozenDown.Store(false)
}
