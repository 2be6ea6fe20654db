package storage_test

import (
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/ingest-io/ingest/storage"
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
