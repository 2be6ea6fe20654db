package feed

import "slices"

// seenIndexes is what was dispatched of one origin's entries: the indexes
// as ranges, in order. A frontend's entries are in order within one
// middletier's stream, so they make one range; across a failover they are
// in two streams, which the feed may follow at different distances, and an
// origin's later entries can come through one before its earlier ones come
// through the other. Those are not repeats.
type seenIndexes struct {
	r []span // ascending, neither overlapping nor touching
}

type span struct{ lo, hi uint64 }

// seenByOrigin is the indexes seen of each origin.
type seenByOrigin map[string]*seenIndexes

// add records (origin, index) and reports whether it was not yet recorded.
func (m seenByOrigin) add(origin string, index uint64) bool {
	s := m[origin]
	if s == nil {
		s = &seenIndexes{}
		m[origin] = s
	}
	return s.add(index)
}

// maxSpans bounds the ranges kept of an origin. Past it the two lowest
// are joined: what falls between them (entries lost for good, or late by
// more than maxSpans holes) is taken as dispatched.
const maxSpans = 16

// add records index and reports whether it was not yet recorded.
func (s *seenIndexes) add(index uint64) bool {
	// The first range whose end reaches index-1 or beyond.
	i, _ := slices.BinarySearchFunc(s.r, index, func(sp span, x uint64) int {
		if sp.hi+1 < x {
			return -1
		}
		return 1
	})
	switch {
	case i < len(s.r) && s.r[i].lo <= index && index <= s.r[i].hi:
		return false
	case i < len(s.r) && s.r[i].hi+1 == index:
		s.r[i].hi = index
		if i+1 < len(s.r) && s.r[i+1].lo == index+1 {
			s.r[i].hi = s.r[i+1].hi
			s.r = slices.Delete(s.r, i+1, i+2)
		}
	case i < len(s.r) && s.r[i].lo == index+1:
		s.r[i].lo = index
	default:
		s.r = slices.Insert(s.r, i, span{index, index})
		if len(s.r) > maxSpans {
			s.r[1].lo = s.r[0].lo
			s.r = slices.Delete(s.r, 0, 1)
		}
	}
	return true
}
