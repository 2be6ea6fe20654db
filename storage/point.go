package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wire"
)

// Point is one device message turned into data: what every sink writes.
//
// Every numeric field of the message becomes a sample of the series
// (field name, Labels) at Time; every string field is kept with the point in
// Strings (as labels of an info series in Prometheus-style stores, as string
// fields in InfluxDB). docs/storage.md describes the mapping.
type Point struct {
	// Device is the device id the frontend authenticated.
	Device string
	// Time is the device's own timestamp when it sent a valid one, else the
	// receive time fixed at the frontend at first receipt. Both survive
	// retransmission unchanged, so a repeated delivery of a message yields
	// the same Time.
	Time time.Time
	// Labels are the device's labels from the registry (name, group, site,
	// type and custom labels), the same on every series of the device, and
	// TopicLabel when the message came over MQTT to a topic below
	// devices/{id}/. Nil when there are none. Device is not among them.
	Labels map[string]string
	// Numbers are the message's numeric fields, nested objects flattened
	// with dots ("gps.lat"), booleans as 0 and 1.
	Numbers map[string]float64
	// Strings are the message's string fields, flattened the same way.
	Strings map[string]string
	// Origin and Index are the message's identity, taken from the
	// middletier record (the frontend log it was first written to, and
	// its index there): the same for every delivery of the message. ID
	// spells them as one string.
	Origin string
	Index  uint64
	// Received is the receive time fixed at the frontend, whatever Time is
	// (for the delivery latency; sinks do not store it).
	Received time.Time
}

// ID is the message's identity as one string, origin + "/" + index.
func (p *Point) ID() string { return p.Origin + "/" + strconv.FormatUint(p.Index, 10) }

// NewPoint turns a middletier record into a point. labels, if not nil,
// gives a device's registry labels (nil for an unknown device).
//
// It is deterministic: the same record always gives the same point, so a
// repeated delivery writes the same samples.
func NewPoint(rec wire.Record, labels func(device string) map[string]string) (Point, error) {
	var p Point
	if err := fillPoint(&p, rec, labels); err != nil {
		return Point{}, err
	}
	return p, nil
}

// fillPoint is NewPoint into *p, which it overwrites whole but for the
// maps of fields, which it empties and fills again (resetFields): a
// writer that is done with a batch's points makes the next batch's in
// them without allocating their maps again.
func fillPoint(p *Point, rec wire.Record, labels func(device string) map[string]string) error {
	env, err := envelope.Decode(rec.Data)
	if err != nil {
		return fmt.Errorf("decode envelope: %w", err)
	}
	// A device time is taken from protocol.MinDeviceTime on, as the
	// frontend checks it, but never compared with the clock here: a
	// message delivered again days later must give the same point.
	ns := env.Received
	if env.HasDeviceTime && env.DeviceTime >= protocol.MinDeviceTime {
		ns = env.DeviceTime
	}
	*p = Point{
		Device: env.Device,
		Time:   time.Unix(0, ns).UTC(),
		Origin: rec.Origin,
		Index:  rec.Index,

		Received: time.Unix(0, env.Received).UTC(),

		Numbers: p.Numbers,
		Strings: p.Strings,
	}
	if env.Topic == wire.CommandEventTopic {
		cp, err := commandPoint(*p, &env, labels)
		if err != nil {
			return err
		}
		*p = cp
		return nil
	}
	if err := Flatten(env.Payload, p); err != nil {
		return err
	}
	if labels != nil {
		p.Labels = labels(env.Device)
	}
	if env.Topic != "" {
		// The registry's map is shared by every point of the device.
		l := make(map[string]string, len(p.Labels)+1)
		maps.Copy(l, p.Labels)
		l[TopicLabel] = env.Topic // the message's own topic wins over a registry label of that name
		p.Labels = l
	}
	return nil
}

// maxReusedFields: a map of fields that held more than this many is not
// reused (a cleared map keeps its size), so that one large message does
// not leave large maps behind.
const maxReusedFields = 64

