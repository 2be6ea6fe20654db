package defaults

import (
	"testing"
	"time"
)

func TestZero(t *testing.T) {
	s, n, d := "", -1, time.Duration(0)
	Zero(&s, "x")
	Zero(&n, 5)
	Zero(&d, time.Second)
	if s != "x" || n != -1 || d != time.Second {
		t.Fatalf("got %q %d %v", s, n, d)
	}
	Zero(&s, "y")
	if s != "x" {
		t.Fatalf("a set field changed to %q", s)
	}
}

func TestPositive(t *testing.T) {
	a, b, c := 0, -3, 7
	Positive(&a, 64)
	Positive(&b, 64)
	Positive(&c, 64)
	if a != 64 || b != 64 || c != 7 {
		t.Fatalf("got %d %d %d", a, b, c)
	}
}

func TestOrNone(t *testing.T) {
	a, b, c := time.Duration(0), -time.Millisecond, time.Second
	OrNone(&a, 5*time.Millisecond)
	OrNone(&b, 5*time.Millisecond)
	OrNone(&c, 5*time.Millisecond)
	if a != 5*time.Millisecond || b != 0 || c != time.Second {
		t.Fatalf("got %v %v %v", a, b, c)
	}
}
