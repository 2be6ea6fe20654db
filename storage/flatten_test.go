package storage_test

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/wire"
)

// onePassSeeds are payloads of the shapes devices send, which the one-pass
// path takes, and payloads it must leave to the general way.
var onePassSeeds = []struct {
	in   string
	fast bool
}{
	{`{"id":17,"ts":1748736000123,"device":"d","temp":21.5,"hum":40,"pressure":1013.25,"co2":415,"battery":3.7}`, true},
	{` {"ok":true,"bad":false,"n":null,"cells":[{"rssi":-70},{"rssi":-80}],"tags":["a","b"],"e":{},"f":[]} `, true},
	{`{"x":{"id":1,"ts":2},"id":{"a":[1,2]},"gps":{"lat":52.5,"lon":-13.4e-1},"name":"Gerät"}`, true},
	{`{"big":1e400,"small":-1e-400,"int":12345678901234567890,"z":-0,"e":0.5E+3}`, true},
	{`{}`, true},
	{`{"a":{"b":1},"a.b":2}`, false},     // two paths, one name: the later name wins
	{`{"a":1,"a":"x"}`, false},           // a member named twice
	{`{"a":{"b":1},"a":{"c":2}}`, false}, // the second replaces the first
	{`{"s":"a\"b"}`, false},              // an escape
	{`{"s":"\xff"}`, false},              // not UTF-8
	{`{"a":01}`, false}, {`{"a":1.}`, false}, {`{"a":-}`, false}, {`{"a":1e}`, false},
	{`{"a":1} x`, false}, {`{"a":1}{"b":2}`, false}, {`[1]`, false}, {`null`, false}, {``, false},
	{`{"a":tru}`, false}, {`{"a":[1,]}`, false}, {`{"a":1,}`, false}, {`{"a" 1}`, false},
}

// The one-pass path takes the messages devices send, and gives the points
// the general way gives.
func TestFlattenOnePass(t *testing.T) {
	for _, c := range onePassSeeds {
		var fast storage.Point
		ok := storage.FlattenOnePass([]byte(c.in), &fast)
		if ok != c.fast {
			t.Errorf("%s: taken by the one-pass path: %v, want %v", c.in, ok, c.fast)
		}
		if ok {
			checkSamePoint(t, []byte(c.in), fast)
		}
	}
}

func checkSamePoint(t *testing.T, b []byte, fast storage.Point) {
	t.Helper()
	var slow storage.Point
	if err := storage.FlattenDecoded(b, &slow); err != nil {
		t.Fatalf("%q: taken in one pass, refused by the general way: %v", b, err)
	}
	if !reflect.DeepEqual(fast.Numbers, slow.Numbers) || !reflect.DeepEqual(fast.Strings, slow.Strings) {
		t.Fatalf("%q: one pass gives %v %v, the general way %v %v", b, fast.Numbers, fast.Strings, slow.Numbers, slow.Strings)
	}
}

// Goroutines flattening at once share the table of field names and the
// name buffers, and each gets its own payload's fields: names that take
// one another's slots in the table included.
func TestFlattenOnePassConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				b := []byte(fmt.Sprintf(`{"f%d_%d":{"x%d":%d},"s%d":"v%d"}`, g, i%300, i%7, i, i%500, i))
				var fast storage.Point
				if !storage.FlattenOnePass(b, &fast) {
					t.Errorf("%s: not taken in one pass", b)
					return
				}
				want := storage.Point{
					Numbers: map[string]float64{fmt.Sprintf("f%d_%d.x%d", g, i%300, i%7): float64(i)},
					Strings: map[string]string{fmt.Sprintf("s%d", i%500): fmt.Sprintf("v%d", i)},
				}
				if !reflect.DeepEqual(fast.Numbers, want.Numbers) || !reflect.DeepEqual(fast.Strings, want.Strings) {
					t.Errorf("%s: %v %v", b, fast.Numbers, fast.Strings)
					return
				}
			}
		})
	}
	wg.Wait()
}