// resetFields gives p empty maps of fields: those it holds, cleared, or
// new ones with room for numbers and strings.
func resetFields(p *Point, numbers, strings int) {
	if p.Numbers == nil || len(p.Numbers) > maxReusedFields {
		p.Numbers = make(map[string]float64, numbers)
	} else {
		clear(p.Numbers)
	}
	if p.Strings == nil || len(p.Strings) > maxReusedFields {
		p.Strings = make(map[string]string, strings)
	} else {
		clear(p.Strings)
	}
}

// TopicLabel is the label that carries what followed devices/{id}/ in the
// MQTT topic a message was published to (docs/mqtt.md).
const TopicLabel = "topic"

// The series and labels of command events (docs/commands.md, "Events").
const (
	// CommandEventsSeries is 1 at each change of a command's state.
	CommandEventsSeries = "command_events"
	// CommandLatencySeries is, at each change but queued, the seconds
	// from the command's acceptance to it.
	CommandLatencySeries = "command_latency_seconds"
	// CommandLabel carries the command's name; StateLabel the state it
	// changed to. The command id is never a label: one series per command
	// would grow the store without bound.
	CommandLabel = "command"
	StateLabel   = "state"
)

// commandPoint makes the point of a command event: the device's labels
// with CommandLabel and StateLabel (which take the place of registry labels
// of those names), and the samples CommandEventsSeries and
// CommandLatencySeries. Nothing else of the event is stored: its id,
// status and result are on the live feed and in the command API.
func commandPoint(p Point, env *envelope.Envelope, labels func(string) map[string]string) (Point, error) {
	ev, err := wire.DecodeCommandEvent(env.Payload)
	if err != nil {
		return Point{}, err
	}
	var reg map[string]string
	if labels != nil {
		reg = labels(env.Device)
	}
	l := make(map[string]string, len(reg)+2)
	maps.Copy(l, reg)
	l[CommandLabel], l[StateLabel] = ev.Name, ev.State
	p.Labels = l
	p.Numbers = map[string]float64{CommandEventsSeries: 1}
	p.Strings = map[string]string{}
	if ev.LatencyMS != nil {
		p.Numbers[CommandLatencySeries] = *ev.LatencyMS / 1e3
	}
	return p, nil
}

// Flatten decodes a device message's JSON object into p.Numbers and
// p.Strings (emptied first; maps p holds are reused): nested objects and arrays are flattened with dots ("gps.lat",
// "cells.0"), booleans become 0 and 1, nulls and the reserved members id,
// ts and device (at the top level) are left out, and a number beyond the
// float64 range is left out. Where two paths flatten to the same name
// ({"a":{"b":1},"a.b":2}), the one that sorts last wins, whatever the
// order in the message.
func Flatten(payload []byte, p *Point) error {
	if flattenOnePass(payload, p) {
		return nil
	}
	return flattenDecoded(payload, p)
}

// flattenDecoded is Flatten the general way: the payload decoded into a map,
// its members flattened in the order of their names.
func flattenDecoded(payload []byte, p *Point) error {
	d := json.NewDecoder(bytes.NewReader(payload))
	d.UseNumber()
	var obj map[string]any
	if err := d.Decode(&obj); err != nil {
		return fmt.Errorf("decode payload: %w", err)
	}
	if obj == nil {
		return errors.New("decode payload: not a JSON object")
	}
	if d.More() {
		return errors.New("decode payload: data after the object")
	}
	if _, err := d.Token(); err != io.EOF {
		return errors.New("decode payload: data after the object")
	}
	resetFields(p, 0, 0)
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		if protocol.Reserved(k) { // the message id, its ts, the device id: not data
			continue
		}
		flatten(k, obj[k], p)
	}
	return nil
}

func flatten(name string, v any, p *Point) {
	switch v := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(v)) {
			flatten(name+"."+k, v[k], p)
		}
	case []any:
		for i, e := range v {
			flatten(name+"."+strconv.Itoa(i), e, p)
		}
	case json.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil { // beyond float64: ±Inf is not what was sent
			return
		}
		p.Numbers[name] = f
	case bool:
		if v {
			p.Numbers[name] = 1
		} else {
			p.Numbers[name] = 0
		}
	case string:
		p.Strings[name] = v
	}
}

