package feed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/ingest-io/ingest/wire"
)

// Subscription is a decoded subscribe frame:
//
//	{"type":"subscribe","devices":["a"],"prefixes":["truck-"],"groups":["north"],"from":{"mt-0":1235}}
//
// A message matches when its device id is one of Devices, starts with one
// of Prefixes, or its registry group is one of Groups. With all three empty
// every message matches. From asks for a replay of a middletier's records
// from a sequence (the last one received plus one) before the live ones.
type Subscription struct {
	Devices  []string          `json:"devices,omitempty"`
	Prefixes []string          `json:"prefixes,omitempty"`
	Groups   []string          `json:"groups,omitempty"`
	From     map[string]uint64 `json:"from,omitempty"`
	// Commands asks for the command frames of the matching devices too:
	// the changes of their commands' states (docs/commands.md, "Events").
	Commands bool `json:"commands,omitempty"`
}

// ErrInvalidSubscribe wraps every error of DecodeSubscribe.
var ErrInvalidSubscribe = errors.New("invalid subscribe")

// maxFilterLen bounds one device id, prefix or group, as envelope ids.
const maxFilterLen = 255

// DecodeSubscribe decodes a subscribe frame strictly: a single JSON object
// with "type":"subscribe" and only the members above; every id, prefix and
// group 1 to 255 bytes of valid UTF-8; at most maxFilters of them together;
// sequences in from at least 1.
func DecodeSubscribe(b []byte, maxFilters int) (*Subscription, error) {
	var raw struct {
		Type string `json:"type"`
		Subscription
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("%w: not UTF-8", ErrInvalidSubscribe)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSubscribe, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the object", ErrInvalidSubscribe)
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("%w: trailing data after the object", ErrInvalidSubscribe)
	}
	if raw.Type != "subscribe" {
		return nil, fmt.Errorf("%w: type %q, want \"subscribe\"", ErrInvalidSubscribe, raw.Type)
	}
	s := raw.Subscription
	if n := len(s.Devices) + len(s.Prefixes) + len(s.Groups); n > maxFilters {
		return nil, fmt.Errorf("%w: %d filters, at most %d", ErrInvalidSubscribe, n, maxFilters)
	}
	for _, l := range []struct {
		what string
		v    []string
	}{{"device", s.Devices}, {"prefix", s.Prefixes}, {"group", s.Groups}} {
		for _, v := range l.v {
			if len(v) == 0 || len(v) > maxFilterLen {
				return nil, fmt.Errorf("%w: %s of %d bytes, want 1 to %d", ErrInvalidSubscribe, l.what, len(v), maxFilterLen)
			}
		}
	}
	if len(s.From) > maxFilters {
		return nil, fmt.Errorf("%w: from names %d middletiers", ErrInvalidSubscribe, len(s.From))
	}
	for mt, seq := range s.From {
		if len(mt) == 0 || len(mt) > wire.MaxNameLen {
			return nil, fmt.Errorf("%w: middletier name of %d bytes", ErrInvalidSubscribe, len(mt))
		}
		if seq == 0 {
			return nil, fmt.Errorf("%w: from %q sequence 0 (sequences start at 1)", ErrInvalidSubscribe, mt)
		}
	}
	return &s, nil
}

// filter is a Subscription's match, ready for the dispatch path.
type filter struct {
	all      bool
	devices  map[string]struct{}
	prefixes []string
	groups   map[string]struct{}
	commands bool
}

func newFilter(s *Subscription) *filter {
	f := &filter{all: len(s.Devices)+len(s.Prefixes)+len(s.Groups) == 0, prefixes: s.Prefixes, commands: s.Commands}
	if len(s.Devices) > 0 {
		f.devices = make(map[string]struct{}, len(s.Devices))
		for _, d := range s.Devices {
			f.devices[d] = struct{}{}
		}
	}
	if len(s.Groups) > 0 {
		f.groups = make(map[string]struct{}, len(s.Groups))
		for _, g := range s.Groups {
			f.groups[g] = struct{}{}
		}
	}
	return f
}

// takes reports whether ev is for the reader: a command event only if it
// asked for them, and then by its device, as a message.
func (f *filter) takes(ev *event) bool {
	return f.admits(ev.command, ev.device, ev.group)
}

// admits is takes for a message known by its device, group and kind.
func (f *filter) admits(command bool, device, group string) bool {
	return (!command || f.commands) && f.match(device, group)
}

func (f *filter) match(device, group string) bool {
	if f.all {
		return true
	}
	if _, ok := f.devices[device]; ok {
		return true
	}
	if group != "" {
		if _, ok := f.groups[group]; ok {
			return true
		}
	}
	for _, p := range f.prefixes {
		if strings.HasPrefix(device, p) {
			return true
		}
	}
	return false
}
