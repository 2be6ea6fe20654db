package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ingest-io/ingest/internal/decodetest"
)

func TestAppendServerFrames(t *testing.T) {
	for _, tc := range []struct {
		got  []byte
		want string
	}{
		{AppendAck(nil, 42, []byte(`17,"a-18"`)), `{"type":"ack","seq":42,"ids":[17,"a-18"]}`},
		{AppendAck(nil, 3, nil), `{"type":"ack","seq":3}`},
		{AppendError(nil, CodeBadTimestamp, 42, 1, []byte(`"a-19"`), 0, `"ts" is before 2000-01-01 (milliseconds expected)`),
			`{"type":"error","code":"bad_timestamp","seq":42,"index":1,"id":"a-19","message":"\"ts\" is before 2000-01-01 (milliseconds expected)"}`},
		{AppendError(nil, CodeInvalidJSON, 3, -1, nil, 0, "unterminated object at end of frame"),
			`{"type":"error","code":"invalid_json","seq":3,"message":"unterminated object at end of frame"}`},
		{AppendError(nil, CodeOverloaded, 7, -1, nil, 1000, "a\\b\x01\n"),
			`{"type":"error","code":"overloaded","seq":7,"retry_after_ms":1000,"message":"a\\b\u0001\u000a"}`},
		{AppendRefusal(nil, CodeUnauthorized, "missing bearer token"),
			`{"type":"error","code":"unauthorized","message":"missing bearer token"}`},
	} {
		if string(tc.got) != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
		if !json.Valid(tc.got) {
			t.Errorf("%s is not valid JSON", tc.got)
		}
	}
}

func TestAppendServerFramesAllocateNothing(t *testing.T) {
	buf := make([]byte, 0, 256)
	ids := []byte(`1,2,"x"`)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendAck(buf[:0], 1<<40, ids)
		buf = AppendError(buf[:0], CodeRateLimited, 9, 3, ids[:1], 250, "over the device rate limit")
	}); n != 0 {
		t.Fatalf("%v allocations per ack and error", n)
	}
}

