package storage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/ingest-io/ingest/envelope"
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
	// ID is the message's identity, origin + "/" + index, taken from the
	// middletier record: the same for every delivery of the message.
	ID string
	// Received is the receive time fixed at the frontend, whatever Time is
	// (for the delivery latency; sinks do not store it).
	Received time.Time
}

// NewPoint turns a middletier record into a point. labels, if not nil,
// gives a device's registry labels (nil for an unknown device).
//
// It is deterministic: the same record always gives the same point, so a
// repeated delivery writes the same samples.
func NewPoint(rec wire.Record, labels func(device string) map[string]string) (Point, error) {
	env, err := envelope.Decode(rec.Data)
	if err != nil {
		return Point{}, fmt.Errorf("decode envelope: %w", err)
	}
	// A device time is taken from protocol.MinDeviceTime on, as the
	// frontend checks it, but never compared with the clock here: a
	// message delivered again days later must give the same point.
	ns := env.Received
	if env.HasDeviceTime && env.DeviceTime >= protocol.MinDeviceTime {
		ns = env.DeviceTime
	}
	p := Point{
		Device: env.Device,
		Time:   time.Unix(0, ns).UTC(),
		ID:     rec.Origin + "/" + strconv.FormatUint(rec.Index, 10),

		Received: time.Unix(0, env.Received).UTC(),
	}
	if err := Flatten(env.Payload, &p); err != nil {
		return Point{}, err
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
	return p, nil
}

// TopicLabel is the label that carries what followed devices/{id}/ in the
// MQTT topic a message was published to (docs/mqtt.md).
const TopicLabel = "topic"

// Flatten decodes a device message's JSON object into p.Numbers and
// p.Strings: nested objects and arrays are flattened with dots ("gps.lat",
// "cells.0"), booleans become 0 and 1, nulls and the reserved members id,
// ts and device (at the top level) are left out, and a number beyond the
// float64 range is left out. Where two paths flatten to the same name
// ({"a":{"b":1},"a.b":2}), the one that sorts last wins, whatever the
// order in the message.
func Flatten(payload []byte, p *Point) error {
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
	p.Numbers = map[string]float64{}
	p.Strings = map[string]string{}
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
