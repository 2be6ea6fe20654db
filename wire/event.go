package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
)

// CommandEventTopic is the envelope topic of a command event: the record a
// command home puts in its middletier's stream for every change of a
// command's state, beside the devices' messages, so that the storage
// writers and the live feed take it as they take those. No device message
// has this topic: a frontend takes what an MQTT device publishes below
// devices/{id}/commands as answers to commands, never as data.
const CommandEventTopic = "commands"

// Bounds of a command event's members, at least those of the device
// protocol's command frames.
const (
	maxEventString = 255
	maxEventResult = 64 << 10
)

// ErrInvalidEvent wraps every error of DecodeCommandEvent.
var ErrInvalidEvent = errors.New("wire: invalid command event")

// CommandEvent is one change of a command's state: the JSON payload of an
// envelope with topic CommandEventTopic, whose device is the command's and
// whose receive time is the change's (docs/commands.md, "Events").
type CommandEvent struct {
	// ID is the command's id; Name its name, as the application gave it.
	ID   string `json:"id"`
	Name string `json:"name"`
	// State is the state the command changed to (CommandState.String).
	State string `json:"state"`
	// Created is when the command was accepted, ms since the epoch.
	Created int64 `json:"created"`
	// LatencyMS is the time from acceptance to this change, in
	// milliseconds; absent for queued.
	LatencyMS *float64 `json:"latency_ms,omitempty"`
	// Status and Result are the device's answer (acknowledged, failed).
	Status string          `json:"status,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// AppendCommandEvent appends the event of c's current state to dst: its
// latency runs from c.Created to c.Sent for sent, to c.Done for a final
// state.
func AppendCommandEvent(dst []byte, c *Command) []byte {
	ev := CommandEvent{ID: c.ID, Name: c.Name, State: c.State.String(), Created: c.Created / 1e6, Status: c.Status}
	var at int64
	switch {
	case c.State == StateSent:
		at = c.Sent
	case c.State.Final():
		at = c.Done
	}
	if at != 0 {
		ms := float64(at-c.Created) / 1e6
		ev.LatencyMS = &ms
	}
	if len(c.Result) > 0 && json.Valid(c.Result) {
		ev.Result = c.Result
	}
	b, err := json.Marshal(&ev)
	if err != nil {
		panic("BUG: wire: marshal command event: " + err.Error())
	}
	return append(dst, b...)
}

// DecodeCommandEvent decodes a command event strictly: one JSON object with
// a string id and name of 1 to 255 bytes, a known state, created at least
// 0, latency_ms (if present) a finite number at least 0, status (if
// present) at most 255 bytes, result (if present) at most 64 KiB. Members
// it does not know are ignored, so that a later home may add some. Every
// error wraps ErrInvalidEvent.
func DecodeCommandEvent(b []byte) (CommandEvent, error) {
	var ev CommandEvent
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&ev); err != nil {
		return CommandEvent{}, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return CommandEvent{}, fmt.Errorf("%w: data after the object", ErrInvalidEvent)
	}
	if !bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("{")) {
		return CommandEvent{}, fmt.Errorf("%w: not an object", ErrInvalidEvent)
	}
	switch {
	case len(ev.ID) == 0 || len(ev.ID) > maxEventString:
		return CommandEvent{}, fmt.Errorf("%w: id of %d bytes", ErrInvalidEvent, len(ev.ID))
	case len(ev.Name) == 0 || len(ev.Name) > maxEventString:
		return CommandEvent{}, fmt.Errorf("%w: name of %d bytes", ErrInvalidEvent, len(ev.Name))
	case len(ev.Status) > maxEventString:
		return CommandEvent{}, fmt.Errorf("%w: status of %d bytes", ErrInvalidEvent, len(ev.Status))
	case len(ev.Result) > maxEventResult:
		return CommandEvent{}, fmt.Errorf("%w: result of %d bytes", ErrInvalidEvent, len(ev.Result))
	case ev.Created < 0:
		return CommandEvent{}, fmt.Errorf("%w: created %d", ErrInvalidEvent, ev.Created)
	case ev.LatencyMS != nil && (*ev.LatencyMS < 0 || math.IsInf(*ev.LatencyMS, 0) || math.IsNaN(*ev.LatencyMS)):
		return CommandEvent{}, fmt.Errorf("%w: latency_ms %v", ErrInvalidEvent, *ev.LatencyMS)
	}
	if _, ok := ParseCommandState(ev.State); !ok {
		return CommandEvent{}, fmt.Errorf("%w: state %q", ErrInvalidEvent, ev.State)
	}
	if string(ev.Result) == "null" {
		ev.Result = nil
	}
	return ev, nil
}
