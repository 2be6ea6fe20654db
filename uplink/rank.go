package uplink

import (
	"cmp"
	"slices"
)

// Rank orders endpoints by rendezvous (highest random weight) hashing of
// id with each endpoint: the first is id's first choice, the second the one
// it moves to when the first is down, and so on. Every frontend computes its
// own order from its own id, so that frontends spread evenly over the
// middletiers, and a frontend's choice depends only on its id and the
// endpoint itself: adding an endpoint moves only the ids whose new first
// choice it is (about 1/n of them), and removing one moves only the ids
// that had it first, each to its own second choice. endpoints is not
// changed.
func Rank(id string, endpoints []string) []string {
	type ranked struct {
		w  uint64
		ep string
	}
	rs := make([]ranked, len(endpoints))
	for i, ep := range endpoints {
		rs[i] = ranked{weight(id, ep), ep}
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if c := cmp.Compare(b.w, a.w); c != 0 {
			return c
		}
		return cmp.Compare(a.ep, b.ep)
	})
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ep
	}
	return out
}

// weight is the rendezvous weight of endpoint for id: FNV-1a over both,
// separated by a byte neither holds, then the SplitMix64 finaliser, whose
// avalanche makes weights of names that differ in one character
// independent. It must not change from one version to the next: a fleet
// upgraded one frontend at a time would move its frontends twice.
func weight(id, endpoint string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * prime
	}
	h = (h ^ 0xff) * prime
	for i := 0; i < len(endpoint); i++ {
		h = (h ^ uint64(endpoint[i])) * prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
