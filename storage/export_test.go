package storage

import "hash/maphash"

// FlattenOnePass and FlattenDecoded are Flatten's two ways, for the tests
// that hold them to one another.
var (
	FlattenOnePass = flattenOnePass
	FlattenDecoded = flattenDecoded
)

// ApplyEveryField is Limiter.Apply without its shortcut for points whose
// fields are all known (Limiter.known).
func (l *Limiter) ApplyEveryField(points []Point) { l.apply(points, false) }

// Known is Limiter.known.
func (l *Limiter) Known(p *Point) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var h maphash.Hash
	h.SetSeed(l.seed)
	return l.known(&h, p)
}

// FillPoint is fillPoint, which the storage writer makes its points with.
var FillPoint = fillPoint
