package wire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/ingest-io/ingest/wire"
)

// Every state's event says the command back, with the latency to its
// change for every state but queued and the answer for an answered one.
func TestCommandEventRoundTrip(t *testing.T) {
	base := wire.Command{ID: "c01", Device: "d", Name: "set \"interval\"", Created: 1_748_736_000_123_456_789}
	for s := wire.StateQueued; s <= wire.StateCancelled; s++ {
		c := base
		c.State = s
		switch {
		case s == wire.StateSent:
			c.Sent = c.Created + 2_500_000
		case s.Final():
			c.Sent, c.Done = c.Created+1e6, c.Created+40_000_000
		}
		if s == wire.StateAcknowledged || s == wire.StateFailed {
			c.Status, c.Result = "ok", []byte(`{"v":[1,2]}`)
		}
		b := wire.AppendCommandEvent([]byte("x"), &c)
		if b[0] != 'x' {
			t.Fatal("dst not kept")
		}
		ev, err := wire.DecodeCommandEvent(b[1:])
		if err != nil {
			t.Fatalf("%s: %s: %v", s, b[1:], err)
		}
		if ev.ID != c.ID || ev.Name != c.Name || ev.State != s.String() || ev.Created != 1_748_736_000_123 || ev.Status != c.Status ||
			!bytes.Equal(ev.Result, c.Result) {
			t.Fatalf("%s: decoded %+v from %s", s, ev, b[1:])
		}
		switch {
		case s == wire.StateQueued && ev.LatencyMS != nil:
			t.Fatalf("queued with a latency: %s", b[1:])
		case s == wire.StateSent && (ev.LatencyMS == nil || *ev.LatencyMS != 2.5):
			t.Fatalf("sent: %s", b[1:])
		case s.Final() && (ev.LatencyMS == nil || *ev.LatencyMS != 40):
			t.Fatalf("%s: %s", s, b[1:])
		}
	}
}

func TestDecodeCommandEventRefuses(t *testing.T) {
	long := strings.Repeat("x", 256)
	for _, b := range []string{
		``, `[]`, `null`, `"x"`, `{`, `{"id":"c","name":"n","state":"queued"} {}`,
		`{"name":"n","state":"queued"}`,
		`{"id":"c","state":"queued"}`,
		`{"id":"c","name":"n"}`,
		`{"id":"c","name":"n","state":"gone"}`,
		`{"id":"` + long + `","name":"n","state":"queued"}`,
		`{"id":"c","name":"` + long + `","state":"queued"}`,
		`{"id":"c","name":"n","state":"failed","status":"` + long + `"}`,
		`{"id":"c","name":"n","state":"queued","created":-1}`,
		`{"id":"c","name":"n","state":"sent","latency_ms":-0.5}`,
		`{"id":"c","name":"n","state":"sent","latency_ms":"1"}`,
		`{"id":1,"name":"n","state":"queued"}`,
		`{"id":"c","name":"n","state":"failed","result":"` + strings.Repeat("x", 64<<10) + `"}`,
	} {
		if ev, err := wire.DecodeCommandEvent([]byte(b)); !errors.Is(err, wire.ErrInvalidEvent) {
			t.Errorf("%.80s: decoded %+v, %v", b, ev, err)
		}
	}
	// Members it does not know are a later home's: ignored.
	if _, err := wire.DecodeCommandEvent([]byte(`{"id":"c","name":"n","state":"queued","priority":3}`)); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecodeCommandEvent: whatever it is given, the decoder refuses it
// with ErrInvalidEvent or returns an event that encodes to JSON which
// decodes to the same event.
func FuzzDecodeCommandEvent(f *testing.F) {
	f.Add([]byte(`{"id":"c0a1","name":"reboot","state":"acknowledged","created":1748736000123,"latency_ms":12.5,"status":"ok","result":{"up":true}}`))
	f.Add([]byte(`{"id":"c","name":"n","state":"queued","created":0}`))
	f.Add([]byte(`{"id":"c","name":"\u00e9\ud800","state":"failed","result":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := wire.DecodeCommandEvent(b)
		if err != nil {
			if !errors.Is(err, wire.ErrInvalidEvent) {
				t.Fatalf("error %v does not wrap ErrInvalidEvent", err)
			}
			return
		}
		again, err := json.Marshal(&ev)
		if err != nil {
			t.Fatalf("%+v does not encode: %v", ev, err)
		}
		ev2, err := wire.DecodeCommandEvent(again)
		if err != nil {
			t.Fatalf("%s re-encoded as %s, which does not decode: %v", b, again, err)
		}
		if len(ev.Result) > 0 {
			if x, y := decodeAny(ev.Result), decodeAny(ev2.Result); x == nil || !reflect.DeepEqual(x, y) {
				t.Fatalf("result %s came back as %s", ev.Result, ev2.Result)
			}
			ev.Result, ev2.Result = nil, nil
		}
		if !reflect.DeepEqual(ev, ev2) {
			t.Fatalf("%s: decoded %+v, again %+v", b, ev, ev2)
		}
	})
}

// decodeAny decodes one JSON value, numbers as written; nil if it does not.
func decodeAny(b []byte) any {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return nil
	}
	return []any{v}
}
