package feed

import (
	"math/rand/v2"
	"testing"
)

// TestSeenIndexes: every index is new once, in any order that leaves at
// most maxSpans holes, and past maxSpans ranges the lowest holes are taken
// as seen.
func TestSeenIndexes(t *testing.T) {
	var s seenIndexes
	const n = 2000
	// Out of order within blocks of 8: never more than maxSpans holes.
	var order []int
	for b := 0; b < n; b += 8 {
		for _, i := range rand.Perm(8) {
			order = append(order, b+i)
		}
	}
	for _, i := range order {
		if !s.add(uint64(i + 1)) {
			t.Fatalf("%d taken for a repeat", i+1)
		}
		if s.add(uint64(i + 1)) {
			t.Fatalf("%d not taken for a repeat", i+1)
		}
		if len(s.r) > maxSpans {
			t.Fatalf("%d ranges", len(s.r))
		}
	}
	if len(s.r) != 1 || s.r[0] != (span{1, n}) {
		t.Fatalf("ranges %v after 1..%d", s.r, n)
	}
	var h seenIndexes
	for i := uint64(1); i <= 2*maxSpans+1; i += 2 { // 1, 3, 5, …: a hole after each
		h.add(i)
	}
	if len(h.r) != maxSpans || h.r[0].lo != 1 || h.add(2) {
		t.Fatalf("past maxSpans the lowest holes are joined: %v", h.r)
	}
	if !h.add(2*maxSpans) || len(h.r) != maxSpans-1 {
		t.Fatalf("a late index in a kept hole: %v", h.r)
	}
}
