package storage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http/httptest"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/embedded"
	"github.com/ingest-io/ingest/storage/remotewrite"
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
	if !p.Time.Equal(dev) || p.ID() != "fe-1.00ab/7" || p.Device != "dev-1" || p.Labels["site"] != "x" || p.Numbers["temp"] != 1 {
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

// A command event becomes the samples command_events (1) and, but for
// queued, command_latency_seconds, labelled with the command's name and the
// state, beside the registry's labels (in place of registry labels of
// those names); its id, status and result are no labels. An event that
// does not decode is an error, not a device message.
func TestNewPointCommandEvent(t *testing.T) {
	at := time.Date(2026, 5, 1, 12, 0, 0, 7e6, time.UTC)
	reg := map[string]string{"site": "x", "state": "from-registry"}
	c := wire.Command{ID: "c0123", Device: "dev-1", Name: "reboot", State: wire.StateFailed, Status: "busy",
		Result: []byte(`{"why":"x"}`), Created: at.UnixNano() - 1_500_000_000, Done: at.UnixNano()}
	p, err := storage.NewPoint(record(t, "mt-0.commands.00ab", 4, envelope.Envelope{Frontend: "mt-0", Device: "dev-1",
		Received: at.UnixNano(), Topic: wire.CommandEventTopic, Payload: wire.AppendCommandEvent(nil, &c)}),
		func(string) map[string]string { return reg })
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"site": "x", storage.CommandLabel: "reboot", storage.StateLabel: "failed"}
	if !p.Time.Equal(at) || p.Device != "dev-1" || !maps.Equal(p.Labels, want) || len(p.Strings) != 0 ||
		!maps.Equal(p.Numbers, map[string]float64{storage.CommandEventsSeries: 1, storage.CommandLatencySeries: 1.5}) {
		t.Fatalf("point %+v", p)
	}
	if reg["state"] != "from-registry" {
		t.Fatal("the registry's map changed")
	}
	c.State = wire.StateQueued
	p, err = storage.NewPoint(record(t, "o", 5, envelope.Envelope{Frontend: "mt-0", Device: "dev-1",
		Received: at.UnixNano(), Topic: wire.CommandEventTopic, Payload: wire.AppendCommandEvent(nil, &c)}), nil)
	if err != nil || !maps.Equal(p.Numbers, map[string]float64{storage.CommandEventsSeries: 1}) || p.Labels[storage.StateLabel] != "queued" {
		t.Fatalf("queued: %+v, %v", p, err)
	}
	if _, err := storage.NewPoint(record(t, "o", 6, envelope.Envelope{Frontend: "mt-0", Device: "dev-1",
		Received: at.UnixNano(), Topic: wire.CommandEventTopic, Payload: []byte(`{"temp":1}`)}), nil); !errors.Is(err, wire.ErrInvalidEvent) {
		t.Fatalf("a payload that is no event on the events' topic: %v", err)
	}
}

// Each command name and state of a device's command events is a series of
// its own under the device's bound: past it, a new name's events are
// dropped and counted, the known ones still written.
func TestLimiterCommandSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: 4}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	event := func(name, state string) storage.Point {
		return storage.Point{Device: "d1", Labels: map[string]string{storage.CommandLabel: name, storage.StateLabel: state},
			Numbers: map[string]float64{storage.CommandEventsSeries: 1, storage.CommandLatencySeries: 0.1}, Strings: map[string]string{}}
	}
	for i, st := range []struct {
		name, state string
		kept        int
	}{{"reboot", "sent", 2}, {"reboot", "acknowledged", 2}, {"ping", "sent", 0}, {"reboot", "sent", 2}} {
		p := event(st.name, st.state)
		l.Apply([]storage.Point{p})
		if len(p.Numbers) != st.kept {
			t.Fatalf("step %d (%s %s): kept %v, want %d series", i, st.name, st.state, p.Numbers, st.kept)
		}
	}
	if got := droppedFields(t, reg, storage.DropSeriesLimit); got != 2 {
		t.Fatalf("dropped %v, want ping's 2 series", got)
	}
}

