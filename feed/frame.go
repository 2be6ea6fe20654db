package feed

import (
	"strconv"
	"unicode/utf8"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/registry"
)

// appendMessage appends the message frame of one record:
//
//	{"type":"message","device":"d","time":1748736000123,"received":1748736000125,
//	 "payload":{...},"labels":{"group":"g"},"middletier":"mt-0","seq":17,
//	 "origin":"fe-1.00ab","index":9}
//
// or, for a command event (command), the command frame: "type":"command"
// and the event in "command" instead of "payload". The payload must be
// valid JSON (the frontend stores only JSON objects; the caller checks a
// command event).
func appendMessage(b []byte, e *envelope.Envelope, dev *registry.Device, mt string, seq uint64, origin string, index uint64, command bool) []byte {
	t := e.Received
	if e.HasDeviceTime {
		t = e.DeviceTime
	}
	if command {
		b = append(b, `{"type":"command","device":`...)
	} else {
		b = append(b, `{"type":"message","device":`...)
	}
	b = appendJSONString(b, e.Device)
	b = append(b, `,"time":`...)
	b = strconv.AppendInt(b, floorMillis(t), 10)
	b = append(b, `,"received":`...)
	b = strconv.AppendInt(b, floorMillis(e.Received), 10)
	if command {
		b = append(b, `,"command":`...)
	} else {
		b = append(b, `,"payload":`...)
	}
	b = append(b, e.Payload...)
	if dev != nil {
		b = append(b, `,"labels":{`...)
		first := true
		add := func(k, v string) {
			if v == "" {
				return
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, v)
		}
		add("name", dev.Name)
		add("group", dev.Group)
		add("site", dev.Site)
		add("type", dev.Type)
		for k, v := range dev.Labels {
			add(k, v)
		}
		b = append(b, '}')
	}
	b = append(b, `,"middletier":`...)
	b = appendJSONString(b, mt)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"origin":`...)
	b = appendJSONString(b, origin)
	b = append(b, `,"index":`...)
	b = strconv.AppendUint(b, index, 10)
	return append(b, '}')
}

func floorMillis(ns int64) int64 {
	ms := ns / 1e6
	if ns < 0 && ns%1e6 != 0 {
		ms--
	}
	return ms
}

// missedFrame is the notice that messages meant for a reader were not
// delivered: reason "slow" (its queue was full), "gap" (records the feed
// lost and could not fetch again, or could not fetch for a resume; count
// covers every device), "released"
// (a resume asked for records the middletier no longer holds) or
// "resume_limit" (a resume asked for more than the feed replays).
func missedFrame(count uint64, reason string, mt string, from, to uint64) []byte {
	b := append([]byte(nil), `{"type":"missed","count":`...)
	b = strconv.AppendUint(b, count, 10)
	b = append(b, `,"reason":"`...)
	b = append(b, reason...)
	b = append(b, '"')
	if mt != "" {
		b = append(b, `,"middletier":`...)
		b = appendJSONString(b, mt)
		b = append(b, `,"from":`...)
		b = strconv.AppendUint(b, from, 10)
		b = append(b, `,"to":`...)
		b = strconv.AppendUint(b, to, 10)
	}
	return append(b, '}')
}

func errorFrame(code, msg string) []byte {
	b := append([]byte(nil), `{"type":"error","code":"`...)
	b = append(b, code...)
	b = append(b, `","message":`...)
	b = appendJSONString(b, msg)
	return append(b, '}')
}

// subscribedFrame answers a subscribe with the sequence each middletier's
// live messages start from.
func subscribedFrame(live map[string]uint64) []byte {
	b := append([]byte(nil), `{"type":"subscribed","live":{`...)
	first := true
	for mt, seq := range live {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, mt)
		b = append(b, ':')
		b = strconv.AppendUint(b, seq, 10)
	}
	return append(b, `}}`...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				switch c {
				case '\n':
					b = append(b, '\\', 'n')
				case '\r':
					b = append(b, '\\', 'r')
				case '\t':
					b = append(b, '\\', 't')
				default:
					b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
				}
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else if r == '\u2028' || r == '\u2029' {
			b = append(b, `\u202`...)
			b = append(b, hexDigits[r&0xf])
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
