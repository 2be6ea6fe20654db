package middletier

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/ingest-io/ingest/internal/decodetest"
)

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := &state{Applied: 42, Origins: map[string]uint64{"fe-1.00ab": 40, "fe-2.00cd": 2}, Consumers: map[string]uint64{"storage": 30}}
	if err := writeState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := readState(dir)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("read %+v, %v", got, err)
	}
	// Damage anywhere is caught.
	b, _ := os.ReadFile(filepath.Join(dir, stateFile))
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x04
		if _, err := decodeState(c); !errors.Is(err, errStateDamaged) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
}

func TestStateMissingIsEmpty(t *testing.T) {
	st, err := readState(t.TempDir())
	if err != nil || len(st.Origins) != 0 || len(st.Consumers) != 0 || st.Applied != 0 {
		t.Fatalf("%+v %v", st, err)
	}
}

func FuzzState(f *testing.F) {
	good, _ := encodeState(&state{Applied: 1, Origins: map[string]uint64{"a": 1}, Consumers: map[string]uint64{"c": 1}})
	f.Add(good)
	f.Add([]byte("{}\n00000000\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, ok := decodetest.Accepted(t, b, decodeState, errStateDamaged)
		if !ok {
			return
		}
		re, err := encodeState(st)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeState(re)
		if err != nil || !reflect.DeepEqual(again, st) {
			t.Fatalf("state %+v does not survive re-encoding: %v", st, err)
		}
	})
}
