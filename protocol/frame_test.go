package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
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
		{`20000000000000`, 0},         // year 2603: ms*1e6 past int64, once taken for 2019
		{`20000000000000.5`, 0},       // the same with a fraction
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
// every accepted message is a valid JSON object. Under small field limits,
// a message is rejected by a field rule exactly when fieldRules, which
// walks it with encoding/json, finds one broken.
func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{`{"id":1}`, `[{"id":"a","ts":1748736000000},{"v":[1,{"b":null}]}]`, `[]`, `{"\u0069d":1}`,
		`{"a":"\ud83d\ude00"}`, `[1,2]`, `{"a":-0.5e+3}`, `{"device":"x","ts":"2025-01-01T00:00:00Z"}`,
		`{"__name__":1}`, `{"a\u0000":"\u0000"}`, `{"abcdefgh":[1,2,{"c":"long string"}]}`, `{"id":{"x":[1,2,3,4,5]},"\ud800":1}`,
		`[{"a":1,"b":2,"c":3,"d":4,"e":5},{"é":"\u00e9\u00e9\u00e9"}]`, "{\"a\x7f\":1,\"b\u0085\":2}"} {
		f.Add([]byte(s))
	}
	small := Limits{MaxFields: 4, MaxNameBytes: 8, MaxStringBytes: 6}
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
			if (m.Rule != "") != (m.Code == CodeTooManyFields || m.Code == CodeInvalidField) {
				t.Fatalf("code %q with rule %q", m.Code, m.Rule)
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
		smsgs, sferr := small.ParseFrame(b, nil)
		if (sferr == nil) != (ferr == nil) || len(smsgs) != len(msgs) {
			t.Fatalf("field limits changed the frame's fate: %+v %d, %+v %d", ferr, len(msgs), sferr, len(smsgs))
		}
		for _, m := range smsgs {
			if m.Raw[0] != '{' || m.Code != "" && m.Rule == "" {
				continue // not a message, or rejected for another reason first
			}
			broken, sure := fieldRules(t, m.Raw, small)
			if sure && broken != (m.Rule != "") {
				t.Fatalf("message %q: rule %q (%s), but encoding/json finds a broken rule: %v", m.Raw, m.Rule, m.Reason, broken)
			}
		}
	})
}

// fieldRules walks a message with encoding/json and reports whether it
// breaks a rule of lim. encoding/json decodes a lone surrogate escape as
// U+FFFD, so when the message also holds a U+FFFD of its own, sure is
// false: the walk cannot tell them apart.
func fieldRules(t *testing.T, raw []byte, lim Limits) (broken, sure bool) {
	sure = !bytes.Contains(raw, []byte("\uFFFD")) && !bytes.Contains(bytes.ToLower(raw), []byte(`\ufffd`))
	badText := func(s string, name bool) bool {
		for _, r := range s {
			if r == 0 || r == utf8.RuneError || name && (r < 0x20 || r >= 0x7f && r < 0xa0) {
				return true
			}
		}
		return false
	}
	type level struct {
		obj   bool
		key   string // in an object: the member whose value comes next
		keyed bool
		n     int // in an array: elements so far
		path  int // length of the flattened name of this object or array; -1 at the top
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var stack []level
	fields, skip := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return broken, sure
		}
		if err != nil {
			t.Fatalf("decode %q: %v", raw, err)
		}
		delim, isDelim := tok.(json.Delim)
		if skip > 0 { // inside the value of a top-level id, ts or device
			if isDelim && (delim == '{' || delim == '[') {
				skip++
			} else if isDelim {
				skip--
			}
			if skip == 0 {
				stack[len(stack)-1].keyed = false
			}
			continue
		}
		if isDelim && (delim == '}' || delim == ']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 {
				stack[len(stack)-1].keyed = false
			}
			continue
		}
		if len(stack) == 0 { // the message's own '{'
			stack = append(stack, level{obj: true, path: -1})
			continue
		}
		top := &stack[len(stack)-1]
		if top.obj && !top.keyed {
			top.key, top.keyed = tok.(string), true
			if len(stack) == 1 && Reserved(top.key) {
				continue
			}
			if top.key == "" || badText(top.key, true) || len(stack) == 1 && strings.HasPrefix(top.key, "__") {
				broken = true
			}
			continue
		}
		// A value: its flattened name.
		var path int
		if top.obj {
			if len(stack) == 1 && Reserved(top.key) {
				if isDelim {
					skip = 1
				} else {
					top.keyed = false
				}
				continue
			}
			path = len(top.key)
			top.keyed = false
		} else {
			path = len(strconv.Itoa(top.n))
			top.n++
		}
		if top.path >= 0 {
			path += top.path + 1
		}
		if path > lim.MaxNameBytes {
			broken = true
		}
		switch v := tok.(type) {
		case json.Delim:
			stack = append(stack, level{obj: v == '{', path: path})
		case nil:
		case string:
			fields++
			if len(v) > lim.MaxStringBytes || badText(v, false) {
				broken = true
			}
		default:
			fields++
		}
		if fields > lim.MaxFields {
			broken = true
		}
	}
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