// Reasons a Limiter drops a field: the values of
// ingest_storage_dropped_fields_total's reason label.
const (
	// DropSeriesLimit: the field would have made a new series for a device
	// already at LimitOptions.MaxSeriesPerDevice.
	DropSeriesLimit = "series_limit"
	// DropNameCollision: another field of the same kind (numeric or
	// string) in the point makes the same series name (MetricName), and
	// sorts before it ("a.b" and "a_b": "a.b" is kept).
	DropNameCollision = "name_collision"
	// DropReservedName: the field's name begins with "__", which
	// Prometheus-style stores reserve (the frontend refuses such messages;
	// this catches records written before it did).
	DropReservedName = "reserved_name"
)

// LimitOptions configure a Limiter. Zero fields mean their defaults.
type LimitOptions struct {
	// MaxSeriesPerDevice bounds the series a device has written recently:
	// one per numeric field, one per string field and value (an info
	// series), each per MQTT topic (TopicLabel). A field that would make a device's series one more is
	// dropped and counted, whatever its message; the device's known series
	// keep being written. Default 2,000, room for a full message of the
	// frontend's default 1,000 fields and as many string values again.
	MaxSeriesPerDevice int
	// Window is how long a series that is no longer written still counts
	// toward its device's bound: from one to two windows, as a
	// Prometheus-style head keeps a series that went quiet for a while.
	// Default 1h.
	Window time.Duration
	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
}

// DefaultLimitOptions returns the defaults that zero fields stand for.
func DefaultLimitOptions() LimitOptions {
	return LimitOptions{MaxSeriesPerDevice: 2000, Window: time.Hour, Now: time.Now}
}

// Limiter bounds what the points of a device may add to a store, before a
// sink writes them: the number of series each device has (its known series
// are always written, a field that would make a new one past the bound is
// dropped), and the series names a point's fields make (where two fields
// of one kind make one series name, the first in name order is kept; a name
// beginning with "__" is dropped). Every dropped field is counted in
// ingest_storage_dropped_fields_total{reason}; a device's first drop for
// its series bound in each window is logged.
//
// The known series of a device are kept in memory as 64-bit hashes in two
// sets, the current window's and the previous one's: at most
// MaxSeriesPerDevice hashes per device, about 40 bytes each with the sets'
// room to grow, and a few hundred bytes per device (measured: 0.5 KiB for a
// device of 10 series, 74 KiB for one at the default bound). Devices that
// wrote nothing for two windows are forgotten. They are not kept
// across restarts: after one, a device's first MaxSeriesPerDevice series
// in arrival order are its known ones.
//
// Its methods may be called from several goroutines; one mutex serialises
// them.
type Limiter struct {
	opts LimitOptions
	seed maphash.Seed
	lg   *slog.Logger
	reg  prometheus.Registerer

	dropped *prometheus.CounterVec

	mu      sync.Mutex
	devices map[string]*deviceSeries
	started time.Time // the current window's start
	names   []string  // scratch, under mu
}

// deviceSeries are the hashes of a device's series written in the current
// window and in the previous one; a hash is in at most one of them.
type deviceSeries struct {
	cur, prev map[uint64]struct{}
	warned    bool // its drop for the series bound was logged in this window
}

// NewLimiter returns a Limiter. reg and lg may be nil.
func NewLimiter(opts LimitOptions, reg prometheus.Registerer, lg *slog.Logger) (*Limiter, error) {
	d := DefaultLimitOptions()
	if opts.MaxSeriesPerDevice < 0 || opts.Window < 0 {
		return nil, fmt.Errorf("storage: validate limit options: max series per device %d, window %v", opts.MaxSeriesPerDevice, opts.Window)
	}
	if opts.MaxSeriesPerDevice == 0 {
		opts.MaxSeriesPerDevice = d.MaxSeriesPerDevice
	}
	if opts.Window == 0 {
		opts.Window = d.Window
	}
	if opts.Now == nil {
		opts.Now = d.Now
	}
	lg = lifecycle.Logger(lg)
	l := &Limiter{opts: opts, seed: maphash.MakeSeed(), lg: lg, reg: reg, devices: map[string]*deviceSeries{}, started: opts.Now()}
	l.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ingest_storage_dropped_fields_total",
		Help: "Fields of points dropped before the sink, by reason: series_limit (a new series of a device at its bound), name_collision (another field makes the same series name), reserved_name (a name beginning with __).",
	}, []string{"reason"})
	for _, r := range []string{DropSeriesLimit, DropNameCollision, DropReservedName} {
		l.dropped.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(l.dropped); err != nil {
			return nil, fmt.Errorf("storage: register limiter metrics: %w", err)
		}
	}
	return l, nil
}

