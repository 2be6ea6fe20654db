package middletier

import (
	"sync"

	"github.com/ingest-io/ingest/zsock"
)

// published recycles the buffers of the stream messages the publisher
// sends. Each goes to the stream socket and, where there is one, to the
// feed socket, and is taken again once both are done with it: written to
// every subscriber, or dropped past the high-water mark
// (zsock.ListenPubSent). Once the sockets are closed (close), it keeps
// nothing: a socket's writer may still pass back what was queued.
type published struct {
	free *zsock.Buffers

	mu      sync.Mutex
	pending map[*byte]int // buffers sent: the sockets not yet done with each
	closed  bool
}

const (
	// maxFreePublished and maxPublishedBytes bound what published keeps:
	// a burst's large messages are not kept.
	maxFreePublished  = 8
	maxPublishedBytes = 256 << 10
)

func newPublished() *published {
	return &published{free: zsock.NewBuffers(maxFreePublished, 0, maxPublishedBytes)}
}

// close drops what published keeps and has it keep nothing more.
func (p *published) close() {
	p.mu.Lock()
	p.closed = true
	p.pending = nil
	p.mu.Unlock()
	p.free.Drop()
}

// buffer returns an empty buffer of at least size bytes.
func (p *published) buffer(size int) []byte { return p.free.Get(size) }

// sending notes that b, not empty, is about to be given to sockets
// sockets.
func (p *published) sending(b []byte, sockets int) {
	p.mu.Lock()
	if p.pending == nil {
		p.pending = map[*byte]int{}
	}
	if !p.closed {
		p.pending[&b[0]] = sockets
	}
	p.mu.Unlock()
}

// sent is a socket's word that it is done with b: the last one's makes b
// free.
func (p *published) sent(b []byte) {
	if len(b) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key := &b[0]
	n, ok := p.pending[key]
	switch {
	case !ok:
		return
	case n > 1:
		p.pending[key] = n - 1
		return
	}
	delete(p.pending, key)
	p.free.Put(b)
}
