package protocol

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestParseFrame(t *testing.T) {
	type want struct {
		frameCode string
		n         int
		codes     []string // per message, "" = accepted
		ids       []string
	}
	cases := []struct {
		name string
		in   string
		want want
	}{
		{"object", `{"id":1,"t":2}`, want{n: 1, codes: []string{""}, ids: []string{"1"}}},
		{"object with ws", " \n{\"id\":\"a\"} \t", want{n: 1, codes: []string{""}, ids: []string{`"a"`}}},
		{"batch", `[{"id":1},{"id":"x","v":[1,2,{"z":null}]},{}]`, want{n: 3, codes: []string{"", "", ""}, ids: []string{"1", `"x"`, ""}}},
		{"empty batch", `[]`, want{n: 0}},
		{"nested fields ignored", `{"a":{"id":{},"ts":"x"}}`, want{n: 1, codes: []string{""}, ids: []string{""}}},
		{"batch element not object", `[{"id":1},2,"s"]`, want{n: 3, codes: []string{"", CodeInvalidMessage, CodeInvalidMessage}, ids: []string{"1", "", ""}}},
		{"id of wrong type", `{"id":true}`, want{n: 1, codes: []string{CodeInvalidMessage}, ids: []string{""}}},
		{"id too long", `{"id":"` + strings.Repeat("x", 200) + `"}`, want{n: 1, codes: []string{CodeInvalidMessage}, ids: []string{""}}},
		{"duplicate id", `{"id":1,"id":2}`, want{n: 1, codes: []string{CodeInvalidMessage}, ids: []string{"1"}}},
		{"escaped duplicate id", `{"id":1,"\u0069d":2}`, want{n: 1, codes: []string{CodeInvalidMessage}, ids: []string{"1"}}},
		{"device not string", `{"device":1}`, want{n: 1, codes: []string{CodeInvalidMessage}, ids: []string{""}}},
		{"message too large", `{"v":"` + strings.Repeat("x", 100) + `"}`, want{n: 1, codes: []string{CodeTooLarge}, ids: []string{""}}},
		{"batch too large", `[{},{},{},{},{}]`, want{frameCode: CodeTooLarge}},
		{"scalar", `42`, want{frameCode: CodeInvalidMessage}},
		{"empty", ``, want{frameCode: CodeInvalidJSON}},
		{"truncated", `{"a":`, want{frameCode: CodeInvalidJSON}},
		{"trailing", `{} {}`, want{frameCode: CodeInvalidJSON}},
		{"trailing comma", `{"a":1,}`, want{frameCode: CodeInvalidJSON}},
		{"single quotes", `{'a':1}`, want{frameCode: CodeInvalidJSON}},
		{"bad utf8", "{\"a\":\"\xff\"}", want{frameCode: CodeInvalidJSON}},
		{"control char", "{\"a\":\"\x01\"}", want{frameCode: CodeInvalidJSON}},
		{"leading zero", `{"a":01}`, want{frameCode: CodeInvalidJSON}},
		{"too deep", strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40), want{frameCode: CodeInvalidJSON}},
		{"NaN", `{"a":NaN}`, want{frameCode: CodeInvalidJSON}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msgs, ferr := ParseFrame([]byte(tc.in), nil, 4, 64)
			if tc.want.frameCode != "" {
				if ferr == nil || ferr.Code != tc.want.frameCode {
					t.Fatalf("frame error %+v, want code %s", ferr, tc.want.frameCode)
				}
				return
			}
			if ferr != nil {
				t.Fatalf("frame error %+v", ferr)
			}
			if len(msgs) != tc.want.n {
				t.Fatalf("%d messages, want %d", len(msgs), tc.want.n)
			}
			for i, m := range msgs {
				if m.Code != tc.want.codes[i] {
					t.Errorf("message %d: code %q (%s), want %q", i, m.Code, m.Reason, tc.want.codes[i])
				}
				if string(m.ID) != tc.want.ids[i] {
					t.Errorf("message %d: id %q, want %q", i, m.ID, tc.want.ids[i])
				}
				if m.Code == "" && !json.Valid(m.Raw) {
					t.Errorf("message %d: raw %q is not valid JSON", i, m.Raw)
				}
			}
		})
	}
}

