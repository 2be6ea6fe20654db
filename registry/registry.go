// Package registry is the device registry: metadata about each device (name,
// group, site, type and any labels) kept in a YAML or CSV file that
// operators edit. Storage writers put its labels on every series of a device;
// the live feed filters by its groups. The file is reloaded when it changes;
// a file that does not parse, and an empty file (a rewrite in place between
// its truncate and its write), leave the last good registry in place.
//
// YAML (.yaml, .yml):
//
//	devices:
//	  - id: tracker-001
//	    name: Truck 1
//	    group: fleet-north
//	    site: depot-a
//	    type: gps
//	    labels:
//	      driver: alice
//	  - id: tracker-002
//	    disabled: true
//
// CSV (.csv): a header row naming the columns; id is required, name, group,
// site, type and disabled are optional, and every other column is a label
// (a byte order mark before the header is passed over):
//
//	id,name,group,site,type,disabled,driver
//	tracker-001,Truck 1,fleet-north,depot-a,gps,,alice
//	tracker-002,Truck 2,fleet-north,depot-a,gps,true,bob
//
// A disabled device is refused by the frontends that follow the registry,
// and its open connections are closed, as soon as they take the file
// (Changed). In CSV, disabled is true, false (or 1, 0, yes, no), or empty
// for false.
//
// Label names follow Prometheus's rules ([a-zA-Z_][a-zA-Z0-9_]*, not starting
// with "__") and must not be one of device, name, group, site or type. Ids
// and values are UTF-8.
package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/metricset"
)

// Device is what the registry knows of one device.
type Device struct {
	ID     string            `yaml:"id"`
	Name   string            `yaml:"name"`
	Group  string            `yaml:"group"`
	Site   string            `yaml:"site"`
	Type   string            `yaml:"type"`
	Labels map[string]string `yaml:"labels"`
	// Disabled devices are refused at connect, and their open connections
	// closed, by the frontends that follow the registry.
	Disabled bool `yaml:"disabled"`
}

// AllLabels returns the device's labels with name, group, site and type
// among them (those that are set).
func (d Device) AllLabels() map[string]string {
	out := make(map[string]string, len(d.Labels)+4)
	for k, v := range d.Labels {
		out[k] = v
	}
	for k, v := range map[string]string{"name": d.Name, "group": d.Group, "site": d.Site, "type": d.Type} {
		if v != "" {
			out[k] = v
		}
	}
	return out
}

// ErrInvalid is wrapped by every error about a registry file's content.
var ErrInvalid = errors.New("registry: invalid")

// Registry holds the devices of one file. Lookup is safe for concurrent use
// and never blocks on a reload.
type Registry struct {
	path     string
	interval time.Duration
	lg       *slog.Logger
	devices  atomic.Pointer[map[string]Device]
	sum      [32]byte // of the content in use
	seen     [32]byte // of a new content read once, applied when read again
	bad      [32]byte // of the last content that did not parse, counted once until a good one is applied
	changed  atomic.Pointer[chan struct{}]

	m struct {
		devices prometheus.Gauge
		reloads *prometheus.CounterVec
	}
	set       *metricset.Set // the metrics, registered
	closeOnce sync.Once
}

// New loads the registry at path. An empty path is an empty registry that
// never changes. It starts nothing: Run follows the file. reg and lg may be
// nil.
func New(path string, reg prometheus.Registerer, lg *slog.Logger) (*Registry, error) {
	lg = lifecycle.Logger(lg)
	r := &Registry{path: path, interval: 2 * time.Second, lg: lg}
	r.m.devices = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_registry_devices", Help: "Devices in the device registry."})
	r.m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_registry_reloads_total",
		Help: "Reloads of the device registry file, by result (ok, error)."}, []string{"result"})
	// Both from 0: a series that first appears at 1 is no increase to
	// Prometheus, and an alert on the first bad file would not fire.
	r.m.reloads.WithLabelValues("ok")
	r.m.reloads.WithLabelValues("error")
	empty := map[string]Device{}
	r.devices.Store(&empty)
	ch := make(chan struct{})
	r.changed.Store(&ch)
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("registry: read %s: %w", path, err)
		}
		devs, err := Parse(filepath.Ext(path), b)
		if err != nil {
			return nil, fmt.Errorf("registry: %s: %w", path, err)
		}
		r.devices.Store(&devs)
		r.sum = sha256.Sum256(b)
	}
	r.m.devices.Set(float64(len(*r.devices.Load())))
	set, err := metricset.Register(reg, r.m.devices, r.m.reloads)
	if err != nil {
		return nil, fmt.Errorf("registry: register metrics: %w", err)
	}
	r.set = set
	return r, nil
}

