package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ingest-io/ingest/internal/decodetest"
)

func TestCommandFrame(t *testing.T) {
	b := AppendCommand(nil, "c\"1", "set-interval", []byte(`{"s":5}`))
	f, err := DecodeServerFrame(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != TypeCommand || string(f.ID) != `"c\"1"` || f.Name != "set-interval" || string(f.Payload) != `{"s":5}` {
		t.Fatalf("decoded %+v", f)
	}
	if f, err := DecodeServerFrame(AppendCommand(nil, "c", "n", nil)); err != nil || string(f.Payload) != "null" {
		t.Fatalf("no payload: %+v, %v", f, err)
	}
	for _, bad := range []string{
		`{"type":"command","name":"n"}`,
		`{"type":"command","id":7,"name":"n"}`,
		`{"type":"command","id":"c"}`,
		`{"type":"command","id":"c","name":"n","name":"m"}`,
		`{"type":"command","id":"` + strings.Repeat("x", MaxCommandIDBytes+1) + `","name":"n"}`,
	} {
		if _, err := DecodeServerFrame([]byte(bad)); !errors.Is(err, ErrInvalidServerFrame) {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestCommandResult(t *testing.T) {
	b := AppendCommandResult(nil, "c1", StatusOK, []byte(`{"applied":true}`))
	if !IsCommandResult(b) {
		t.Fatalf("%s is not a command_result", b)
	}
	r, err := DecodeCommandResult(b)
	if err != nil || r.ID != "c1" || r.Status != StatusOK || string(r.Payload) != `{"applied":true}` {
		t.Fatalf("decoded %+v, %v", r, err)
	}
	if r, err := DecodeCommandResult([]byte(` { "__type" : "command_result", "status":"error", "id":"x", "extra":[1]} `)); err != nil || r.Payload != nil {
		t.Fatalf("without payload: %+v, %v", r, err)
	}
	for _, data := range []string{`{"type":"command_result"}`, `[{"__type":"command_result"}]`, `{"a":1,"__type":"x"}`, ``} {
		if IsCommandResult([]byte(data)) {
			t.Errorf("%s taken for a command_result", data)
		}
	}
	for _, bad := range []string{
		`{"__type":"command_result","id":"c1"}`,
		`{"__type":"command_result","status":"ok"}`,
		`{"__type":"other","id":"c1","status":"ok"}`,
		`{"__type":"command_result","id":"","status":"ok"}`,
		`{"__type":"command_result","id":1,"status":"ok"}`,
		`{"__type":"command_result","id":"c","status":"o\nk"}`,
		`{"__type":"command_result","id":"c","id":"d","status":"ok"}`,
		`{"__type":"command_result","id":"c","status":"ok","payload":` + `"` + strings.Repeat("x", MaxCommandPayloadBytes) + `"}`,
		`{"__type":"command_result","id":"c","status":"ok"} x`,
		`{"__type":"command_result","id":"c","status":"ok"`,
	} {
		if _, err := DecodeCommandResult([]byte(bad)); !errors.Is(err, ErrInvalidCommandResult) {
			t.Errorf("%.80s accepted: %v", bad, err)
		}
	}
}

// FuzzDecodeCommandResult: any input is decoded or refused without a
// panic; an accepted frame is valid JSON whose members encoding/json reads
// the same, and it encodes back to a frame that decodes the same.
func FuzzDecodeCommandResult(f *testing.F) {
	f.Add(AppendCommandResult(nil, "c1", StatusOK, []byte(`{"a":[1,2]}`)))
	f.Add([]byte(`{"__type":"command_result","id":"c\u0031","status":"rejected"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := decodetest.Accepted(t, b, DecodeCommandResult, ErrInvalidCommandResult)
		if !ok {
			return
		}
		var std map[string]json.RawMessage
		if err := json.Unmarshal(b, &std); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", b, err)
		}
		var id string
		if json.Unmarshal(std["id"], &id) != nil || id != r.ID {
			t.Fatalf("%q: id %q, encoding/json reads %s", b, r.ID, std["id"])
		}
		again := AppendCommandResult(nil, r.ID, r.Status, r.Payload)
		r2, err := DecodeCommandResult(again)
		if err != nil || r2.ID != r.ID || r2.Status != r.Status || !bytes.Equal(r2.Payload, r.Payload) {
			t.Fatalf("%q decoded as %+v, encoded again as %q: %+v, %v", b, r, again, r2, err)
		}
	})
}

func TestCommandAnswer(t *testing.T) {
	for _, ok := range []string{
		`{"status":"ok"}`,
		`{"status":"ok","payload":{"applied":true}}`,
		`{"id":"c1","status":"rejected"}`,
		string(AppendCommandResult(nil, "c1", StatusOK, []byte(`[1]`))),
	} {
		r, err := DecodeCommandAnswer([]byte(ok), "c1")
		if err != nil || r.ID != "c1" || r.Status == "" {
			t.Errorf("%s: %+v, %v", ok, r, err)
		}
	}
	for _, bad := range []struct{ b, id string }{
		{`{"status":"ok"}`, ""},
		{`{"status":"ok"}`, strings.Repeat("c", MaxCommandIDBytes+1)},
		{`{"status":"ok"}`, "c\xff"},
		{`{"payload":1}`, "c1"},
		{`{"id":"c2","status":"ok"}`, "c1"},
		{`{"__type":"command","status":"ok"}`, "c1"},
		{`{"status":"ok","status":"ok"}`, "c1"},
		{`"ok"`, "c1"},
		{``, "c1"},
	} {
		if _, err := DecodeCommandAnswer([]byte(bad.b), bad.id); !errors.Is(err, ErrInvalidCommandResult) {
			t.Errorf("%s for %q accepted: %v", bad.b, bad.id, err)
		}
	}
}