// FuzzFlatten: any payload either fails to decode or gives a point whose
// fields are all the payload's leaves, and the same point every time.
func FuzzFlatten(f *testing.F) {
	for _, s := range []string{`{"id":17,"ts":1748736000123,"temp":21.5,"door":"open","gps":{"lat":52.5,"lon":13.4}}`,
		`{"a":[1,[2,{"b":true}]],"c":null,"d":"\u00e9"}`, `{"a":{"b":1},"a.b":2}`, `{}`, `[]`, `{"x":1e999}`,
		`{"__name__":1,"a_b":"x","a.b":"y","a-b":3,"c":[1,2,3,4,5,6,7,8,9]}`} {
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
		// Through a Limiter, the point keeps a subset of its fields: at most
		// the bound, no name beginning with "__", no two of a kind with one
		// series name, and the same subset from a fresh Limiter again.
		l, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: 8}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		p.Device, q.Device = "d", "d"
		orig := fieldNames(p)
		l.Apply([]storage.Point{p})
		kept := fieldNames(p)
		if len(kept) > 8 || len(kept) > len(orig) {
			t.Fatalf("%d of %d fields kept, bound 8", len(kept), len(orig))
		}
		for _, k := range kept {
			if !slices.Contains(orig, k) || strings.HasPrefix(k, "__") {
				t.Fatalf("kept %q of %v", k, orig)
			}
		}
		for _, fields := range []map[string]bool{setOf(maps.Keys(p.Numbers)), setOf(maps.Keys(p.Strings))} {
			seen := map[string]bool{}
			for k := range fields {
				if m := storage.MetricName(k); seen[m] {
					t.Fatalf("two fields kept with the series name %q: %v", m, kept)
				} else {
					seen[m] = true
				}
			}
		}
		l2, _ := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: 8}, nil, nil)
		l2.Apply([]storage.Point{q})
		if again := fieldNames(q); !slices.Equal(again, kept) {
			t.Fatalf("kept %v, then %v", kept, again)
		}
	})
}

func setOf(seq iter.Seq[string]) map[string]bool {
	m := map[string]bool{}
	for k := range seq {
		m[k] = true
	}
	return m
}

// limiterClock is a settable clock for a Limiter.
type limiterClock struct{ t time.Time }

func (c *limiterClock) now() time.Time { return c.t }

func droppedFields(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ingest_storage_dropped_fields_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("ingest_storage_dropped_fields_total{reason=%q} not exported", reason)
	return 0
}

// fieldNames are the fields a point kept: numeric names, then string
// fields as name=value, each in name order.
func fieldNames(p storage.Point) []string {
	out := slices.Sorted(maps.Keys(p.Numbers))
	for _, k := range slices.Sorted(maps.Keys(p.Strings)) {
		out = append(out, k+"="+p.Strings[k])
	}
	return out
}

