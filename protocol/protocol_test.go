package protocol

import (
	"slices"
	"testing"
	"time"
)

// The constants are the wire text of docs/protocol.md: a change here is a
// change of the protocol, and these tests say so.
func TestWireNames(t *testing.T) {
	if got := time.Unix(0, MinDeviceTime).UTC(); !got.Equal(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("MinDeviceTime is %v, want 2000-01-01", got)
	}
	want := []string{"invalid_json", "invalid_message", "too_large", "bad_timestamp",
		"device_mismatch", "rate_limited", "overloaded", "unauthorized"}
	if got := ErrorCodes(); !slices.Equal(got, want) {
		t.Fatalf("error codes %v, want %v", got, want)
	}
	ends := map[string]bool{"rate_limited": true, "overloaded": true, "unauthorized": true}
	for _, c := range want {
		if EndsConnection(c) != ends[c] {
			t.Errorf("EndsConnection(%s) = %v", c, !ends[c])
		}
	}
	for name, want := range map[string]bool{"id": true, "ts": true, "device": true, "Id": false, "temp": false, "": false} {
		if Reserved(name) != want {
			t.Errorf("Reserved(%q) = %v", name, !want)
		}
	}
	codes := []int{CloseGoingAway, ClosePolicyViolation, CloseMessageTooBig, CloseInternalError, CloseServiceRestart, CloseTryAgainLater}
	if !slices.Equal(codes, []int{1001, 1008, 1009, 1011, 1012, 1013}) {
		t.Fatalf("close codes %v", codes)
	}
}