// Lookup returns the device with the given id.
func (r *Registry) Lookup(id string) (Device, bool) {
	d, ok := (*r.devices.Load())[id]
	return d, ok
}

// Disabled reports whether the device with the given id is listed and
// disabled.
func (r *Registry) Disabled(id string) bool {
	d, ok := r.Lookup(id)
	return ok && d.Disabled
}

// Changed returns a channel that is closed when the registry next takes a
// new content of its file. Take it before reading the registry: a change
// between the two then closes it too.
func (r *Registry) Changed() <-chan struct{} { return *r.changed.Load() }

// Len returns the number of devices.
func (r *Registry) Len() int { return len(*r.devices.Load()) }

// Run reloads the file whenever its content changes, until ctx ends. It
// polls, which also follows the symlink swaps of a Kubernetes ConfigMap; a
// new content is applied once two polls in a row read it, so a file being
// rewritten in place is not taken half-written unless its writer stalls
// for longer than a poll (a file renamed into place never is). An empty file (no bytes,
// or only white space) never replaces a registry that has devices, however
// long it stays: it is what every rewrite in place looks like between the
// truncate and the write, and a writer can be held up for longer than a
// poll. It is logged once; a registry with no devices is written as
// "devices: []" or a CSV header alone. A file that cannot be read or
// parsed is logged and counted (a content that does not parse, once), and
// the last good registry stays in place. When ctx ends it unregisters the
// metrics (Close) and returns nil; Lookup keeps answering from the last
// registry.
func (r *Registry) Run(ctx context.Context) error {
	defer r.Close()
	if r.path == "" {
		<-ctx.Done()
		return nil
	}
	return lifecycle.Every(ctx, r.interval, r.reload)
}

// Close unregisters the registry's metrics, as Run does when it returns:
// for a Registry that never ran. Lookup keeps answering. It is idempotent.
func (r *Registry) Close() error {
	r.closeOnce.Do(r.set.Unregister)
	return nil
}

func (r *Registry) reload() {
	b, err := os.ReadFile(r.path)
	var devs map[string]Device
	if err == nil {
		sum := sha256.Sum256(b)
		if sum == r.sum || sum == r.bad {
			// Two polls in a row means in a row: a content seen before
			// this one is seen afresh next time (a rewrite in place of
			// the same content passes through the same half-written
			// prefix each time).
			r.seen = [sha256.Size]byte{}
			if sum == r.sum {
				// The bad content is gone: written again (the same
				// edit retried), it is a new attempt, told again.
				r.bad = [sha256.Size]byte{}
			}
			return
		}
		if sum != r.seen {
			// Apply a new content only once two polls in a row read it:
			// a file being rewritten in place (truncated, then written)
			// reads empty or half-written in between, and may parse.
			r.seen = sum
			return
		}
		if len(bytes.TrimSpace(bytes.TrimPrefix(b, bom))) == 0 && r.Len() > 0 {
			// An empty file is what a rewrite in place looks like
			// between its truncate and its write, for as long as the
			// writer is held up: never take it for "no devices". A
			// registry with none says so (devices: [], or a CSV
			// header alone).
			r.bad = sum
			if r.lg != nil {
				r.lg.Warn("registry: file is empty; keeping the last registry (write devices: [] or a CSV header for none)", "path", r.path, "devices", r.Len())
			}
			return
		}
		if devs, err = Parse(filepath.Ext(r.path), b); err != nil {
			r.bad = sum
		}
	}
	if err != nil {
		r.seen = [sha256.Size]byte{} // a failed read breaks a run of polls too
		r.m.reloads.WithLabelValues("error").Inc()
		r.lg.Error("registry: reload failed; keeping the last good registry", "path", r.path, "err", err)
		return
	}
	r.sum = sha256.Sum256(b)
	r.bad = [sha256.Size]byte{} // a bad content written again later is told again
	r.devices.Store(&devs)
	next := make(chan struct{})
	close(*r.changed.Swap(&next))
	r.m.devices.Set(float64(len(devs)))
	r.m.reloads.WithLabelValues("ok").Inc()
	r.lg.Info("registry: reloaded", "path", r.path, "devices", len(devs))
}

