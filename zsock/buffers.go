package zsock

// Buffers keeps the buffers of messages a socket is done with
// (DealerOptions.Written, ListenPubSent), for the next messages to be
// encoded into instead of new ones. Its methods may be called from several
// goroutines.
type Buffers struct {
	free     chan []byte
	min, max int
}

// NewBuffers returns Buffers that keeps up to n buffers of at most max
// bytes each, and makes new ones of at least min bytes (so that short
// messages fit in the buffers of others).
func NewBuffers(n, min, max int) *Buffers {
	return &Buffers{free: make(chan []byte, n), min: min, max: max}
}

// Get returns an empty buffer with room for size bytes: one kept, or a new
// one. A kept buffer too small for size is let go.
func (b *Buffers) Get(size int) []byte {
	select {
	case buf := <-b.free:
		if cap(buf) >= size {
			return buf
		}
	default:
	}
	return make([]byte, 0, max(size, b.min))
}

// Put keeps buf, which its caller no longer uses, for a later Get, unless
// it is larger than the bound or as many buffers as allowed are kept. With
// PoisonReleasedFrames on (test binaries) it is filled with 0xEE first: a
// use after Put then reads as garbage.
func (b *Buffers) Put(buf []byte) {
	if cap(buf) > b.max {
		return
	}
	Poison(buf)
	select {
	case b.free <- buf[:0]:
	default:
	}
}

// Len returns how many buffers are kept.
func (b *Buffers) Len() int { return len(b.free) }

// Drop lets go of every buffer kept.
func (b *Buffers) Drop() {
	for {
		select {
		case <-b.free:
		default:
			return
		}
	}
}
