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
	if !IsCommandResult([]byte(` { "__type" : "command_result"}`)) {
		t.Error("a command_result with spaces not taken for one")
	}
	// A frame led by "__type" with another value is data (a message with a
	// reserved member, which the frontend refuses and numbers as data).
	for _, data := range []string{`{"type":"command_result"}`, `[{"__type":"command_result"}]`, `{"a":1,"__type":"x"}`, ``,
		`{"__type":"reading","v":1}`, `{"__type":1}`, `{"__type"}`, `{"__type":"command_resul"}`, `{"__type":"command\u005fresult"}`} {
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

func TestDepth(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{`1`, 0}, {`"[{"`, 0}, {`[]`, 1}, {`{"a":[1,{"b":"]}\"["}]}`, 3}, {`[[],[[]]]`, 3}, {`"\\"`, 0}, {`["\\",[]]`, 2},
	} {
		if got := Depth([]byte(tc.in)); got != tc.want {
			t.Errorf("Depth(%s) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// FuzzDepth: Depth agrees with encoding/json's tokens on every valid JSON
// value.
func FuzzDepth(f *testing.F) {
	for _, s := range []string{`1`, `[]`, `{"a":[1,{"b":"]}\"["}]}`, `["\\",[]]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		want, depth := 0, 0
		dec := json.NewDecoder(bytes.NewReader(b))
		for {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			switch tok {
			case json.Delim('['), json.Delim('{'):
				depth++
				want = max(want, depth)
			case json.Delim(']'), json.Delim('}'):
				depth--
			}
		}
		if got := Depth(b); got != want {
			t.Fatalf("Depth(%q) = %d, encoding/json %d", b, got, want)
		}
	})
}