// Apply drops from points, in place, the fields the limits refuse, and
// counts them. It is deterministic for a given state: the fields of a point
// are taken in name order, numeric ones first.
func (l *Limiter) Apply(points []Point) { l.apply(points, true) }

// apply is Apply; with fast false, it takes no point as known (the tests
// hold the two ways to one another).
func (l *Limiter) apply(points []Point, fast bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.opts.Now(); now.Sub(l.started) >= l.opts.Window {
		l.rotate(now)
	}
	var reserved, collisions, overLimit int
	var h maphash.Hash
	h.SetSeed(l.seed)
	for i := range points {
		p := &points[i]
		if fast && l.known(&h, p) {
			continue
		}
		reserved += dropReserved(p.Numbers) + dropReserved(p.Strings)
		collisions += dropCollisions(p.Numbers, &l.names) + dropCollisions(p.Strings, &l.names)
		overLimit += l.limitSeries(p)
	}
	l.count(DropReservedName, reserved)
	l.count(DropNameCollision, collisions)
	l.count(DropSeriesLimit, overLimit)
}

func (l *Limiter) count(reason string, dropped int) {
	if dropped > 0 {
		l.dropped.WithLabelValues(reason).Add(float64(dropped))
	}
}

// known reports whether Apply would leave p as it is and change nothing:
// no name of p is reserved or other than its series name (so none
// collide), and every field is a series of its device in the current
// window. Nearly every point is so, its device writing the fields it wrote
// before; known looks each field up once, where the drops and limitSeries
// would each pass over the fields, and sort them.
func (l *Limiter) known(h *maphash.Hash, p *Point) bool {
	d := l.devices[p.Device]
	if d == nil || len(p.Numbers)+len(p.Strings) > len(d.cur) {
		return false
	}
	topic := seriesTopic(p)
	for name := range p.Numbers {
		if !cleanName(name) {
			return false
		}
		if _, ok := d.cur[l.seriesHash(h, topic, name, "", true)]; !ok {
			return false
		}
	}
	for name, value := range p.Strings {
		if !cleanName(name) {
			return false
		}
		if _, ok := d.cur[l.seriesHash(h, topic, name, value, false)]; !ok {
			return false
		}
	}
	return true
}

// cleanName reports whether a field name is kept as it is: not reserved,
// and its own series name.
func cleanName(name string) bool {
	return !strings.HasPrefix(name, "__") && MetricName(name) == name
}

// seriesTopic is what, besides a field, tells a device's series apart: its
// topic, and its command name and state.
func seriesTopic(p *Point) string {
	return p.Labels[TopicLabel] + "\xff" + p.Labels[CommandLabel] + "\xff" + p.Labels[StateLabel]
}

// seriesHash is the hash of a device's series in deviceSeries: a numeric
// field's, or a string field's with one value.
func (l *Limiter) seriesHash(h *maphash.Hash, topic, name, value string, number bool) uint64 {
	// 0xff, never in UTF-8, separates the parts.
	h.Reset()
	if number {
		h.WriteByte(0)
	} else {
		h.WriteByte(1)
	}
	h.WriteString(topic)
	h.WriteByte(0xff)
	h.WriteString(name)
	if !number {
		h.WriteByte(0xff)
		h.WriteString(value)
	}
	return h.Sum64()
}

