// Package defaults fills the fields of an Options value that stand for
// their defaults: the one rule, "zero fields mean their defaults", that
// every component's withDefaults applies.
package defaults

// Zero sets *v to def if *v is zero. A negative value stays, for the
// caller to refuse.
func Zero[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Positive sets *v to def unless *v is above zero: for a bound where a
// negative means the default as zero does.
func Positive[T signed](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// signed are the kinds of number a bound is: counts, sizes, durations.
type signed interface {
	~int | ~int32 | ~int64 | ~float64
}

// OrNone sets *v to def if *v is zero, and to zero if it is below: for a
// delay where a negative asks for none.
func OrNone[T signed](v *T, def T) {
	switch {
	case *v == 0:
		*v = def
	case *v < 0:
		*v = 0
	}
}
