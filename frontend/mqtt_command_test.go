package frontend

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/ingest-io/ingest/protocol"
)

// FuzzMQTTCommandAnswer: an answer published under devices/{id}/commands
// (the topic after devices/{id}/, and the payload) is taken or refused
// without a panic, a refusal with topic name invalid or payload format
// invalid and a reason. A taken one names its command in the topic, its
// payload is a JSON object, and it is the answer a WebSocket command_result
// frame of the same id, status and payload gives.
func FuzzMQTTCommandAnswer(f *testing.F) {
	f.Add("commands/c1/result", []byte(`{"status":"ok","payload":{"n":1}}`))
	f.Add("commands/c1/result", []byte(`{"__type":"command_result","id":"c1","status":"rejected"}`))
	f.Add("commands/c1/result", []byte(`{"id":"c2","status":"ok"}`))
	f.Add("commands//result", []byte(`{"status":"ok"}`))
	f.Add("commands/c1/x/result", []byte(`{"status":"ok"}`))
	f.Add("commands", []byte(`{"status":"ok"}`))
	f.Fuzz(func(t *testing.T, rest string, payload []byte) {
		r, code, why := decodeAnswer(rest, payload)
		if code != 0 {
			if code != rcTopicNameInvalid && code != rcPayloadInvalid || why == "" {
				t.Fatalf("%q %q refused with %#x %q", rest, payload, code, why)
			}
			return
		}
		if rest != "commands/"+r.ID+"/result" || r.Status == "" {
			t.Fatalf("%q %q taken as %+v", rest, payload, r)
		}
		var std map[string]json.RawMessage
		if err := json.Unmarshal(payload, &std); err != nil {
			t.Fatalf("%q taken, which encoding/json refuses: %v", payload, err)
		}
		ws, err := protocol.DecodeCommandResult(protocol.AppendCommandResult(nil, r.ID, r.Status, r.Payload))
		if err != nil || ws.ID != r.ID || ws.Status != r.Status || !bytes.Equal(ws.Payload, r.Payload) {
			t.Fatalf("%q %q taken as %+v; as a command_result frame %+v, %v", rest, payload, r, ws, err)
		}
	})
}