// TestLimiterSeriesPerDevice is the table of the series bound: a device
// under, at and over it (4 here), its known series written on while new
// ones are dropped, string values counted as series, other devices apart,
// and series forgotten after one to two windows without a write.
func TestLimiterSeriesPerDevice(t *testing.T) {
	clock := &limiterClock{t: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	var logs bytes.Buffer
	lg := slog.New(slog.NewTextHandler(&logs, nil))
	l, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: 4, Window: time.Hour, Now: clock.now}, reg, lg)
	if err != nil {
		t.Fatal(err)
	}
	num := func(names ...string) map[string]float64 {
		m := map[string]float64{}
		for i, n := range names {
			m[n] = float64(i)
		}
		return m
	}
	steps := []struct {
		name    string
		advance time.Duration // clock moves before the step
		device  string
		numbers map[string]float64
		strings map[string]string
		kept    []string
		dropped int // series_limit drops in this step
	}{
		{"under", 0, "d1", num("a", "b", "c"), nil, []string{"a", "b", "c"}, 0},
		{"at", 0, "d1", num("a", "b", "c", "d"), nil, []string{"a", "b", "c", "d"}, 0},
		{"over: new fields dropped, known ones kept", 0, "d1", num("a", "e", "d", "f"), nil, []string{"a", "d"}, 2},
		{"over in one point: the first in name order kept", 0, "d2", num("z", "y", "x", "w", "v"), nil, []string{"v", "w", "x", "y"}, 1},
		{"string values are series", 0, "d3", num("a", "b", "c"), map[string]string{"door": "open"}, []string{"a", "b", "c", "door=open"}, 0},
		{"a new string value over the bound", 0, "d3", nil, map[string]string{"door": "closed"}, nil, 1},
		{"a known string value", 0, "d3", num("a"), map[string]string{"door": "open"}, []string{"a", "door=open"}, 0},
		{"numbers before strings", 0, "d4", num("b", "c", "d"), map[string]string{"a": "x", "e": "y"}, []string{"b", "c", "d", "a=x"}, 1},
		{"other devices are apart", 0, "d5", num("e", "f", "g", "h"), nil, []string{"e", "f", "g", "h"}, 0},
		// d1 knows a, b, c, d. A window later they are the previous
		// window's: still known, and a and b, written again, come back
		// into the current one.
		{"a window later, still known", time.Hour, "d1", num("a", "b", "e"), nil, []string{"a", "b"}, 1},
		// Another window: c and d, not written for a whole window, are
		// forgotten; a and b are kept, and two new series fit.
		{"quiet series forgotten", time.Hour, "d1", num("a", "b", "e", "f", "g"), nil, []string{"a", "b", "e", "f"}, 1},
		// Two windows without a write: the device is forgotten.
		{"an idle device starts afresh", 2 * time.Hour, "d1", num("m", "n", "o", "p"), nil, []string{"m", "n", "o", "p"}, 0},
	}
	total := 0.0
	for _, st := range steps {
		clock.t = clock.t.Add(st.advance)
		p := storage.Point{Device: st.device, Numbers: st.numbers, Strings: st.strings}
		if p.Numbers == nil {
			p.Numbers = map[string]float64{}
		}
		if p.Strings == nil {
			p.Strings = map[string]string{}
		}
		l.Apply([]storage.Point{p})
		if got := fieldNames(p); !slices.Equal(got, st.kept) {
			t.Fatalf("%s: kept %v, want %v", st.name, got, st.kept)
		}
		total += float64(st.dropped)
		if got := droppedFields(t, reg, storage.DropSeriesLimit); got != total {
			t.Fatalf("%s: dropped_fields{series_limit} = %v, want %v", st.name, got, total)
		}
		// Applied again (a sink write retried), a point loses nothing more.
		l.Apply([]storage.Point{p})
		if got := fieldNames(p); !slices.Equal(got, st.kept) || droppedFields(t, reg, storage.DropSeriesLimit) != total {
			t.Fatalf("%s: applied again: kept %v", st.name, got)
		}
	}
	// An MQTT topic makes series of its own: the same field under two
	// topics is two series.
	for i, c := range []struct {
		topic string
		kept  []string
	}{{"", []string{"a", "b"}}, {"telemetry", []string{"a", "b"}}, {"status", nil}, {"telemetry", []string{"a", "b"}}} {
		p := storage.Point{Device: "d6", Numbers: num("a", "b"), Strings: map[string]string{}}
		if c.topic != "" {
			p.Labels = map[string]string{storage.TopicLabel: c.topic}
		}
		l.Apply([]storage.Point{p})
		if got := fieldNames(p); !slices.Equal(got, c.kept) {
			t.Fatalf("topic %q (%d): kept %v, want %v", c.topic, i, got, c.kept)
		}
	}
	total += 2
	if got := droppedFields(t, reg, storage.DropSeriesLimit); got != total {
		t.Fatalf("topics: dropped_fields{series_limit} = %v, want %v", got, total)
	}

	// One line per device and window that met the bound: d1, d2, d3 and
	// d4 in the first window, d1 in the second and the third, d6.
	if n := strings.Count(logs.String(), "series limit"); n != 7 {
		t.Fatalf("%d log lines about the series limit, want 7:\n%s", n, logs.String())
	}
	if _, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: -1}, nil, nil); err == nil {
		t.Fatal("a negative bound accepted")
	}
	if d := storage.DefaultLimitOptions(); d.MaxSeriesPerDevice != 2000 || d.Window != time.Hour {
		t.Fatalf("defaults %+v", d)
	}
}

