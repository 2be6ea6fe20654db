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
	want := []string{"invalid_json", "invalid_message", "too_large", "too_many_fields", "invalid_field",
		"bad_timestamp", "device_mismatch", "rate_limited", "overloaded", "unauthorized"}
	if got := ErrorCodes(); !slices.Equal(got, want) {
		t.Fatalf("error codes %v, want %v", got, want)
	}
	rules := []string{"too_many_fields", "name_too_long", "name_reserved", "name_invalid", "string_too_long", "string_invalid"}
	if got := FieldRules(); !slices.Equal(got, rules) {
		t.Fatalf("field rules %v, want %v", got, rules)
	}
	if d := DefaultLimits(); d != (Limits{MaxMessages: 500, MaxMessageBytes: 64 << 10, MaxFields: 1000, MaxNameBytes: 256, MaxStringBytes: 1024}) {
		t.Fatalf("default limits %+v", d)
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
