package middletier

import (
	"bytes"
	"testing"
)

// TestPublishedBuffers: a buffer comes back free only once every socket it
// was given to is done with it, a freed buffer is taken again, one that is
// too small or too large is not kept, and a buffer never registered is
// ignored.
func TestPublishedBuffers(t *testing.T) {
	var p published
	b := append(p.buffer(100), bytes.Repeat([]byte("x"), 100)...)
	p.sending(b, 2)
	p.sent(b)
	if len(p.free) != 0 {
		t.Fatal("a buffer freed while one of its two sockets still had it")
	}
	p.sent(b)
	if len(p.free) != 1 {
		t.Fatalf("%d buffers free after both sockets were done, want 1", len(p.free))
	}
	if c := p.buffer(50); cap(c) != cap(b) || len(c) != 0 || p.reused != 1 {
		t.Fatalf("buffer(50) after a free one: cap %d len %d, reused %d; want the freed one", cap(c), len(c), p.reused)
	}
	// A free buffer too small for the next message is dropped, not kept.
	small := append(p.buffer(10), "0123456789"...)
	p.sending(small, 1)
	p.sent(small)
	if c := p.buffer(1000); cap(c) < 1000 || p.reused != 1 {
		t.Fatalf("buffer(1000) over a 10-byte free one: cap %d, reused %d", cap(c), p.reused)
	}
	if len(p.free) != 0 {
		t.Fatalf("%d buffers free, want 0", len(p.free))
	}
	// Large buffers and buffers past the bound are not kept.
	big := append(make([]byte, 0, maxPublishedBytes+1), 'x')
	p.sending(big, 1)
	p.sent(big)
	for range maxFreePublished + 3 {
		c := append(make([]byte, 0, 64), 'x')
		p.sending(c, 1)
		p.sent(c)
	}
	if len(p.free) != maxFreePublished {
		t.Fatalf("%d buffers free, want the bound %d", len(p.free), maxFreePublished)
	}
	for _, f := range p.free {
		if cap(f) > maxPublishedBytes {
			t.Fatalf("a free buffer of %d bytes kept", cap(f))
		}
	}
	p.sent([]byte("never registered"))
	p.sent(nil)
	if len(p.pending) != 0 {
		t.Fatalf("%d buffers pending, want 0", len(p.pending))
	}
	// Closed: nothing kept, nothing pending, what comes back is dropped.
	d := append(p.buffer(64), 'x')
	p.sending(d, 1)
	p.close()
	p.sent(d)
	e := append(p.buffer(64), 'x')
	p.sending(e, 1)
	p.sent(e)
	if len(p.free) != 0 || len(p.pending) != 0 {
		t.Fatalf("after close: %d free, %d pending; want none", len(p.free), len(p.pending))
	}
}