// TestParseFrameLimits is the table of the field limits and rules: each
// one under, at and over its bound, with small limits so that the cases
// stay readable, then the defaults.
func TestParseFrameLimits(t *testing.T) {
	small := Limits{MaxFields: 3, MaxNameBytes: 8, MaxStringBytes: 4}
	cases := []struct {
		name string
		in   string
		rule string // "" = accepted; else rejected with this rule
		id   string // the id recorded, if any
	}{
		// Fields per message (3).
		{"fields under", `{"a":1,"b":2}`, "", ""},
		{"fields at", `{"a":1,"b":"x","c":true}`, "", ""},
		{"fields over", `{"a":1,"b":2,"c":3,"d":4}`, RuleTooManyFields, ""},
		{"nested fields at", `{"a":{"b":1,"c":[2,false]}}`, "", ""},
		{"nested fields over", `{"a":{"b":1,"c":[2,3,"x"]}}`, RuleTooManyFields, ""},
		{"nulls and empties are not fields", `{"a":1,"b":2,"c":3,"n":null,"o":{},"e":[],"x":[null,{}]}`, "", ""},
		{"id ts device are not fields", `{"id":1,"ts":1748736000000,"device":"dddddddd","a":1,"b":2,"c":3}`, "", "1"},
		{"nested id is a field", `{"x":{"id":1},"a":1,"b":2,"c":3}`, RuleTooManyFields, ""},
		// Flattened name length (8 bytes).
		{"name under", `{"abc":1}`, "", ""},
		{"name at", `{"abcdefgh":1}`, "", ""},
		{"name over", `{"abcdefghi":1}`, RuleNameTooLong, ""},
		{"flattened at", `{"abc":{"defg":1}}`, "", ""},
		{"flattened over", `{"abc":{"defgh":1}}`, RuleNameTooLong, ""},
		{"element at", `{"abcdef":[1]}`, "", ""},
		{"element over", `{"abcdefg":[1]}`, RuleNameTooLong, ""},
		{"element index over", `{"abcdef":[null,null,null,null,null,null,null,null,null,null,1]}`, RuleNameTooLong, ""},
		{"name of a null over", `{"abcdefghi":null}`, RuleNameTooLong, ""},
		{"escaped name at", `{"\u00e9\u00e9\u00e9\u00e9":1}`, "", ""},
		{"escaped name over", `{"\u00e9\u00e9\u00e9\u00e9a":1}`, RuleNameTooLong, ""},
		{"surrogate pair name at", `{"\ud83d\ude00\ud83d\ude00":1}`, "", ""},
		{"surrogate pair name over", `{"\ud83d\ude00\ud83d\ude00a":1}`, RuleNameTooLong, ""},
		{"raw UTF-8 name over", `{"ééééa":1}`, RuleNameTooLong, ""},
		// Reserved names: "__" at the top.
		{"__name__", `{"__name__":1}`, RuleNameReserved, ""},
		{"__", `{"__":1}`, RuleNameReserved, ""},
		{"escaped __", `{"\u005f_x":1}`, RuleNameReserved, ""},
		{"__ with null", `{"__x":null}`, RuleNameReserved, ""},
		{"one underscore", `{"_a":1}`, "", ""},
		{"trailing __", `{"a__":1}`, "", ""},
		{"nested __", `{"a":{"__b":1}}`, "", ""},
		// Invalid names.
		{"empty name", `{"":1}`, RuleNameInvalid, ""},
		{"empty nested name", `{"a":{"":1}}`, RuleNameInvalid, ""},
		{"NUL in name", `{"a\u0000":1}`, RuleNameInvalid, ""},
		{"newline in name", `{"a\n":1}`, RuleNameInvalid, ""},
		{"tab in nested name", `{"a":{"b\t":1}}`, RuleNameInvalid, ""},
		{"escaped DEL in name", `{"a\u007f":1}`, RuleNameInvalid, ""},
		{"raw DEL in name", "{\"a\x7f\":1}", RuleNameInvalid, ""},
		{"raw C1 in name", "{\"a\u0085\":1}", RuleNameInvalid, ""},
		{"escaped C1 in name", `{"a\u009F":1}`, RuleNameInvalid, ""},
		{"lone high surrogate in name", `{"\ud800":1}`, RuleNameInvalid, ""},
		{"lone low surrogate in name", `{"\udc00x":1}`, RuleNameInvalid, ""},
		{"high surrogate then a letter", `{"\ud800\u0041":1}`, RuleNameInvalid, ""},
		{"NBSP in name", `{"a\u00a0":1}`, "", ""},
		{"quote slash backslash in name", `{"\"\/\\":1}`, "", ""},
		// String values (4 bytes).
		{"string under", `{"s":"abc"}`, "", ""},
		{"string at", `{"s":"abcd"}`, "", ""},
		{"string over", `{"s":"abcde"}`, RuleStringTooLong, ""},
		{"escaped string at", `{"s":"\u00e9\u00e9"}`, "", ""},
		{"escaped string over", `{"s":"\u00e9\u00e9a"}`, RuleStringTooLong, ""},
		{"string in array over", `{"s":["ok","abcde"]}`, RuleStringTooLong, ""},
		{"newline in string", `{"s":"a\nb"}`, "", ""},
		{"NUL in string", `{"s":"\u0000"}`, RuleStringInvalid, ""},
		{"lone surrogate in string", `{"s":"a\udfff"}`, RuleStringInvalid, ""},
		{"surrogate pair in string", `{"s":"\ud83d\ude00"}`, "", ""},
		{"device is not a string field", `{"device":"\u0000x"}`, "", ""},
		// Rejections keep the id and the first reason.
		{"id after a field rule", `{"__x":1,"id":7}`, RuleNameReserved, "7"},
		{"id before a field rule", `{"id":"a","s":"abcdef"}`, RuleStringTooLong, `"a"`},
		{"first rule stands", `{"__x":1,"s":"abcdefg","a":1,"b":2}`, RuleNameReserved, ""},
		{"bad id after a field rule", `{"__x":1,"id":true}`, RuleNameReserved, ""},
		{"repeated id after a field rule", `{"__x":1,"id":1,"id":2}`, RuleNameReserved, "1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msgs, ferr := small.ParseFrame([]byte(tc.in), nil)
			if ferr != nil || len(msgs) != 1 {
				t.Fatalf("frame error %+v, %d messages", ferr, len(msgs))
			}
			m := msgs[0]
			if m.Rule != tc.rule || string(m.ID) != tc.id {
				t.Fatalf("code %q rule %q (%s) id %s, want rule %q id %s", m.Code, m.Rule, m.Reason, m.ID, tc.rule, tc.id)
			}
			want := ""
			switch tc.rule {
			case "":
			case RuleTooManyFields:
				want = CodeTooManyFields
			default:
				want = CodeInvalidField
			}
			if m.Code != want || (m.Code != "") != (m.Reason != "") {
				t.Fatalf("code %q (%s), want %q", m.Code, m.Reason, want)
			}
			if m.Code == "" && !json.Valid(m.Raw) {
				t.Fatalf("raw %q is not valid JSON", m.Raw)
			}
		})
	}

	// A batch checks each message on its own: the field count restarts.
	msgs, ferr := small.ParseFrame([]byte(`[{"a":1,"b":2,"c":3,"d":4},{"a":1,"b":2,"c":3},{"__x":1},{"a":1}]`), nil)
	if ferr != nil || len(msgs) != 4 {
		t.Fatalf("batch: %+v %d", ferr, len(msgs))
	}
	for i, rule := range []string{RuleTooManyFields, "", RuleNameReserved, ""} {
		if msgs[i].Rule != rule || msgs[i].Index != i {
			t.Errorf("batch message %d: rule %q index %d, want %q", i, msgs[i].Rule, msgs[i].Index, rule)
		}
	}

	// The defaults, as ParseFrame applies them.
	fields := func(n int) string {
		var b strings.Builder
		b.WriteString(`{"id":1`)
		for i := range n {
			fmt.Fprintf(&b, `,"f%d":%d`, i, i)
		}
		return b.String() + "}"
	}
	name := func(n int) string { return `{"` + strings.Repeat("n", n) + `":1}` }
	str := func(n int) string { return `{"s":"` + strings.Repeat("s", n) + `"}` }
	for _, tc := range []struct {
		in, rule string
	}{
		{fields(DefaultMaxFields - 1), ""}, {fields(DefaultMaxFields), ""}, {fields(DefaultMaxFields + 1), RuleTooManyFields},
		{name(DefaultMaxNameBytes - 1), ""}, {name(DefaultMaxNameBytes), ""}, {name(DefaultMaxNameBytes + 1), RuleNameTooLong},
		{str(DefaultMaxStringBytes - 1), ""}, {str(DefaultMaxStringBytes), ""}, {str(DefaultMaxStringBytes + 1), RuleStringTooLong},
		{name(60 << 10), RuleNameTooLong},
	} {
		msgs, ferr := ParseFrame([]byte(tc.in), nil, 1, 1<<20)
		if ferr != nil || len(msgs) != 1 || msgs[0].Rule != tc.rule {
			t.Errorf("%.40s… (%d bytes): %+v %+v, want rule %q", tc.in, len(tc.in), ferr, msgs, tc.rule)
			continue
		}
		// A reason quotes at most a short part of what the device sent.
		if len(msgs[0].Reason) > 200 {
			t.Errorf("reason of %d bytes: %.80s…", len(msgs[0].Reason), msgs[0].Reason)
		}
	}
}
