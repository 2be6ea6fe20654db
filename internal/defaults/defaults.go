// Package defaults fills the fields of an Options value that stand for
// their defaults: the one rule, "zero fields mean their defaults", that
// every component's withDefaults applies.
package defaults

import "reflect"

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

// Fill sets every zero field of *o to the same field of d: the whole rule
// for an Options type whose DefaultOptions gives each default, so that its
// withDefaults states only what differs from the rule. T must be a struct.
func Fill[T any](o *T, d T) { fill(o, d, false) }

// FillPositive is Fill for an Options type where a negative number takes
// its default as zero does.
func FillPositive[T any](o *T, d T) { fill(o, d, true) }

func fill[T any](o *T, d T, positive bool) {
	v, dv := reflect.ValueOf(o).Elem(), reflect.ValueOf(d)
	for i := range v.NumField() {
		f := v.Field(i)
		if !f.CanSet() {
			continue
		}
		neg := false
		switch f.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			neg = f.Int() < 0
		case reflect.Float32, reflect.Float64:
			neg = f.Float() < 0
		}
		if f.IsZero() || positive && neg {
			f.Set(dv.Field(i))
		}
	}
}
