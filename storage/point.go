package storage

import "time"

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
	// type and custom labels), the same on every series of the device. Nil
	// when the device is not in the registry. Device is not among them.
	Labels map[string]string
	// Numbers are the message's numeric fields, nested objects flattened
	// with dots ("gps.lat"), booleans as 0 and 1.
	Numbers map[string]float64
	// Strings are the message's string fields, flattened the same way.
	Strings map[string]string
	// ID is the message's identity, origin + "/" + index, taken from the
	// middletier record: the same for every delivery of the message.
	ID string
}
