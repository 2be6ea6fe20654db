package feed

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/registry"
)

func FuzzDecodeSubscribe(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe"}`,
		`{"type":"subscribe","devices":["a","b"],"prefixes":["truck-"],"groups":["north"]}`,
		`{"type":"subscribe","from":{"mt-0":1235}}`,
		`{"type":"subscribe","devices":[""]}`,
		`{"type":"subscribe"} {}`,
		`{"type":"subscribe","from":{"mt-0":0}}`,
		`{"type":"subscribe","devices":null,"from":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSubscribe(b, 8)
		if err != nil {
			if !errors.Is(err, ErrInvalidSubscribe) {
				t.Fatalf("error %v does not wrap ErrInvalidSubscribe", err)
			}
			return
		}
		if len(s.Devices)+len(s.Prefixes)+len(s.Groups) > 8 {
			t.Fatalf("accepted %d filters", len(s.Devices)+len(s.Prefixes)+len(s.Groups))
		}
		// What was accepted encodes back to a frame that decodes the same.
		re, err := json.Marshal(struct {
			Type string `json:"type"`
			*Subscription
		}{"subscribe", s})
		if err != nil {
			t.Fatal(err)
		}
		s2, err := DecodeSubscribe(re, 8)
		if err != nil {
			t.Fatalf("%s re-encoded as %s, which does not decode: %v", b, re, err)
		}
		norm := func(s *Subscription) *Subscription {
			c := *s
			for _, l := range []*[]string{&c.Devices, &c.Prefixes, &c.Groups} {
				if len(*l) == 0 {
					*l = nil
				}
			}
			if len(c.From) == 0 {
				c.From = nil
			}
			return &c
		}
		if !reflect.DeepEqual(norm(s), norm(s2)) {
			t.Fatalf("%s decoded as %+v, re-decoded as %+v", b, s, s2)
		}
		// The filter matches what the subscription names.
		fl := newFilter(s)
		for _, d := range s.Devices {
			if !fl.match(d, "") {
				t.Fatalf("filter does not match device %q", d)
			}
		}
		for _, g := range s.Groups {
			if !fl.match("\x00unlisted", g) {
				t.Fatalf("filter does not match group %q", g)
			}
		}
	})
}

// FuzzMessageFrame: whatever ids, labels and names a record carries, its
// frame is valid JSON that says them back.
func FuzzMessageFrame(f *testing.F) {
	f.Add("dev-1", "north", "driver", "alice", "mt-0", "fe.01", int64(1748736000123456789), false)
	f.Add("\"\\\n\x00\xff\u2028", "<&>", "k\t", "\x7f", "m", "o", int64(-1), true)
	f.Fuzz(func(t *testing.T, device, group, k, v, mt, origin string, ts int64, command bool) {
		switch k {
		case "name", "group", "site", "type":
			return // the registry refuses these label names
		}
		e := envelope.Envelope{Device: device, Received: ts, Payload: []byte(`{"a":[1,"x"]}`)}
		dev := registry.Device{Group: group, Labels: map[string]string{k: v}}
		b := appendMessage(nil, &e, &dev, mt, 7, origin, 9, command)
		var got struct {
			Type       string            `json:"type"`
			Command    json.RawMessage   `json:"command"`
			Device     string            `json:"device"`
			Time       int64             `json:"time"`
			Labels     map[string]string `json:"labels"`
			Middletier string            `json:"middletier"`
			Origin     string            `json:"origin"`
			Payload    json.RawMessage   `json:"payload"`
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("frame %q is not JSON: %v", b, err)
		}
		valid := func(s string) string { return string([]rune(s)) } // invalid UTF-8 becomes U+FFFD
		body, typ := got.Payload, "message"
		if command {
			body, typ = got.Command, "command"
		}
		if got.Device != valid(device) || got.Middletier != valid(mt) || got.Origin != valid(origin) ||
			string(body) != `{"a":[1,"x"]}` || got.Type != typ || got.Time != floorMillis(ts) {
			t.Fatalf("frame %s", b)
		}
		if group != "" && got.Labels["group"] != valid(group) {
			t.Fatalf("frame %s lost the group", b)
		}
	})
}