// Parse decodes a registry file's content; ext (".yaml", ".yml" or ".csv")
// says which format.
func Parse(ext string, b []byte) (map[string]Device, error) {
	var list []Device
	var err error
	switch strings.ToLower(ext) {
	case ".yaml", ".yml":
		list, err = parseYAML(b)
	case ".csv":
		list, err = parseCSV(b)
	default:
		return nil, fmt.Errorf("%w: unknown format %q (want .yaml, .yml or .csv)", ErrInvalid, ext)
	}
	if err != nil {
		return nil, err
	}
	out := make(map[string]Device, len(list))
	for i, d := range list {
		if err := validate(d); err != nil {
			return nil, fmt.Errorf("%w: device %d: %w", ErrInvalid, i+1, err)
		}
		if _, dup := out[d.ID]; dup {
			return nil, fmt.Errorf("%w: device id %q listed twice", ErrInvalid, d.ID)
		}
		out[d.ID] = d
	}
	return out, nil
}

func parseYAML(b []byte) ([]Device, error) {
	var doc struct {
		Devices []Device `yaml:"devices"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	// A second document (after ---) would be passed over without a
	// word, and the devices it disables with it.
	for {
		var more yaml.Node
		err := dec.Decode(&more)
		if errors.Is(err, io.EOF) {
			return doc.Devices, nil
		}
		empty := len(more.Content) == 0 || len(more.Content) == 1 && more.Content[0].Tag == "!!null"
		if err != nil || !empty {
			return nil, fmt.Errorf("%w: more than one YAML document (---): put every device under one devices: list", ErrInvalid)
		}
	}
}

// csvColumns are the columns a CSV registry names a device's fields with;
// any other column is a label.
var csvColumns = []string{"id", "name", "group", "site", "type", "disabled"}

// bom is the UTF-8 byte order mark a spreadsheet's "CSV UTF-8" begins
// with.
var bom = []byte("\ufeff")

func parseCSV(b []byte) ([]Device, error) {
	// Else the mark would be part of the first column's name: a header
	// that reads id,… would have no id column.
	b = bytes.TrimPrefix(b, bom)
	rd := csv.NewReader(bytes.NewReader(b))
	rd.TrimLeadingSpace = true
	rows, err := rd.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(rows) == 0 {
		return nil, nil
	}
	header := rows[0]
	col := map[string]int{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		if lower := strings.ToLower(h); lower != h && slices.Contains(csvColumns, lower) {
			// Taken as written it would be a label, and a Disabled
			// column would disable nothing.
			return nil, fmt.Errorf("%w: column %q: the registry's columns are written %q", ErrInvalid, h, lower)
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("%w: column %q twice", ErrInvalid, h)
		}
		col[h] = i
	}
	if _, ok := col["id"]; !ok {
		return nil, fmt.Errorf("%w: no id column", ErrInvalid)
	}
	var out []Device
	for n, row := range rows[1:] {
		d := Device{Labels: map[string]string{}}
		for name, i := range col {
			v := strings.TrimSpace(row[i])
			switch name {
			case "id":
				d.ID = v
			case "name":
				d.Name = v
			case "group":
				d.Group = v
			case "site":
				d.Site = v
			case "type":
				d.Type = v
			case "disabled":
				if d.Disabled, err = parseBool(v); err != nil {
					return nil, fmt.Errorf("%w: row %d: disabled: %w", ErrInvalid, n+2, err)
				}
			default:
				if v != "" {
					d.Labels[name] = v
				}
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// parseBool reads a CSV cell of a yes-or-no column; empty is no.
func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "", "false", "0", "no":
		return false, nil
	case "true", "1", "yes":
		return true, nil
	}
	return false, fmt.Errorf("%q is not true or false", v)
}

var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

func validate(d Device) error {
	if d.ID == "" {
		return errors.New("no id")
	}
	if len(d.ID) > 255 {
		return fmt.Errorf("id of %d bytes", len(d.ID))
	}
	// A file in another encoding (a spreadsheet's legacy "CSV"): its
	// values would reach the stores as they are, where no selector for
	// the intended text matches them (or a store drops the series), and
	// an id so written never matches a token's subject.
	for _, f := range []struct{ name, v string }{{"id", d.ID}, {"name", d.Name}, {"group", d.Group}, {"site", d.Site}, {"type", d.Type}} {
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("%s %q is not valid UTF-8 (save the file as UTF-8)", f.name, f.v)
		}
	}
	for k, v := range d.Labels {
		if !utf8.ValidString(v) {
			return fmt.Errorf("label %s: %q is not valid UTF-8 (save the file as UTF-8)", k, v)
		}
		switch {
		case !labelName.MatchString(k) || strings.HasPrefix(k, "__"):
			return fmt.Errorf("label name %q is not a valid label name", k)
		case k == "device" || k == "name" || k == "group" || k == "site" || k == "type":
			return fmt.Errorf("label name %q is reserved", k)
		}
	}
	return nil
}
