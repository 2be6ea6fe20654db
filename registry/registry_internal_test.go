package registry

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The registry of the half-written tests, and what a poll reads of it
// mid-rewrite: the write has not reached the disabled device yet. It
// parses.
const (
	fullRegistry = "devices:\n  - id: tracker-001\n    group: fleet-north\n  - id: tracker-002\n    disabled: true\n"
	cutRegistry  = "devices:\n  - id: tracker-001\n    group: fleet-north\n"
)

// halfWritten returns a Registry of fullRegistry, which it polls itself
// (reload), and write, which writes its file.
func halfWritten(t *testing.T) (r *Registry, write func(string), path string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "devices.yaml")
	write = func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(fullRegistry)
	r, err := New(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, write, path
}

// TestHalfWrittenTwice: a file rewritten in place with the same content
// (config management re-rendering it, `cp` over it) passes through the
// same half-written prefix each time. A new content is applied only once
// two polls in a row read it: a prefix read once during an earlier rewrite
// is not applied at the first poll that reads it during a later one.
// Before, the poll that read the content in use again did not forget the
// prefix, and the later poll applied it: tracker-002, cut off, was
// enabled.
func TestHalfWrittenTwice(t *testing.T) {
	r, write, _ := halfWritten(t)
	// First rewrite in place: one poll catches the prefix, the next the
	// finished file (unchanged content).
	write(cutRegistry)
	r.reload()
	write(fullRegistry)
	r.reload()
	if !r.Disabled("tracker-002") {
		t.Fatal("setup: tracker-002 should be disabled")
	}
	// A later rewrite in place: one poll catches the same prefix.
	write(cutRegistry)
	r.reload()
	if !r.Disabled("tracker-002") || r.Len() != 2 {
		t.Fatalf("a half-written content read at ONE poll was applied: %d devices, tracker-002 disabled=%v (want 2, true)",
			r.Len(), r.Disabled("tracker-002"))
	}
}

// TestHalfWrittenAcrossAFailedRead: "two polls in a row" with a failed read
// between them are not in a row: a poll that could not read the file
// (removed and written again, as an editor or `rm && cat >` does) breaks
// the run. Before, the next poll that read the same half-written prefix
// applied it.
func TestHalfWrittenAcrossAFailedRead(t *testing.T) {
	r, write, path := halfWritten(t)
	write(cutRegistry) // a rewrite caught half-way by one poll
	r.reload()
	os.Remove(path) // the next rewrite removes the file first
	r.reload()
	write(cutRegistry) // and is caught half-way by one poll
	r.reload()
	if !r.Disabled("tracker-002") || r.Len() != 2 {
		t.Fatalf("a half-written content read at polls not in a row was applied: %d devices, tracker-002 disabled=%v (want 2, true)",
			r.Len(), r.Disabled("tracker-002"))
	}
}

// TestBadContentAgain: a content that does not parse is logged and counted
// once while it stays, and again when it comes back after a good one, or
// after a revert to the one in use.
// Before, it was remembered for good, and its second coming said nothing.
func TestBadContentAgain(t *testing.T) {
	r, write, _ := halfWritten(t)
	errors := func() float64 { return testutil.ToFloat64(r.m.reloads.WithLabelValues("error")) }
	const bad = "devices: [\n"
	write(bad)
	r.reload()
	r.reload()
	r.reload()
	if got := errors(); got != 1 {
		t.Fatalf("%v errors counted for one bad content, want 1", got)
	}
	write(cutRegistry)
	r.reload()
	r.reload()
	if r.Len() != 1 {
		t.Fatalf("the good content not applied: %d devices", r.Len())
	}
	write(bad)
	r.reload()
	r.reload()
	if got := errors(); got != 2 {
		t.Fatalf("%v errors counted once the bad content came back, want 2", got)
	}
	// Reverted to the content in use and written again (an operator who
	// retries the same edit, a pipeline that re-applies it): a new
	// attempt, told again, the registry in use kept. Before, the content
	// in use read again did not forget the bad one, and its second coming
	// was passed over without a word or a count.
	write(cutRegistry)
	r.reload()
	r.reload()
	write(bad)
	r.reload()
	r.reload()
	if got := errors(); got != 3 {
		t.Fatalf("%v errors counted once the bad content was written again after a revert, want 3", got)
	}
	if r.Len() != 1 {
		t.Fatalf("the registry in use changed: %d devices", r.Len())
	}
}
