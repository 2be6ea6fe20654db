package zsock

import (
	"sync/atomic"

	"github.com/go-zeromq/zmq4"
)

// The frames every socket kind receives (Router's handler, Dealer.Recv,
// Sub.Recv) are read into buffers of frames released before them, where
// there are some (zmq4's patch 5, third_party/go-zeromq-zmq4).

// ReleaseFrame gives back the buffer of a frame a socket received, once
// the receiver keeps nothing of it (no slice, no string made without a
// copy): a later frame of about its size is read into it instead of
// allocating one. It must not be used afterwards. Frames never released
// are collected as garbage.
func ReleaseFrame(b []byte) { zmq4.ReleaseFrame(b) }

// PoisonReleasedFrames, for tests, has ReleaseFrame and Poison (so
// Buffers.Put) fill each buffer with 0xEE before it is used again: a frame
// or buffer used after its release then reads as garbage at once.
func PoisonReleasedFrames(on bool) {
	zmq4.PoisonReleasedFrames(on)
	poisoned.Store(on)
}

// Poison fills the whole of b, up to its capacity, with 0xEE while
// PoisonReleasedFrames is on, and does nothing otherwise. A free list calls
// it on each buffer given back to it.
func Poison(b []byte) {
	if !poisoned.Load() {
		return
	}
	b = b[:cap(b)]
	for i := range b {
		b[i] = 0xEE
	}
}

var poisoned atomic.Bool
