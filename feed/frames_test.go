package feed

import (
	"bytes"
	"fmt"
	"regexp"
	"runtime"
	"strconv"
	"sync"
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

// TestSharedFramesConcurrent: readers write and let go of frames while
// dispatch is still queueing them for others. A frame given back while a
// queue holds it is poisoned or built into again: its reader then sees it
// change, or a sequence number go back.
func TestSharedFramesConcurrent(t *testing.T) {
	p := newPublisher(t, []Subscription{{}, {}, {Devices: []string{"dev-00"}}, {}})
	seqRe := regexp.MustCompile(`"seq":(\d+)`)
	stop := make(chan struct{})
	errs := make(chan string, len(p.clients))
	report := func(msg string) {
		select {
		case errs <- msg:
		default:
		}
	}
	var wg sync.WaitGroup
	for _, c := range p.clients {
		wg.Go(func() {
			var last uint64
			for {
				select {
				case it := <-c.queue:
					b := bytes.Clone(it.frame.b)
					runtime.Gosched()
					if !bytes.Equal(b, it.frame.b) || !bytes.HasPrefix(b, []byte(`{"type":"message"`)) {
						report(fmt.Sprintf("frame changed or poisoned while queued: %.40q", b))
					}
					if m := seqRe.FindSubmatch(b); m != nil {
						seq, _ := strconv.ParseUint(string(m[1]), 10, 64)
						if seq <= last {
							report(fmt.Sprintf("seq %d after %d: a frame built into again while queued", seq, last))
						}
						last = seq
					}
					it.frame.release()
				case <-stop:
					for len(c.queue) > 0 {
						(<-c.queue).frame.release()
					}
					return
				}
			}
		})
	}
	for k := range 1000 {
		p.publish(k)
		if k%50 == 0 {
			runtime.Gosched()
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestFramesKeptBounded: frames given back are poisoned (in test
// binaries), at most keptFrames are kept, and none over maxKeptFrame.
func TestFramesKeptBounded(t *testing.T) {
	var p frames
	p.free = make(chan *sharedFrame, keptFrames)
	var made []*sharedFrame
	for range keptFrames + 10 {
		f := p.get()
		f.b = append(f.b, `{"type":"message"}`...)
		made = append(made, f)
	}
	big := p.get()
	big.b = make([]byte, maxKeptFrame+1)
	for _, f := range made {
		b := f.b
		f.release()
		if !bytes.Equal(b, bytes.Repeat([]byte{0xEE}, len(b))) {
			t.Fatalf("a frame given back reads %q, want it poisoned", b)
		}
	}
	if n := len(p.free); n != keptFrames {
		t.Fatalf("%d frames kept, want %d", n, keptFrames)
	}
	for range keptFrames {
		<-p.free
	}
	b := big.b
	big.release()
	if len(p.free) != 0 {
		t.Fatalf("a frame of %d bytes kept, want none over %d", cap(b), maxKeptFrame)
	}
	if b[0] != 0xEE {
		t.Fatal("a frame too large to keep is not poisoned")
	}
}

// TestNoticeThatDoesNotFit: a gap notice that finds a reader's queue full
// is told by the reader's next missed notice: the count it carries is
// added to the drops the next queued item reports. Before, it was dropped
// and not counted: the reader never learnt of the gap.
func TestNoticeThatDoesNotFit(t *testing.T) {
	p := newPublisher(t, []Subscription{{}})
	c := p.clients[0]
	for len(c.queue) < cap(c.queue) {
		p.publish(0)
	}
	c.mu.Lock()
	dropped := c.missed // the messages that did not fit
	c.mu.Unlock()
	p.s.hub.broadcast(missedFrame(7, "gap", "mt-1", 1, 7), 7, func() {})
	for len(c.queue) > 0 {
		it := <-c.queue
		if it.notice {
			t.Fatal("a notice queued in a full queue")
		}
		it.frame.release()
	}
	if got := c.caughtUp(); got != dropped+7 {
		t.Fatalf("the reader caught up with %d missed, want the %d messages dropped and the gap's 7", got, dropped)
	}
}

// TestAbandonCountsQueuedNotices: a reader closed for slowness is told in
// its last missed notice of everything it will not get, the records of a
// gap notice still in its queue too. Before, abandon counted the queued
// messages and drops but not what a queued notice told of.
func TestAbandonCountsQueuedNotices(t *testing.T) {
	p := newPublisher(t, []Subscription{{}})
	c := p.clients[0]
	p.publish(0)
	p.s.hub.broadcast(missedFrame(7, "gap", "mt-1", 1, 7), 7, func() {})
	p.publish(0)
	messages := len(c.queue) - 1 // all but the notice
	if c.missed != 0 || messages < 2 {
		t.Fatalf("%d messages queued, %d dropped: want a queue with room", messages, c.missed)
	}
	if got := c.abandon(); got != uint64(messages)+7 {
		t.Fatalf("abandon: %d missed, want the %d queued messages and the gap's 7", got, messages)
	}
}
