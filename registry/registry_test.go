package registry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sampleYAML = `devices:
  - id: tracker-001
    name: Truck 1
    group: fleet-north
    site: depot-a
    type: gps
    labels:
      driver: alice
  - id: sensor-9
    group: greenhouse
`

const sampleCSV = `id,name,group,site,type,driver
tracker-001,Truck 1,fleet-north,depot-a,gps,alice
sensor-9,,greenhouse,,,
`

func TestParseFormats(t *testing.T) {
	want := map[string]Device{
		"tracker-001": {ID: "tracker-001", Name: "Truck 1", Group: "fleet-north", Site: "depot-a", Type: "gps", Labels: map[string]string{"driver": "alice"}},
		"sensor-9":    {ID: "sensor-9", Group: "greenhouse"},
	}
	// Document markers around the one document are no second one.
	y, err := Parse(".yaml", []byte("---\n"+sampleYAML+"---\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(".csv", []byte(sampleCSV))
	if err != nil {
		t.Fatal(err)
	}
	// CSV gives every device a label map; compare what matters.
	for id, w := range want {
		for name, got := range map[string]map[string]Device{"yaml": y, "csv": c} {
			d := got[id]
			if len(d.Labels) == 0 {
				d.Labels = nil
			}
			if !reflect.DeepEqual(d, w) {
				t.Errorf("%s %s: %+v, want %+v", name, id, d, w)
			}
		}
	}
	if got := y["tracker-001"].AllLabels(); !reflect.DeepEqual(got, map[string]string{"name": "Truck 1", "group": "fleet-north", "site": "depot-a", "type": "gps", "driver": "alice"}) {
		t.Errorf("all labels %v", got)
	}
}

// TestParseCSVWithBOM: a CSV saved by a spreadsheet as UTF-8 (Excel's
// "CSV UTF-8") begins with a byte order mark. It is read as the same file
// without it, as the YAML parser reads a YAML file. Before, the mark was
// part of the first column's name, and a file whose header plainly reads
// id,… was refused with "no id column"; with another first column, that
// column's name held the mark, and its label was refused as invalid or
// taken under a name no query matches. A file of the mark alone is empty:
// it does not empty a registry that has devices.
func TestParseCSVWithBOM(t *testing.T) {
	const bom = "\ufeff"
	plain, err := Parse(".csv", []byte(sampleCSV))
	if err != nil {
		t.Fatal(err)
	}
	marked, err := Parse(".csv", []byte(bom+sampleCSV))
	if err != nil {
		t.Fatalf("a CSV with a byte order mark: %v", err)
	}
	if !reflect.DeepEqual(marked, plain) {
		t.Errorf("a CSV with a byte order mark gives %+v, want %+v", marked, plain)
	}
	byName, err := Parse(".csv", []byte(bom+"driver,id,disabled\nalice,tracker-001,true\n"))
	if err != nil {
		t.Fatalf("a CSV with a byte order mark before a label column: %v", err)
	}
	if d := byName["tracker-001"]; d.Labels["driver"] != "alice" || !d.Disabled {
		t.Errorf("a CSV with a byte order mark before a label column gives %+v", d)
	}

	path := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(path, []byte(bom+sampleCSV), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := os.WriteFile(path, []byte(bom), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r.reload()
	}
	if r.Len() != 2 {
		t.Fatalf("a file of a byte order mark alone left %d devices, want 2", r.Len())
	}
}

func TestParseInvalid(t *testing.T) {
	for _, tt := range []struct{ ext, body string }{
		{".yaml", "devices:\n  - name: no id\n"},
		{".yaml", "devices:\n  - id: a\n  - id: a\n"},
		{".yaml", "devices:\n  - id: a\n    labels:\n      \"bad-name\": x\n"},
		{".yaml", "devices:\n  - id: a\n    labels:\n      group: x\n"},
		{".yaml", "devices:\n  - id: a\n    colour: red\n"},
		{".yaml", "devices: [\n"},
		// A second document was passed over, the devices it disables
		// with it.
		{".yaml", "devices:\n  - id: a\n---\ndevices:\n  - id: b\n    disabled: true\n"},
		{".csv", "name\nx\n"},
		{".csv", "id,id\na,b\n"},
		{".csv", "id,__hidden\na,b\n"},
		{".csv", "id,name\n\"unterminated\n"},
		{".toml", "x"},
	} {
		if _, err := Parse(tt.ext, []byte(tt.body)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s %q: %v, want ErrInvalid", tt.ext, tt.body, err)
		}
	}
}

// TestParseRefusesInvalidUTF8: a CSV exported in a legacy encoding (a
// spreadsheet's "CSV" in Windows-1252: "Müller" as M, 0xfc, ller) is
// refused, naming the device, as a label name that is not valid is. Taken,
// its values went as they were to every store: the embedded TSDB and
// Prometheus 2 stored label values no selector for the intended name
// matches, Prometheus 3's remote-write receiver skips every sample of such
// a series and answers 204 (the device's data lost, counted nowhere here),
// and an id so written never matches the device's token (UTF-8 JSON): a
// device disabled under it stayed enabled. Before, every such file was
// taken as it was.
func TestParseRefusesInvalidUTF8(t *testing.T) {
	for _, tt := range []struct{ name, body string }{
		{"id", "id,disabled\ntrack\xe9r-1,true\n"},
		{"name", "id,name\nd1,M\xfcller\n"},
		{"group", "id,group\nd1,S\xfcd\n"},
		{"site", "id,site\nd1,K\xf6ln\n"},
		{"type", "id,type\nd1,\xb0C\n"},
		{"label", "id,driver\nd1,Jos\xe9\n"},
	} {
		_, err := Parse(".csv", []byte(tt.body))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "UTF-8") {
			t.Errorf("%s not valid UTF-8: %v, want ErrInvalid saying UTF-8", tt.name, err)
		}
	}
	// The same in UTF-8 is taken.
	devs, err := Parse(".csv", []byte("id,name,driver\ntracker-1,Müller,José\n"))
	if err != nil || devs["tracker-1"].Name != "Müller" || devs["tracker-1"].Labels["driver"] != "José" {
		t.Fatalf("a UTF-8 CSV: %+v, %v", devs, err)
	}
}

// The registry reloads a changed file, and keeps the last good one when the
// new content does not parse.
func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.yaml")
	if err := os.WriteFile(path, []byte(sampleYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := New(path, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Both series of the reload counter from 0: one that first appears at
	// 1 is no increase to Prometheus (increase and rate need two samples),
	// and an alert on increase(...{result="error"}[10m]) > 0 never fired
	// for the first bad file. Before, neither existed until its first
	// reload.
	for _, result := range []string{"ok", "error"} {
		if n := len(testkit.Series(t, reg, "ingest_registry_reloads_total")); n != 2 || counter(t, reg, result) != 0 {
			t.Errorf("before the first reload: %d series, %q at %v", n, result, counter(t, reg, result))
		}
	}
	r.interval = 5 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if d, ok := r.Lookup("sensor-9"); !ok || d.Group != "greenhouse" {
		t.Fatalf("lookup %+v %v", d, ok)
	}
	if err := os.WriteFile(path, []byte("devices:\n  - id: sensor-9\n    group: orchard\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the new content applied", 10*time.Second, func() bool { d, _ := r.Lookup("sensor-9"); return d.Group == "orchard" })
	if _, ok := r.Lookup("tracker-001"); ok {
		t.Fatal("removed device still present")
	}
	if err := os.WriteFile(path, []byte("devices: [broken\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the failed reload counted", 10*time.Second, func() bool { return counter(t, reg, "error") == 1 })
	if d, ok := r.Lookup("sensor-9"); !ok || d.Group != "orchard" {
		t.Fatalf("a bad file replaced the registry: %+v %v", d, ok)
	}
}

func TestEmptyPath(t *testing.T) {
	r, err := New("", nil, nil)
	if err != nil || r.Len() != 0 {
		t.Fatalf("%v %d", err, r.Len())
	}
	if _, err := New(filepath.Join(t.TempDir(), "missing.yaml"), nil, nil); err == nil {
		t.Fatal("missing file accepted")
	}
}

// counter is ingest_registry_reloads_total for result.
func counter(t *testing.T, reg *prometheus.Registry, result string) float64 {
	return testkit.Metric(t, reg, "ingest_registry_reloads_total", "result", result)
}

func FuzzParseYAML(f *testing.F) {
	fuzzParse(f, ".yaml", sampleYAML, "devices: []", "devices:\n  - id: a\n    disabled: true\n")
}

func FuzzParseCSV(f *testing.F) {
	fuzzParse(f, ".csv", sampleCSV, "id\n", "id,disabled,x\na,true,1\nb,,2\n")
}

// fuzzParse fuzzes Parse of a file named *ext: it fails with ErrInvalid,
// or every device it returns is valid and under its own id.
func fuzzParse(f *testing.F, ext string, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		devs, err := Parse(ext, b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		for id, d := range devs {
			if id != d.ID || validate(d) != nil {
				t.Fatalf("accepted an invalid device %+v", d)
			}
		}
	})
}

// A file rewritten in place reads empty or half-written for a moment; a
// content is applied only once two polls in a row read it.
func TestReloadWaitsForAStableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.yaml")
	if err := os.WriteFile(path, []byte(sampleYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Truncated: read once, then the new content is written.
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.reload()
	if _, ok := r.Lookup("sensor-9"); !ok {
		t.Fatal("an empty file read once replaced the registry")
	}
	if err := os.WriteFile(path, []byte("devices:\n  - id: sensor-9\n    group: orchard\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.reload()
	if d, _ := r.Lookup("sensor-9"); d.Group != "greenhouse" {
		t.Fatalf("a content read once was applied: %+v", d)
	}
	r.reload()
	if d, _ := r.Lookup("sensor-9"); d.Group != "orchard" {
		t.Fatalf("a content read twice was not applied: %+v", d)
	}
}

// Close unregisters the metrics of a registry that never ran, as Run does
// when it returns; it may be called again, and a new registry can then
// register on the same Registerer.
func TestCloseUnregisters(t *testing.T) {
	reg := prometheus.NewRegistry()
	r2 := testkit.CheckCloseUnregisters(t, reg, "registry", func() (*Registry, error) { return New("", reg, nil) })
	testkit.CheckRunUnregisters(t, reg, r2.Run)
}

// A writer held up between the truncate and the write leaves the file empty
// for as long as it likes: an empty file, read at any number of polls, never
// replaces a registry that has devices. A registry with none is written as
// such, and then an empty file changes nothing.
func TestReloadRefusesAnEmptyFile(t *testing.T) {
	for _, tt := range []struct{ name, full, none string }{
		{"devices.yaml", sampleYAML, "devices: []\n"},
		{"devices.csv", sampleCSV, "id,name,group\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), tt.name)
			write := func(s string) {
				t.Helper()
				if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			write(tt.full)
			reg := prometheus.NewRegistry()
			r, err := New(path, reg, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, empty := range []string{"", " \n\n"} {
				write(empty)
				for range 3 {
					r.reload()
				}
				if r.Len() != 2 {
					t.Fatalf("an empty file %q read at three polls left %d devices, want 2", empty, r.Len())
				}
			}
			if got := counter(t, reg, "ok") + counter(t, reg, "error"); got != 0 {
				t.Fatalf("an empty file counted as %v reloads", got)
			}
			write(tt.full)
			r.reload()
			write(tt.none)
			r.reload()
			r.reload()
			if r.Len() != 0 {
				t.Fatalf("a registry written with no devices has %d", r.Len())
			}
			write("")
			r.reload()
			r.reload()
			if r.Len() != 0 || counter(t, reg, "error") != 0 {
				t.Fatalf("an empty file after an empty registry: %d devices, %v errors", r.Len(), counter(t, reg, "error"))
			}
		})
	}
}

// A device is disabled in YAML with disabled: true, in CSV with a disabled
// column; a value that is not a yes or a no refuses the file.
func TestDisabled(t *testing.T) {
	for _, c := range []struct {
		ext, body string
		want      map[string]bool
		bad       bool
	}{
		{".yaml", "devices:\n  - id: a\n  - id: b\n    disabled: true\n  - id: c\n    disabled: false\n", map[string]bool{"a": false, "b": true, "c": false}, false},
		{".csv", "id,disabled,driver\na,,x\nb,true,y\nc,no,z\nd,1,w\n", map[string]bool{"a": false, "b": true, "c": false, "d": true}, false},
		{".csv", "id,disabled\na,maybe\n", nil, true},
		// A column spelled otherwise than the registry's (Disabled, NAME)
		// would be a label, the device not disabled: the file is refused.
		{".csv", "id,Disabled\na,true\n", nil, true},
		{".csv", "ID,name\na,x\n", nil, true},
		{".csv", "id, Site ,driver\na,x,y\n", nil, true},
		{".yaml", "devices:\n  - id: a\n    disabled: maybe\n", nil, true},
	} {
		devs, err := Parse(c.ext, []byte(c.body))
		if c.bad {
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Errorf("%s %q: err %v, want ErrInvalid", c.ext, c.body, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s %q: %v", c.ext, c.body, err)
		}
		for id, want := range c.want {
			if devs[id].Disabled != want {
				t.Errorf("%s: device %s disabled %v, want %v", c.ext, id, devs[id].Disabled, want)
			}
			if _, isLabel := devs[id].Labels["disabled"]; isLabel {
				t.Errorf("%s: device %s has disabled as a label", c.ext, id)
			}
		}
	}
}

// Changed is closed when the registry takes a new content, and not before;
// Disabled answers from the new content by then.
func TestChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.yaml")
	if err := os.WriteFile(path, []byte("devices:\n  - id: a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.interval = 5 * time.Millisecond
	ch := r.Changed()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if r.Disabled("a") || r.Disabled("unknown") {
		t.Fatal("a device is disabled before any file says so")
	}
	// The same content again: no change.
	if err := os.WriteFile(path, []byte("devices:\n  - id: a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("devices:\n  - id: a\n    disabled: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Changed was not closed after the file changed")
	}
	if !r.Disabled("a") {
		t.Fatal("Changed closed before the new content was in use")
	}
	select {
	case <-r.Changed():
		t.Fatal("the next Changed is closed already")
	default:
	}
}

// largeRegistry is a registry of n devices in the format of ext, each
// with a name, a group, a site, a type and a label; disabled is the
// device disabled in it, if any.
func largeRegistry(ext string, n int, disabled int) []byte {
	var b []byte
	if ext == ".csv" {
		b = append(b, "id,name,group,site,type,disabled,driver\n"...)
	} else {
		b = append(b, "devices:\n"...)
	}
	for i := range n {
		dis := i == disabled
		if ext == ".csv" {
			b = fmt.Appendf(b, "dev-%06d,Truck %d,g%d,s%d,gps,%v,d%d\n", i, i, i%100, i%10, dis, i)
			continue
		}
		b = fmt.Appendf(b, "  - id: dev-%06d\n    name: Truck %d\n    group: g%d\n    site: s%d\n    type: gps\n    disabled: %v\n    labels:\n      driver: d%d\n", i, i, i%100, i%10, dis, i)
	}
	return b
}

// BenchmarkReloadLarge: a registry of 100,000 devices edited (one device
// disabled, then another) and reloaded, while a goroutine looks devices up
// as the ingest path does. ns/op is one reload's two polls, the parse
// included (how much later than two polls a revocation takes effect;
// docs/devices.md quotes it); lookup-max-ns the longest a Lookup took
// meanwhile. Lookup reads an atomic pointer and never waits for a reload:
// what lookup-max-ns shows is the scheduler's and the garbage collector's
// delay on a machine the parse keeps busy (tens to hundreds of
// milliseconds on a shared 2-core machine), not a lock.
func BenchmarkReloadLarge(b *testing.B) {
	const n = 100_000
	for _, ext := range []string{".yaml", ".csv"} {
		b.Run(ext[1:], func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "devices"+ext)
			contents := [2][]byte{largeRegistry(ext, n, 1), largeRegistry(ext, n, 2)}
			if err := os.WriteFile(path, contents[1], 0o644); err != nil {
				b.Fatal(err)
			}
			r, err := New(path, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("dev-%06d", i)
			}
			stop := make(chan struct{})
			done := make(chan time.Duration)
			go func() {
				var longest time.Duration
				for i := 0; ; i++ {
					select {
					case <-stop:
						done <- longest
						return
					default:
					}
					start := time.Now()
					r.Lookup(ids[i%n])
					longest = max(longest, time.Since(start))
				}
			}()
			b.ResetTimer()
			for i := range b.N {
				want := i%2 + 1 // the device the new content disables
				b.StopTimer()
				if err := os.WriteFile(path, contents[i%2], 0o644); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				r.reload()
				r.reload()
				if !r.Disabled(ids[want]) {
					b.Fatal("the new content was not applied")
				}
			}
			b.StopTimer()
			close(stop)
			b.ReportMetric(float64(<-done), "lookup-max-ns")
		})
	}
}
