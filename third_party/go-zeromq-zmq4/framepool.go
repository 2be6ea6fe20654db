// Copyright 2018 The go-zeromq Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package zmq4

// Patch of the ingest engine (README.ingest.md, patch 5): the buffers of
// frames a receiver is done with are read into again.
//
// Each frame a connection reads is a slice of its own, which Recv hands to
// the caller. A caller that is done with a frame, and keeps no slice of
// it, may give it back with ReleaseFrame; a later read of a frame of about
// its size takes it instead of allocating. Frames under minPooledFrame or
// over maxPooledFrame bytes are always allocated. A frame never released
// is left to the garbage collector, as upstream.

import (
	"math/bits"
	"sync/atomic"
)

const (
	minPooledFrame = 512     // smallest size class
	maxPooledFrame = 1 << 18 // largest size class: 256 KiB
	classes        = 10      // 512 B, 1 KiB, ..., 256 KiB
	classBytes     = 1 << 20 // what the free buffers of one class may hold
)

// freeFrames holds the released buffers of each size class: a buffer of
// class c has a capacity of exactly minPooledFrame<<c. Each holds up to
// classBytes of buffers, at least 4.
var freeFrames = func() (f [classes]chan []byte) {
	for c := range f {
		f[c] = make(chan []byte, max(4, classBytes/(minPooledFrame<<c)))
	}
	return f
}()

// frameClass returns the size class of a frame of n bytes: the smallest
// whose buffers hold n; ok is false outside the pooled sizes.
func frameClass(n int) (c int, ok bool) {
	if n < minPooledFrame || n > maxPooledFrame {
		return 0, false
	}
	return bits.Len(uint(n-1)) - bits.Len(minPooledFrame-1), true
}

// newFrame returns a slice of n bytes for a frame to be read into: a
// released buffer of its class if there is one.
func newFrame(n int) []byte {
	c, ok := frameClass(n)
	if !ok {
		return make([]byte, n)
	}
	select {
	case b := <-freeFrames[c]:
		return b[:n]
	default:
		return make([]byte, n, minPooledFrame<<c)
	}
}

// ReleaseFrame gives back the buffer of a frame that Recv returned, for a
// later read to reuse. The caller must not use b, nor any slice of it,
// afterwards, and releases a frame once, whole (b or b[:n], never a slice
// of it that starts later). A buffer whose capacity is not that of a size
// class is left to the garbage collector.
func ReleaseFrame(b []byte) {
	c, ok := frameClass(cap(b))
	if !ok || cap(b) != minPooledFrame<<c {
		return
	}
	if poison.Load() {
		b = b[:cap(b)]
		for i := range b {
			b[i] = poisonByte
		}
	}
	select {
	case freeFrames[c] <- b[:0]:
	default:
	}
}

// PoisonReleasedFrames, for tests, has ReleaseFrame fill each buffer with
// poisonByte before it keeps it: a frame used after its release then reads
// as garbage at once, rather than when a later read reuses its buffer.
func PoisonReleasedFrames(on bool) { poison.Store(on) }

var poison atomic.Bool

const poisonByte = 0xEE
