package lifecycle

import (
	"errors"
	"testing"
)

func TestRunOnceCloseOnce(t *testing.T) {
	var o Once
	if !o.Start() {
		t.Fatal("first Start refused")
	}
	if o.Start() {
		t.Fatal("second Start allowed")
	}
	calls := 0
	boom := errors.New("boom")
	release := func(ran bool) error {
		calls++
		if !ran {
			t.Error("release told Run never started")
		}
		return boom
	}
	if err := o.Close(release); err != boom {
		t.Fatalf("first Close: %v, want release's error", err)
	}
	if err := o.Close(release); err != nil || calls != 1 {
		t.Fatalf("second Close: err %v, release ran %d times", err, calls)
	}
}

func TestCloseBeforeRun(t *testing.T) {
	var o Once
	ranSeen := true
	o.Close(func(ran bool) error { ranSeen = ran; return nil })
	if ranSeen {
		t.Fatal("release told Run started")
	}
	if o.Start() {
		t.Fatal("Start allowed after Close")
	}
}
