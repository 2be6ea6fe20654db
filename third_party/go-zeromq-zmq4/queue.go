// Copyright 2019 The go-zeromq Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package zmq4

// Patch of the ingest engine: the queue is a ring of Msg values that grows
// by doubling and keeps its storage while it is in use, instead of a list of
// 512-slot []interface{} blocks. Upstream allocated a new 8 KiB block for a
// Push into an empty queue and dropped it at the Pop that emptied it, and
// boxed every Msg in an interface: at a low publishing rate every PUB send
// allocated 8 KiB (README.ingest.md).

// innerCap is the most slots an empty queue keeps; a larger ring, grown by
// a burst, is let go once the burst has drained. (Upstream it was the size
// of a block; its test still pushes past it.)
const innerCap = 512

type Queue struct {
	buf  []Msg // ring; len(buf) is 0 or a power of two
	head int   // index of the oldest message
	len  int
}

func NewQueue() *Queue {
	return &Queue{}
}

func (q *Queue) Len() int {
	return q.len
}

func (q *Queue) Init() {
	clear(q.buf)
	q.head, q.len = 0, 0
	if len(q.buf) > innerCap {
		q.buf = nil
	}
}

func (q *Queue) Push(val Msg) {
	if q.len == len(q.buf) {
		q.grow()
	}
	q.buf[(q.head+q.len)&(len(q.buf)-1)] = val
	q.len++
}

func (q *Queue) grow() {
	buf := make([]Msg, max(16, 2*len(q.buf)))
	n := copy(buf, q.buf[q.head:])
	copy(buf[n:], q.buf[:q.head])
	q.buf, q.head = buf, 0
}

func (q *Queue) Peek() (Msg, bool) {
	if q.len == 0 {
		return Msg{}, false
	}
	return q.buf[q.head], true
}

func (q *Queue) Pop() {
	if q.len == 0 {
		panic("attempting to Pop on an empty Queue")
	}
	q.buf[q.head] = Msg{} // remove ref to popped element
	q.head = (q.head + 1) & (len(q.buf) - 1)
	q.len--
	if q.len == 0 {
		q.head = 0
		if len(q.buf) > innerCap {
			q.buf = nil
		}
	}
}
