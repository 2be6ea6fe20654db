package feed

import (
	"bytes"
	"testing"
)

// TestSharedFrames: a device message's frame is shared by every reader
// that takes it and kept for a later message only once the last of them
// has let go of it; until then it holds its message. A frame kept is
// poisoned (testkit.Main), so one given back early reads as garbage here.
func TestSharedFrames(t *testing.T) {
	p := newPublisher(t, []Subscription{{}, {}, {Devices: []string{"dev-00"}}})
	all, also, one := p.clients[0], p.clients[1], p.clients[2]
	free := &p.s.hub.frames
	p.publish(0)
	if n := len(all.queue); n != 100 {
		t.Fatalf("%d frames queued for a reader of every device, want 100", n)
	}
	if n := len(one.queue); n != 5 {
		t.Fatalf("%d frames queued for a reader of dev-00, want 5", n)
	}
	want := make(map[*sharedFrame][]byte)
	drain := func(c *client) {
		for len(c.queue) > 0 {
			it := <-c.queue
			if w, ok := want[it.frame]; !ok {
				want[it.frame] = bytes.Clone(it.frame.b)
			} else if !bytes.Equal(it.frame.b, w) {
				t.Fatalf("frame changed before its last reader wrote it: %q, want %q", it.frame.b, w)
			}
			it.frame.release()
		}
	}
	drain(all)
	if n := len(free.free); n != 0 {
		t.Fatalf("%d frames kept while another reader has them queued, want 0", n)
	}
	drain(one)
	if n := len(free.free); n != 0 {
		t.Fatalf("%d frames kept while another reader has them queued, want 0", n)
	}
	for f, w := range want {
		if !bytes.HasPrefix(w, []byte(`{"type":"message"`)) {
			t.Fatalf("frame %q is not a message", w)
		}
		if f.refs.Load() != 1 {
			t.Fatalf("frame with %d references after two of three readers, want 1", f.refs.Load())
		}
	}
	drain(also)
	if n := len(free.free); n != 100 {
		t.Fatalf("%d frames kept once every reader wrote them, want 100", n)
	}

	// The next messages are built into the frames kept.
	p.publish(1)
	var held []*sharedFrame
	for len(all.queue) > 0 {
		it := <-all.queue
		if _, ok := want[it.frame]; !ok {
			t.Fatal("a new frame made while kept ones were free")
		}
		held = append(held, it.frame)
	}
	abandoned := one.abandon() + also.abandon()
	if abandoned != 105 {
		t.Fatalf("abandon counted %d messages, want 105", abandoned)
	}
	if n := len(free.free); n != 0 {
		t.Fatalf("%d frames kept while a reader holds them, want 0", n)
	}
	for _, f := range held {
		f.release()
	}
	if n := len(free.free); n != 100 {
		t.Fatalf("%d frames kept once the readers abandoned or wrote them, want 100", n)
	}
}
