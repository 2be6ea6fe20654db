package registry

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHalfWrittenTwice: a file rewritten in place with the same content
// (config management re-rendering it, `cp` over it) passes through the
// same half-written prefix each time. A new content is applied only once
// two polls in a row read it: a prefix read once during an earlier rewrite
// is not applied at the first poll that reads it during a later one.
// Before, the poll that read the content in use again did not forget the
// prefix, and the later poll applied it: tracker-002, cut off, was
// enabled.
func TestHalfWrittenTwice(t *testing.T) {
	const full = `devices:
  - id: tracker-001
    group: fleet-north
  - id: tracker-002
    disabled: true
`
	// What a poll reads mid-rewrite: the write has not reached the
	// disabled device yet. It parses.
	const prefix = `devices:
  - id: tracker-001
    group: fleet-north
`
	path := filepath.Join(t.TempDir(), "devices.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(full)
	r, err := New(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	// First rewrite in place: one poll catches the prefix, the next the
	// finished file (unchanged content).
	write(prefix)
	r.reload()
	write(full)
	r.reload()
	if !r.Disabled("tracker-002") {
		t.Fatal("setup: tracker-002 should be disabled")
	}
	// A later rewrite in place: one poll catches the same prefix.
	write(prefix)
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
	const full = "devices:\n  - id: tracker-001\n    group: fleet-north\n  - id: tracker-002\n    disabled: true\n"
	const prefix = "devices:\n  - id: tracker-001\n    group: fleet-north\n"
	path := filepath.Join(t.TempDir(), "devices.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(full)
	r, err := New(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	write(prefix) // a rewrite caught half-way by one poll
	r.reload()
	os.Remove(path) // the next rewrite removes the file first
	r.reload()
	write(prefix) // and is caught half-way by one poll
	r.reload()
	if !r.Disabled("tracker-002") || r.Len() != 2 {
		t.Fatalf("a half-written content read at polls not in a row was applied: %d devices, tracker-002 disabled=%v (want 2, true)",
			r.Len(), r.Disabled("tracker-002"))
	}
}