// rotate starts a new window at now: the current window's series become
// the previous one's, and those of the previous one are forgotten (all of
// them when more than a window passed since the last Apply); so is a
// device with none left.
func (l *Limiter) rotate(now time.Time) {
	skipped := now.Sub(l.started) >= 2*l.opts.Window
	for dev, d := range l.devices {
		d.prev, d.cur, d.warned = d.cur, nil, false
		if skipped || len(d.prev) == 0 {
			delete(l.devices, dev)
		}
	}
	l.started = now
}

// limitSeries drops the fields of p that would make a new series of its
// device past the bound, and returns how many it dropped.
func (l *Limiter) limitSeries(p *Point) (dropped int) {
	d := l.devices[p.Device]
	if d == nil {
		if len(p.Numbers)+len(p.Strings) == 0 {
			return 0
		}
		d = &deviceSeries{}
		l.devices[strings.Clone(p.Device)] = d
	}
	topic := seriesTopic(p)
	var h maphash.Hash
	h.SetSeed(l.seed)
	admit := func(name, value string, number bool) bool {
		k := l.seriesHash(&h, topic, name, value, number)
		if _, ok := d.cur[k]; ok {
			return true
		}
		if d.cur == nil {
			d.cur = map[uint64]struct{}{}
		}
		if _, ok := d.prev[k]; ok {
			delete(d.prev, k)
			d.cur[k] = struct{}{}
			return true
		}
		if len(d.cur)+len(d.prev) >= l.opts.MaxSeriesPerDevice {
			if !d.warned {
				d.warned = true
				l.lg.Warn("storage: device at its series limit; fields that would make new series are dropped",
					"device", p.Device, "limit", l.opts.MaxSeriesPerDevice, "field", name)
			}
			return false
		}
		d.cur[k] = struct{}{}
		return true
	}
	for _, name := range sortedKeys(&l.names, p.Numbers) {
		if !admit(name, "", true) {
			delete(p.Numbers, name)
			dropped++
		}
	}
	for _, name := range sortedKeys(&l.names, p.Strings) {
		if !admit(name, p.Strings[name], false) {
			delete(p.Strings, name)
			dropped++
		}
	}
	return dropped
}

// dropReserved drops the fields whose name begins with "__".
func dropReserved[V any](fields map[string]V) (dropped int) {
	for name := range fields {
		if strings.HasPrefix(name, "__") {
			delete(fields, name)
			dropped++
		}
	}
	return dropped
}

// dropCollisions drops every field whose series name (MetricName) is that of
// a field before it in name order. Where every name is a valid series name
// already, no two can collide.
func dropCollisions[V any](fields map[string]V, scratch *[]string) (dropped int) {
	clean := true
	for name := range fields {
		if MetricName(name) != name {
			clean = false
			break
		}
	}
	if clean {
		return 0
	}
	seen := make(map[string]struct{}, len(fields))
	for _, name := range sortedKeys(scratch, fields) {
		m := MetricName(name)
		if _, ok := seen[m]; ok {
			delete(fields, name)
			dropped++
			continue
		}
		seen[m] = struct{}{}
	}
	return dropped
}

// Sink returns s with the Limiter applied to the points of every Write
// before s writes them. The fields it drops are removed from the caller's
// points, so what the caller counts after Write is what was written. A
// sink whose Writes may overlap (a ConcurrentSink, the embedded TSDB) stays
// so. Close closes s and unregisters the Limiter's metrics.
func (l *Limiter) Sink(s Sink) ConcurrentSink { return limitedSink{s: s, l: l} }

type limitedSink struct {
	s Sink
	l *Limiter
}

func (s limitedSink) Write(ctx context.Context, points []Point) error {
	s.l.Apply(points)
	return s.s.Write(ctx, points)
}

func (s limitedSink) ConcurrentWrites() bool {
	c, ok := s.s.(ConcurrentSink)
	return ok && c.ConcurrentWrites()
}

func (s limitedSink) Close() error {
	if s.l.reg != nil {
		s.l.reg.Unregister(s.l.dropped)
	}
	return s.s.Close()
}

// sortedKeys returns m's keys in order, in *buf's storage.
func sortedKeys[V any](buf *[]string, m map[string]V) []string {
	*buf = (*buf)[:0]
	for k := range m {
		*buf = append(*buf, k)
	}
	slices.Sort(*buf)
	return *buf
}
