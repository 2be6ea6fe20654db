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

func TestFill(t *testing.T) {
	type opts struct {
		Name  string
		N     int
		D     time.Duration
		List  []string
		Hook  func()
		local int
	}
	d := opts{Name: "d", N: 5, D: time.Second, List: []string{"x"}, local: 9}
	o := opts{N: -1, List: []string{"mine"}}
	Fill(&o, d)
	if o.Name != "d" || o.N != -1 || o.D != time.Second || o.List[0] != "mine" || o.local != 0 {
		t.Fatalf("Fill: %+v", o)
	}
	o = opts{N: -1, D: -time.Second, Name: "mine"}
	FillPositive(&o, d)
	if o.Name != "mine" || o.N != 5 || o.D != time.Second || o.List[0] != "x" {
		t.Fatalf("FillPositive: %+v", o)
	}
}
