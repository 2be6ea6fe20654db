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

// PoisonReleasedFrames, for tests, has ReleaseFrame and Buffers.Put fill
// each buffer with 0xEE before it is used again: a frame or buffer used
// after its release then reads as garbage at once.
func PoisonReleasedFrames(on bool) {
	zmq4.PoisonReleasedFrames(on)
	poisoned.Store(on)
}

// Poisoned reports whether PoisonReleasedFrames is on: other free lists of
// buffers poison what they keep too.
func Poisoned() bool { return poisoned.Load() }

var poisoned atomic.Bool