// TestLimiterNames: the series names a point's fields make are its own:
// where two fields of one kind make one name, the first in name order is
// kept on every delivery, and a name beginning with "__" is dropped.
func TestLimiterNames(t *testing.T) {
	for _, c := range []struct {
		numbers    map[string]float64
		strings    map[string]string
		kept       []string
		collisions float64
		reserved   float64
	}{
		{map[string]float64{"temp": 1, "gps_lat": 2}, map[string]string{"door": "open"}, []string{"gps_lat", "temp", "door=open"}, 0, 0},
		{map[string]float64{"a_b": 2, "a.b": 1, "a-b": 3}, nil, []string{"a-b"}, 2, 0}, // "-" sorts before "." and "_"
		{nil, map[string]string{"a_b": "y", "a.b": "x"}, []string{"a.b=x"}, 1, 0},
		{map[string]float64{"température": 1, "temp_rature": 2}, nil, []string{"temp_rature"}, 1, 0},
		{map[string]float64{"door_info": 1}, map[string]string{"door": "open"}, []string{"door_info", "door=open"}, 0, 0}, // two series
		{map[string]float64{"__name__": 1, "_x": 2}, map[string]string{"__y": "z"}, []string{"_x"}, 0, 2},
		{map[string]float64{"1st": 1, "_1st": 2}, nil, []string{"1st"}, 1, 0},
	} {
		reg := prometheus.NewRegistry()
		l, err := storage.NewLimiter(storage.LimitOptions{}, reg, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := storage.Point{Device: "d", Numbers: map[string]float64{}, Strings: map[string]string{}}
		maps.Copy(p.Numbers, c.numbers)
		maps.Copy(p.Strings, c.strings)
		l.Apply([]storage.Point{p})
		if got := fieldNames(p); !slices.Equal(got, c.kept) {
			t.Errorf("%v %v: kept %v, want %v", c.numbers, c.strings, got, c.kept)
		}
		if got := droppedFields(t, reg, storage.DropNameCollision); got != c.collisions {
			t.Errorf("%v %v: name_collision %v, want %v", c.numbers, c.strings, got, c.collisions)
		}
		if got := droppedFields(t, reg, storage.DropReservedName); got != c.reserved {
			t.Errorf("%v %v: reserved_name %v, want %v", c.numbers, c.strings, got, c.reserved)
		}
	}
}

// TestLimiterSink: through Limiter.Sink, the embedded TSDB holds a device's
// first series up to the bound and no more, whatever the device sends; the
// limited sink takes overlapping Writes as the TSDB does (a remote-write
// sink stays one that does not), and closing it unregisters the Limiter's
// metrics.
func TestLimiterSink(t *testing.T) {
	db := openTSDB(t)
	reg := prometheus.NewRegistry()
	l, err := storage.NewLimiter(storage.LimitOptions{MaxSeriesPerDevice: 5}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink := l.Sink(db)
	if !sink.ConcurrentWrites() {
		t.Fatal("the limited TSDB does not take overlapping Writes")
	}
	rw, err := remotewrite.New(remotewrite.Options{URL: "http://127.0.0.1:1/api/v1/write"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if l.Sink(rw).ConcurrentWrites() {
		t.Fatal("the limited remote-write sink takes overlapping Writes")
	}
	srv := httptest.NewServer(embedded.NewAPI(db.DB(), embedded.APIOptions{}, nil, nil))
	defer srv.Close()
	at := time.Now().Add(-time.Minute).Truncate(time.Second)
	point := func(dev string, at time.Time, n map[string]float64, s map[string]string) storage.Point {
		return storage.Point{Device: dev, Time: at, Numbers: n, Strings: s}
	}
	for i := range 20 { // every message a new field and a new string value
		p := point("flood", at.Add(time.Duration(i)*time.Millisecond), map[string]float64{"temp": 1, fmt.Sprintf("f%02d", i): 1},
			map[string]string{"note": fmt.Sprint(i)})
		if err := sink.Write(context.Background(), []storage.Point{p, point("calm", p.Time, map[string]float64{"temp": 2}, nil)}); err != nil {
			t.Fatal(err)
		}
	}
	if v := testkit.PromScalar(t, srv.URL, `count(count by (__name__, value) ({device="flood"}))`, at.Add(time.Second)); v != "5" {
		t.Fatalf("the flooding device has %s series, want 5", v)
	}
	if v := testkit.PromScalar(t, srv.URL, `count({device="calm"})`, at.Add(time.Second)); v != "1" {
		t.Fatalf("the calm device has %s series, want 1", v)
	}
	// f00, temp, note=0, then f01, note=1 fit; each of the 18 later
	// messages loses its two new ones.
	if got := droppedFields(t, reg, storage.DropSeriesLimit); got != 36 {
		t.Fatalf("dropped_fields{series_limit} = %v, want 36", got)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "ingest_storage_dropped_fields_total" {
			t.Fatal("the limiter's metrics are still registered after Close")
		}
	}
}

// TestLimiterMemory bounds what a Limiter keeps: about 40 bytes per series
// of a device and a few hundred per device (docs/storage.md gives the
// figures): 10,000 devices of 10 series, and 100 devices at the default
// bound of 2,000 series.
func TestLimiterMemory(t *testing.T) {
	for _, c := range []struct {
		devices, series int
		perDevice       float64 // at most, bytes
	}{
		{10000, 10, 1 << 10},
		{100, 2000, 2000 * 64},
	} {
		l, err := storage.NewLimiter(storage.LimitOptions{}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		names := make([]string, c.series)
		for i := range names {
			names[i] = fmt.Sprintf("field_%d", i)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for d := range c.devices {
			p := storage.Point{Device: fmt.Sprintf("device-%06d", d), Numbers: make(map[string]float64, c.series), Strings: map[string]string{}}
			for _, n := range names {
				p.Numbers[n] = 1
			}
			l.Apply([]storage.Point{p})
			if len(p.Numbers) != c.series {
				t.Fatalf("device %d: %d of %d fields kept", d, len(p.Numbers), c.series)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(l)
		perDevice := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(c.devices)
		t.Logf("%d devices of %d series: %.0f bytes per device, %.1f per series", c.devices, c.series, perDevice, perDevice/float64(c.series))
		if perDevice > c.perDevice {
			t.Errorf("%d devices of %d series: %.0f bytes per device, want at most %.0f", c.devices, c.series, perDevice, c.perDevice)
		}
	}
}

// TestLimiterKnownAgrees holds Apply, which lets a point whose fields are
// all known series pass as it is, to the same Limiter taking every field
// through the drops and the series bound: over a long run of points of a
// few devices, with reserved, colliding and unclean names, string values,
// topics, bounds reached and windows passing, the two keep and drop the
// same fields and count the same drops.
func TestLimiterKnownAgrees(t *testing.T) {
	for _, bound := range []int{3, 8, 2000} {
		clock := &limiterClock{t: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)}
		opts := storage.LimitOptions{MaxSeriesPerDevice: bound, Window: time.Hour, Now: clock.now}
		fastReg, slowReg := prometheus.NewRegistry(), prometheus.NewRegistry()
		fast, err := storage.NewLimiter(opts, fastReg, nil)
		if err != nil {
			t.Fatal(err)
		}
		slow, err := storage.NewLimiter(opts, slowReg, nil)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(uint64(bound), 7))
		names := []string{"a", "b", "c", "d", "e", "__r", "a.b", "a_b", "9x", "é"}
		values := []string{"open", "closed"}
		topics := []string{"", "door", "gps"}
		pick := func(pool []string) string { return pool[rng.IntN(len(pool))] }
		for step := range 20000 {
			if rng.IntN(500) == 0 {
				clock.t = clock.t.Add(time.Duration(rng.IntN(3)+1) * 40 * time.Minute)
			}
			var batch [2][]storage.Point
			for range rng.IntN(4) + 1 {
				p := storage.Point{Device: "d" + strconv.Itoa(rng.IntN(4))}
				if tp := pick(topics); tp != "" {
					p.Labels = map[string]string{storage.TopicLabel: tp}
				}
				if rng.IntN(8) == 0 {
					p.Labels = map[string]string{storage.CommandLabel: pick(values), storage.StateLabel: pick(topics)}
				}
				if n := rng.IntN(5); n > 0 || rng.IntN(2) == 0 { // else nil
					p.Numbers = map[string]float64{}
					for range n {
						p.Numbers[pick(names)] = 1
					}
				}
				if rng.IntN(4) == 0 {
					p.Strings = map[string]string{pick(names): pick(values)}
				}
				q := p
				q.Numbers, q.Strings = maps.Clone(p.Numbers), maps.Clone(p.Strings)
				batch[0], batch[1] = append(batch[0], p), append(batch[1], q)
			}
			fast.Apply(batch[0])
			slow.ApplyEveryField(batch[1])
			for i := range batch[0] {
				f, s := batch[0][i], batch[1][i]
				if !maps.Equal(f.Numbers, s.Numbers) || !maps.Equal(f.Strings, s.Strings) {
					t.Fatalf("bound %d, step %d, point %d of %s: kept %v %v, every field taken %v %v", bound, step, i, f.Device, f.Numbers, f.Strings, s.Numbers, s.Strings)
				}
			}
		}
		for _, reason := range []string{storage.DropSeriesLimit, storage.DropNameCollision, storage.DropReservedName} {
			if f, s := droppedFields(t, fastReg, reason), droppedFields(t, slowReg, reason); f != s {
				t.Errorf("bound %d: %v %s drops, every field taken %v", bound, f, reason, s)
			}
			if droppedFields(t, fastReg, reason) == 0 && (bound < 2000 || reason != storage.DropSeriesLimit) {
				t.Errorf("bound %d: no %s drop in the run, which so does not test them", bound, reason)
			}
		}
		// A series of the previous window only is not known: it moves to
		// the current one, which decides what the next window keeps. With
		// bound 3: a and b, a window later c then a (a moved), a window
		// later d and e: a, c and d make three, e is dropped.
		if bound == 3 {
			for _, step := range []struct {
				advance time.Duration
				field   string
			}{{0, "a"}, {0, "b"}, {time.Hour, "c"}, {0, "a"}, {time.Hour, "d"}, {0, "e"}} {
				clock.t = clock.t.Add(step.advance)
				pts := [2][]storage.Point{
					{{Device: "prev", Numbers: map[string]float64{step.field: 1}}},
					{{Device: "prev", Numbers: map[string]float64{step.field: 1}}},
				}
				fast.Apply(pts[0])
				slow.ApplyEveryField(pts[1])
				if !maps.Equal(pts[0][0].Numbers, pts[1][0].Numbers) {
					t.Fatalf("field %s: kept %v, every field taken %v", step.field, pts[0][0].Numbers, pts[1][0].Numbers)
				}
				if want := step.field != "e"; len(pts[0][0].Numbers) == 1 != want {
					t.Fatalf("field %s: kept %v, want kept %v", step.field, pts[0][0].Numbers, want)
				}
			}
		}
		// The shortcut is taken: a point of known fields is known.
		p := storage.Point{Device: "d0", Numbers: map[string]float64{"a": 1, "b": 2}, Strings: map[string]string{"c": "open"}}
		fast.Apply([]storage.Point{p})
		if bound > 3 && !fast.Known(&p) {
			t.Errorf("bound %d: a point whose fields were all just written is not known", bound)
		}
	}
}

// BenchmarkStageLimiter: the Limiter on the points of a 200-byte sensor
// message (six numeric fields and one string) from 10,000 devices, each
// writing its fields again, in batches of 100 as the storage writer's: with Apply's shortcut for known fields, and
// with every field taken through the drops and the series bound.
func BenchmarkStageLimiter(b *testing.B) {
	const devices, batch = 10000, 100
	points := make([]storage.Point, devices)
	for i := range points {
		points[i] = storage.Point{Device: "sensor-" + strconv.Itoa(i),
			Numbers: map[string]float64{"id": 1, "ts": 2, "temperature": 21.5, "humidity": 40, "pressure": 1013, "co2": 415},
			Strings: map[string]string{"pad": "xxxxxxxx"}}
	}
	for _, way := range []struct {
		name  string
		apply func(*storage.Limiter, []storage.Point)
	}{{"known", (*storage.Limiter).Apply}, {"everyfield", (*storage.Limiter).ApplyEveryField}} {
		b.Run(way.name, func(b *testing.B) {
			l, err := storage.NewLimiter(storage.LimitOptions{}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			way.apply(l, points)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				way.apply(l, points[i:i+batch])
				i = (i + batch) % devices
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/point")
		})
	}
}
