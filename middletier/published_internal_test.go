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
	p := newPublished()
	b := append(p.buffer(100), bytes.Repeat([]byte("x"), 100)...)
	p.sending(b, 2)
	p.sent(b)
	if p.free.Len() != 0 {
		t.Fatal("a buffer freed while one of its two sockets still had it")
	}
	p.sent(b)
	if p.free.Len() != 1 {
		t.Fatalf("%d buffers free after both sockets were done, want 1", p.free.Len())
	}
	if c := p.buffer(50); cap(c) != cap(b) || len(c) != 0 || &c[:1][0] != &b[0] {
		t.Fatalf("buffer(50) after a free one: cap %d len %d; want the freed one", cap(c), len(c))
	}
	// A free buffer too small for the next message is dropped, not kept.
	small := append(p.buffer(10), "0123456789"...)
	p.sending(small, 1)
	p.sent(small)
	if c := p.buffer(1000); cap(c) < 1000 || &c[:1][0] == &small[0] {
		t.Fatalf("buffer(1000) over a 10-byte free one: cap %d, or the 10-byte one", cap(c))
	}
	if p.free.Len() != 0 {
		t.Fatalf("%d buffers free, want 0", p.free.Len())
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
	if p.free.Len() != maxFreePublished {
		t.Fatalf("%d buffers free, want the bound %d", p.free.Len(), maxFreePublished)
	}
	var kept [][]byte
	for range maxFreePublished {
		f := p.buffer(0)
		if cap(f) > maxPublishedBytes {
			t.Fatalf("a free buffer of %d bytes kept", cap(f))
		}
		kept = append(kept, f)
	}
	for _, f := range kept { // back, for close to let go of
		p.free.Put(f)
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
	if p.free.Len() != 0 || len(p.pending) != 0 {
		t.Fatalf("after close: %d free, %d pending; want none", p.free.Len(), len(p.pending))
	}
}
