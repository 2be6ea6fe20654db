package storage

// FlattenOnePass and FlattenDecoded are Flatten's two ways, for the tests
// that hold them to one another.
var (
	FlattenOnePass = flattenOnePass
	FlattenDecoded = flattenDecoded
)