func TestParseTS(t *testing.T) {
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want int64 // 0: rejected
	}{
		{`1748736000000`, now.UnixNano()},
		{`1748736000000.5`, now.UnixNano() + 500_000},
		{`"2025-06-01T00:00:00Z"`, now.UnixNano()},
		{`"2025-06-01T02:00:00.25+02:00"`, now.UnixNano() + 250_000_000},
		{`1748736000`, 0},             // seconds, not ms
		{`1.7e12`, 0},                 // exponent
		{`-1`, 0},                     // negative
		{`99999999999999999999`, 0},   // overflow
		{`1748743200001`, 0},          // beyond now + 2h skew
		{`"yesterday"`, 0},            // not RFC 3339
		{`true`, 0},                   // wrong type
		{`"1748736000000"`, 0},        // ms as string
		{`"0001-01-01T00:00:00Z"`, 0}, // out of range
	}
	for _, tc := range cases {
		got, why := parseTS([]byte(tc.in), now, 2*time.Hour)
		if tc.want == 0 {
			if why == "" {
				t.Errorf("parseTS(%s) = %d, want rejection", tc.in, got)
			}
			continue
		}
		if why != "" || got != tc.want {
			t.Errorf("parseTS(%s) = %d %q, want %d", tc.in, got, why, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in, code string
		time     int64
	}{
		{`{"device":"d1","v":1}`, "", 0},
		{`{"device":"d\u0031"}`, "", 0}, // compared by meaning
		{`{"device":"d2"}`, CodeDeviceMismatch, 0},
		{`{"device":""}`, CodeDeviceMismatch, 0},
		{`{"ts":1748736000000}`, "", now.UnixNano()},
		{`{"device":"d1","ts":"2025-06-01T00:00:00Z"}`, "", now.UnixNano()},
		{`{"ts":1748736}`, CodeBadTimestamp, 0},
		{`{"ts":1748743200001}`, CodeBadTimestamp, 0}, // beyond now + 2h
		{`{"device":"d2","ts":1}`, CodeDeviceMismatch, 0},
		{`{"id":true,"device":"d2","ts":1}`, CodeInvalidMessage, 0}, // a rejection stays as it was
	} {
		msgs, ferr := ParseFrame([]byte(tc.in), nil, 4, 1<<10)
		if ferr != nil || len(msgs) != 1 {
			t.Fatalf("%s: %v %+v", tc.in, ferr, msgs)
		}
		m := msgs[0]
		m.Check("d1", now, 2*time.Hour)
		if m.Code != tc.code || m.Time != tc.time || (m.Code != "") != (m.Reason != "") {
			t.Errorf("%s: code %q (%s) time %d, want %q %d", tc.in, m.Code, m.Reason, m.Time, tc.code, tc.time)
		}
	}
}

func TestParseFrameAllocatesNothing(t *testing.T) {
	frame := []byte(`[{"id":1,"ts":1748736000000,"v":{"a":[1,2,3]}},{"id":"b","device":"d1","x":"\u00e9"}]`)
	msgs := make([]Message, 0, 8)
	allocs := testing.AllocsPerRun(100, func() {
		msgs, _ = ParseFrame(frame, msgs[:0], 500, 1<<16)
		for i := range msgs {
			msgs[i].Check("d1", time.Now(), time.Hour)
			if msgs[i].Code != "" {
				panic(msgs[i].Reason)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("ParseFrame allocated %v times per frame", allocs)
	}
}

// FuzzParseFrame checks the device frame decoder against encoding/json: it
// never panics, it accepts a frame only if encoding/json finds it valid, and
// every accepted message is a valid JSON object.
func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{`{"id":1}`, `[{"id":"a","ts":1748736000000},{"v":[1,{"b":null}]}]`, `[]`, `{"\u0069d":1}`,
		`{"a":"\ud83d\ude00"}`, `[1,2]`, `{"a":-0.5e+3}`, `{"device":"x","ts":"2025-01-01T00:00:00Z"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, ferr := ParseFrame(b, nil, 500, 1<<16)
		valid := json.Valid(b) && utf8.Valid(b)
		if ferr == nil || ferr.Code != CodeInvalidJSON {
			if !json.Valid(b) {
				t.Fatalf("accepted invalid JSON %q", b)
			}
		} else if valid && !strings.Contains(ferr.Reason, "nesting") {
			t.Fatalf("rejected valid JSON %q: %s", b, ferr.Reason)
		}
		for _, m := range msgs {
			if !json.Valid(m.Raw) {
				t.Fatalf("message %q is not valid JSON", m.Raw)
			}
			if m.Code == "" && m.Raw[0] != '{' {
				t.Fatalf("accepted non-object %q", m.Raw)
			}
			code := m.Code
			m.Check("x", time.Now(), time.Hour)
			if code != "" && m.Code != code {
				t.Fatalf("Check changed a rejection %s to %s", code, m.Code)
			}
			if m.Code == "" && m.TS != nil && m.Time < MinDeviceTime {
				t.Fatalf("ts %s accepted as %d, before MinDeviceTime", m.TS, m.Time)
			}
		}
	})
}

// BenchmarkParseFrame decodes and checks a device frame as a connection
// does before it appends the messages: one 200-byte message, and a batch of
// ten, each with an id, a device and a ts.
func BenchmarkParseFrame(b *testing.B) {
	one := `{"id":17,"device":"dev-000001","ts":1748736000123,"temp":21.5,"hum":48,"battery":3.21,"ok":true,"gps":{"lat":48.851234,"lon":2.351234},"note":"` + strings.Repeat("x", 40) + `"}`
	batch := "[" + strings.Repeat(one+",", 9) + one + "]"
	for _, bc := range []struct{ name, frame string }{{"single", one}, {"batch10", batch}} {
		b.Run(bc.name, func(b *testing.B) {
			frame := []byte(bc.frame)
			msgs := make([]Message, 0, 16)
			now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				var ferr *FrameError
				msgs, ferr = ParseFrame(frame, msgs[:0], 500, 1<<16)
				if ferr != nil {
					b.Fatal(ferr.Reason)
				}
				for i := range msgs {
					if msgs[i].Check("dev-000001", now, time.Hour); msgs[i].Code != "" {
						b.Fatal(msgs[i].Reason)
					}
				}
			}
		})
	}
}
