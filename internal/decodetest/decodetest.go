// Package decodetest holds what the fuzz targets of the engine's decoders
// share. It imports nothing of the engine, so that the tests inside any
// package may use it.
package decodetest

import (
	"errors"
	"testing"
)

// Accepted runs decode on b, as a fuzz target does first: it reports false
// when decode refuses b, and fails the test unless the refusal wraps
// sentinel, the decoder's one error for bad input.
func Accepted[T any](t testing.TB, b []byte, decode func([]byte) (T, error), sentinel error) (T, bool) {
	t.Helper()
	v, err := decode(b)
	if err != nil {
		if !errors.Is(err, sentinel) {
			t.Fatalf("error %v does not wrap %v", err, sentinel)
		}
		return v, false
	}
	return v, true
}