// FuzzFlattenOnePass: whatever the one-pass path takes, the general way
// takes too, with the same fields.
func FuzzFlattenOnePass(f *testing.F) {
	for _, c := range onePassSeeds {
		f.Add([]byte(c.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast storage.Point
		if storage.FlattenOnePass(b, &fast) {
			checkSamePoint(t, b, fast)
		}
	})
}

// BenchmarkStagePointMapping: a 200-byte sensor message's payload into a
// point's fields, one pass and the general way.
func BenchmarkStagePointMapping(b *testing.B) {
	payload := []byte(`{"id":1234567,"ts":1748736000123,"temperature":21.53,"humidity":40.12,"pressure":1013.25,"co2":415.5,"battery":3.71,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	for _, way := range []struct {
		name string
		f    func([]byte, *storage.Point) error
	}{{"onepass", storage.Flatten}, {"decoded", storage.FlattenDecoded}} {
		b.Run(way.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				var p storage.Point
				if err := way.f(payload, &p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStageRecordToPoint: a middletier record of a 200-byte sensor
// message into a point whose maps of fields are reused, as the storage
// writer makes its points: the record decoded with the origin of the one
// before it, its envelope decoded, its payload flattened.
func BenchmarkStageRecordToPoint(b *testing.B) {
	payload := []byte(`{"id":1234567,"ts":1748736000123,"temperature":21.53,"humidity":40.12,"pressure":1013.25,"co2":415.5,"battery":3.71,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	env := envelope.AppendEncode(nil, &envelope.Envelope{Frontend: "fe-0", Device: "sensor-00042", Received: time.Now().UnixNano(), Payload: payload})
	rb := wire.AppendRecord(nil, &wire.Record{Origin: "fe-0.0123456789abcdef", Index: 1, Data: env})
	var p storage.Point
	origin := ""
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		rec, err := wire.DecodeRecordKnown(rb, origin)
		if err != nil {
			b.Fatal(err)
		}
		origin = rec.Origin
		if err := storage.FillPoint(&p, rec, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// Flatten into a point that holds the maps of an earlier message empties
// and reuses them: the fields are those of a fresh point, whichever way
// the message is flattened (one pass, or the general way after a one-pass
// scan that gave up part way), with no field of the message before; a
// small message reuses the maps, one of more than 64 fields leaves maps
// that are not reused; and reuse spares the maps' allocations.
func TestFlattenReusesMaps(t *testing.T) {
	var many strings.Builder
	many.WriteString(`{"a0":0`)
	for i := 1; i < 100; i++ {
		fmt.Fprintf(&many, `,"a%d":%d`, i, i)
	}
	many.WriteString(`}`)
	payloads := []string{
		`{"temp":21.5,"hum":40,"ok":true,"note":"x"}`,
		`{"gps":{"lat":48.8,"lon":2.3},"cells":[1,2],"s":"y"}`,
		`{"temp":1,"esc":"a\"b","hum":2}`, // an escape: the general way, after a partial one pass
		many.String(),
		`{"temp":22}`,
		`{"only":"strings","more":"here"}`,
	}
	mapOf := func(m any) uintptr { return reflect.ValueOf(m).Pointer() }
	var p storage.Point
	for round := range 3 {
		for i, in := range payloads {
			before := mapOf(p.Numbers)
			large := len(p.Numbers) > 64
			if err := storage.Flatten([]byte(in), &p); err != nil {
				t.Fatal(err)
			}
			var fresh storage.Point
			if err := storage.Flatten([]byte(in), &fresh); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.Numbers, fresh.Numbers) || !reflect.DeepEqual(p.Strings, fresh.Strings) {
				t.Fatalf("round %d, %.30s: reused %v %v, fresh %v %v", round, in, p.Numbers, p.Strings, fresh.Numbers, fresh.Strings)
			}
			if reused := mapOf(p.Numbers) == before; before != 0 && reused == large {
				t.Errorf("round %d, payload %d: the numbers' map reused %v; the message before had more than 64 fields: %v", round, i, reused, large)
			}
		}
	}
	sensor := []byte(`{"id":1,"seq":1,"ts":1748736000123,"temp":21.5,"hum":40,"battery":3.3,"ok":true,"note":"xxxxxxxx"}`)
	fresh := testing.AllocsPerRun(100, func() {
		var q storage.Point
		storage.Flatten(sensor, &q)
	})
	reused := testing.AllocsPerRun(100, func() { storage.Flatten(sensor, &p) })
	if reused > fresh-2 {
		t.Errorf("Flatten into a point with maps: %v allocations, fresh %v: the maps were not reused", reused, fresh)
	}
}
