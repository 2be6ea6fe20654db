package storage_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/wire"
)

func TestFlatten(t *testing.T) {
	for _, c := range []struct {
		in      string
		numbers map[string]float64
		strings map[string]string
	}{
		{`{"id":17,"ts":1748736000123,"device":"d","temp":21.5,"door":"open","gps":{"lat":52.5,"lon":13.4}}`,
			map[string]float64{"temp": 21.5, "gps.lat": 52.5, "gps.lon": 13.4}, map[string]string{"door": "open"}},
		{`{"ok":true,"bad":false,"n":null,"cells":[{"rssi":-70},{"rssi":-80}],"tags":["a","b"]}`,
			map[string]float64{"ok": 1, "bad": 0, "cells.0.rssi": -70, "cells.1.rssi": -80}, map[string]string{"tags.0": "a", "tags.1": "b"}},
		{`{"x":{"id":1,"ts":2}}`, map[string]float64{"x.id": 1, "x.ts": 2}, map[string]string{}}, // reserved only at the top
		{`{"big":1e400,"small":-1e-400,"int":12345678901234567890}`, map[string]float64{"small": 0, "int": 12345678901234567890}, map[string]string{}},
		{`{"a":{"b":1},"a.b":2}`, map[string]float64{"a.b": 2}, map[string]string{}}, // the member "a.b" sorts after "a": it wins
		{`{}`, map[string]float64{}, map[string]string{}},
	} {
		var p storage.Point
		if err := storage.Flatten([]byte(c.in), &p); err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(p.Numbers, c.numbers) || !reflect.DeepEqual(p.Strings, c.strings) {
			t.Errorf("%s: numbers %v strings %v, want %v %v", c.in, p.Numbers, p.Strings, c.numbers, c.strings)
		}
	}
	for _, bad := range []string{``, `[]`, `[{"a":1}]`, `null`, `1`, `"s"`, `{"a":1}{"b":2}`, `{"a":1} x`, `{"a":}`} {
		var p storage.Point
		if err := storage.Flatten([]byte(bad), &p); err == nil {
			t.Errorf("%q accepted: %+v", bad, p)
		}
	}
}

func record(t testing.TB, origin string, index uint64, e envelope.Envelope) wire.Record {
	t.Helper()
	return wire.Record{Origin: origin, Index: index, Data: envelope.AppendEncode(nil, &e)}
}

func TestNewPoint(t *testing.T) {
	recv := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	dev := time.Date(2026, 5, 1, 11, 0, 0, 5e6, time.UTC)
	labels := func(id string) map[string]string {
		if id == "dev-1" {
			return map[string]string{"site": "x"}
		}
		return nil
	}
	rec := record(t, "fe-1.00ab", 7, envelope.Envelope{Frontend: "fe-1", Device: "dev-1", Received: recv.UnixNano(),
		HasDeviceTime: true, DeviceTime: dev.UnixNano(), Payload: []byte(`{"temp":1}`)})
	p, err := storage.NewPoint(rec, labels)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Time.Equal(dev) || p.ID != "fe-1.00ab/7" || p.Device != "dev-1" || p.Labels["site"] != "x" || p.Numbers["temp"] != 1 {
		t.Fatalf("point %+v", p)
	}
	// Without a device time, or with one before 2000: the receive time.
	for _, e := range []envelope.Envelope{
		{Frontend: "fe-1", Device: "dev-2", Received: recv.UnixNano(), Payload: []byte(`{}`)},
		{Frontend: "fe-1", Device: "dev-2", Received: recv.UnixNano(), HasDeviceTime: true, DeviceTime: 1000, Payload: []byte(`{}`)},
		{Frontend: "fe-1", Device: "dev-2", Received: recv.UnixNano(), HasDeviceTime: true, DeviceTime: protocol.MinDeviceTime - 1, Payload: []byte(`{}`)},
	} {
		p, err := storage.NewPoint(record(t, "o", 1, e), labels)
		if err != nil || !p.Time.Equal(recv) || p.Labels != nil {
			t.Fatalf("point %+v, %v", p, err)
		}
	}
	// The earliest device time the frontend accepts is taken as it is.
	p, err = storage.NewPoint(record(t, "o", 1, envelope.Envelope{Frontend: "fe-1", Device: "dev-2", Received: recv.UnixNano(),
		HasDeviceTime: true, DeviceTime: protocol.MinDeviceTime, Payload: []byte(`{}`)}), nil)
	if err != nil || p.Time.UnixNano() != protocol.MinDeviceTime {
		t.Fatalf("point %+v, %v: want the device time 2000-01-01", p, err)
	}
	// An MQTT topic below devices/{id}/ is the label "topic", beside the
	// registry's labels (and in place of a registry label of that name),
	// without changing the registry's map.
	reg := map[string]string{"site": "x", "topic": "from-registry"}
	p, err = storage.NewPoint(record(t, "o", 2, envelope.Envelope{Frontend: "fe-1", Device: "dev-1", Received: recv.UnixNano(),
		Topic: "telemetry/gps", Payload: []byte(`{"lat":1}`)}), func(string) map[string]string { return reg })
	if err != nil || p.Labels[storage.TopicLabel] != "telemetry/gps" || p.Labels["site"] != "x" || reg["topic"] != "from-registry" {
		t.Fatalf("point %+v, %v: want topic=telemetry/gps and site=x, the registry map untouched", p, err)
	}
	p, err = storage.NewPoint(record(t, "o", 3, envelope.Envelope{Frontend: "fe-1", Device: "dev-9", Received: recv.UnixNano(),
		Topic: "status", Payload: []byte(`{}`)}), labels)
	if err != nil || len(p.Labels) != 1 || p.Labels["topic"] != "status" {
		t.Fatalf("point %+v, %v: want the topic label alone for an unregistered device", p, err)
	}
	if _, err := storage.NewPoint(wire.Record{Origin: "o", Index: 1, Data: []byte("junk")}, nil); !errors.Is(err, envelope.ErrInvalid) {
		t.Fatalf("junk envelope: %v", err)
	}
}

// FuzzFlatten: any payload either fails to decode or gives a point whose
// fields are all the payload's leaves, and the same point every time.
func FuzzFlatten(f *testing.F) {
	for _, s := range []string{`{"id":17,"ts":1748736000123,"temp":21.5,"door":"open","gps":{"lat":52.5,"lon":13.4}}`,
		`{"a":[1,[2,{"b":true}]],"c":null,"d":"\u00e9"}`, `{"a":{"b":1},"a.b":2}`, `{}`, `[]`, `{"x":1e999}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p, q storage.Point
		err := storage.Flatten(b, &p)
		if err != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("invalid JSON %q accepted", b)
		}
		if err := storage.Flatten(b, &q); err != nil || !reflect.DeepEqual(p, q) {
			t.Fatalf("not deterministic: %+v then %+v (%v)", p, q, err)
		}
	})
}