func TestDecodeServerFrame(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ServerFrame
	}{
		{`{"type":"ack","seq":42,"ids":[17,"a-18","a-19"]}`, ServerFrame{Type: TypeAck, Seq: 42, IDs: []byte(`17,"a-18","a-19"`), Index: -1}},
		{` {"seq":18446744073709551615 , "type" : "ack"} `, ServerFrame{Type: TypeAck, Seq: 1<<64 - 1, Index: -1}},
		{`{"type":"error","code":"bad_timestamp","seq":42,"index":1,"id":"a-19","message":"\"ts\" is before 2000-01-01"}`,
			ServerFrame{Type: TypeError, Code: CodeBadTimestamp, Seq: 42, Index: 1, ID: []byte(`"a-19"`), Message: `"ts" is before 2000-01-01`}},
		{`{"type":"error","code":"overloaded","seq":7,"retry_after_ms":1000,"message":"full"}`,
			ServerFrame{Type: TypeError, Code: CodeOverloaded, Seq: 7, Index: -1, RetryAfter: time.Second, Message: "full"}},
		{`{"type":"error","code":"unauthorized","message":"missing bearer token"}`, // a handshake's body
			ServerFrame{Type: TypeError, Code: CodeUnauthorized, Index: -1, Message: "missing bearer token"}},
		{`{"type":"error","code":"some_new_code","seq":1,"id":-1.5e3,"later":{"x":[1]}}`, // unknown code and member
			ServerFrame{Type: TypeError, Code: "some_new_code", Seq: 1, Index: -1, ID: []byte(`-1.5e3`)}},
		{`{"type":"notice","id":"c1","payload":{"on":true}}`, ServerFrame{Type: "notice", Index: -1, ID: []byte(`"c1"`), Payload: []byte(`{"on":true}`)}}, // a type this version does not know
		{`{"type":"command","id":"c1","name":"relay","payload":{"on":true}}`, ServerFrame{Type: TypeCommand, Index: -1, ID: []byte(`"c1"`), Name: "relay", Payload: []byte(`{"on":true}`)}},
		{`{"\u0074ype":"\u0061ck","seq":1}`, ServerFrame{Type: TypeAck, Seq: 1, Index: -1}},
	} {
		got, err := DecodeServerFrame([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\ngot  %+v\nwant %+v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{
		``, `[]`, `"ack"`, `null`, `{}`, `{"seq":1}`, `{"type":"ack"}`, `{"type":1,"seq":1}`,
		`{"type":"ack","seq":-1}`, `{"type":"ack","seq":1.5}`, `{"type":"ack","seq":1e3}`, `{"type":"ack","seq":"1"}`,
		`{"type":"ack","seq":18446744073709551616}`, `{"type":"ack","seq":1,"seq":2}`, `{"type":"ack","type":"ack","seq":1}`,
		`{"type":"ack","seq":1,"ids":17}`, `{"type":"error","code":5}`, `{"type":"error","message":null}`,
		`{"type":"error","index":-1}`, `{"type":"error","index":2147483648}`, `{"type":"error","id":true}`,
		`{"type":"error","retry_after_ms":9223372036855}`, `{"type":"ack","seq":1}x`, `{"type":"ack","seq":1,}`,
		`{"type":"ack","seq":1`, "{\"type\":\"a\xffck\",\"seq\":1}", `{"type":"ack","seq":01}`,
		`{"t\u0079pe":"ack","type":"ack","seq":1}`,
		`{"type":"command","id":"c1","name":"n","payload":"` + strings.Repeat("x", MaxCommandPayloadBytes) + `"}`,
	} {
		if f, err := DecodeServerFrame([]byte(bad)); !errors.Is(err, ErrInvalidServerFrame) {
			t.Errorf("%q accepted as %+v (%v)", bad, f, err)
		}
	}
}

func TestDecodeAckAllocatesNothing(t *testing.T) {
	b := AppendAck(nil, 123456, []byte(`1,"two",3`))
	var f ServerFrame
	if n := testing.AllocsPerRun(100, func() {
		var err error
		if f, err = DecodeServerFrame(b); err != nil {
			panic(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per ack", n)
	}
	if f.Type != TypeAck || f.Seq != 123456 {
		t.Fatalf("decoded %+v", f)
	}
}

// FuzzDecodeServerFrame: any input is decoded or refused without a panic; an
// accepted frame is valid JSON, and an ack or error frame encodes back
// (with the encoders the server uses) to a frame that decodes the same.
func FuzzDecodeServerFrame(f *testing.F) {
	for _, s := range []string{
		string(AppendAck(nil, 42, []byte(`17,"a-18"`))),
		string(AppendError(nil, CodeBadTimestamp, 42, 1, []byte(`"a-19"`), 0, `"ts" is before 2000`)),
		string(AppendError(nil, CodeOverloaded, 3, -1, nil, 1000, "full")),
		string(AppendRefusal(nil, CodeUnauthorized, "token expired")),
		`{"type":"command","id":"c1","payload":{"a":[1,{"b":null}]}}`,
		string(AppendCommand(nil, "c-1", "reboot", []byte(`{"delay":[1,2]}`))), `{"\u0074ype":"ack","seq":1}`, `[]`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, ok := decodetest.Accepted(t, b, DecodeServerFrame, ErrInvalidServerFrame)
		if !ok {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		var std map[string]any
		if err := json.Unmarshal(b, &std); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", b, err)
		}
		if std["type"] != fr.Type {
			t.Fatalf("%q: type %q, encoding/json reads %v", b, fr.Type, std["type"])
		}
		var again []byte
		switch fr.Type {
		case TypeAck:
			again = AppendAck(nil, fr.Seq, fr.IDs)
		case TypeError:
			again = AppendError(nil, fr.Code, fr.Seq, fr.Index, fr.ID, fr.RetryAfter.Milliseconds(), fr.Message)
		case TypeCommand:
			var id string
			if err := json.Unmarshal(fr.ID, &id); err != nil {
				t.Fatalf("%q: command id %q: %v", b, fr.ID, err)
			}
			again = AppendCommand(nil, id, fr.Name, fr.Payload)
			fr2, err := DecodeServerFrame(again)
			if err != nil {
				t.Fatalf("%q encoded again as %q: %v", b, again, err)
			}
			var s1, s2 any
			if fr.Payload != nil {
				json.Unmarshal(fr.Payload, &s1)
			}
			json.Unmarshal(fr2.Payload, &s2)
			if fr2.Name != fr.Name || !reflect.DeepEqual(s1, s2) {
				t.Fatalf("%q decoded as %+v, encoded again as %q, decoded as %+v", b, fr, again, fr2)
			}
			return
		default:
			return
		}
		fr2, err := DecodeServerFrame(again)
		if err != nil {
			t.Fatalf("%q encoded again as %q: %v", b, again, err)
		}
		if len(fr.IDs) == 0 && len(fr2.IDs) == 0 {
			fr.IDs, fr2.IDs = nil, nil
		}
		if fr.Type != fr2.Type || fr.Seq != fr2.Seq || !bytes.Equal(fr.IDs, fr2.IDs) || fr.Code != fr2.Code ||
			fr.Index != fr2.Index || !bytes.Equal(fr.ID, fr2.ID) || fr.RetryAfter != fr2.RetryAfter || fr.Message != fr2.Message {
			t.Fatalf("%q decoded as %+v, encoded again as %q, decoded as %+v", b, fr, again, fr2)
		}
	})
}
