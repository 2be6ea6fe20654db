package frontend

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// TestFieldLimits is the table of the field limits at the frontend: each
// bound under, at and over it, and each name and value rule, over a real
// connection. A message over a limit is answered with its error code, is
// counted by code and by rule, and is not in the WAL; every other message
// is acknowledged and stored byte for byte.
func TestFieldLimits(t *testing.T) {
	type tcase struct {
		msg  string
		code string // "" = acknowledged
		rule string
	}
	fields := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `,"f%d":%d`, i, i)
		}
		return b.String()
	}
	small := []tcase{
		{`{"id":1,"a":1,"b":true}`, "", ""},
		{`{"id":2,"a":1,"b":"x","c":{"d":null}}`, "", ""},
		{`{"id":3,"a":1,"b":2,"c":[3,4]}`, protocol.CodeTooManyFields, protocol.RuleTooManyFields},
		{`{"id":4,"abcdefg":1}`, "", ""},
		{`{"id":5,"abc":{"defg":1}}`, "", ""},
		{`{"id":6,"abc":{"defgh":1}}`, protocol.CodeInvalidField, protocol.RuleNameTooLong},
		{`{"id":7,"s":"abc"}`, "", ""},
		{`{"id":8,"s":"\u00e9\u00e9"}`, "", ""},
		{`{"id":9,"s":"abcde"}`, protocol.CodeInvalidField, protocol.RuleStringTooLong},
		{`{"id":10,"__name__":1}`, protocol.CodeInvalidField, protocol.RuleNameReserved},
		{`{"id":11,"_x":1,"x__":2}`, "", ""},
		{`{"id":12,"a\nb":1}`, protocol.CodeInvalidField, protocol.RuleNameInvalid},
		{`{"id":13,"":1}`, protocol.CodeInvalidField, protocol.RuleNameInvalid},
		{`{"id":14,"\ud800":1}`, protocol.CodeInvalidField, protocol.RuleNameInvalid},
		{`{"id":15,"s":"\u0000"}`, protocol.CodeInvalidField, protocol.RuleStringInvalid},
		{`{"id":16,"s":"a\nb"}`, "", ""},
	}
	def := protocol.DefaultLimits()
	defaults := []tcase{
		{`{"id":1` + fields(def.MaxFields) + `}`, "", ""},
		{`{"id":2` + fields(def.MaxFields+1) + `}`, protocol.CodeTooManyFields, protocol.RuleTooManyFields},
		{`{"id":3,"` + strings.Repeat("n", def.MaxNameBytes) + `":1}`, "", ""},
		{`{"id":4,"` + strings.Repeat("n", def.MaxNameBytes+1) + `":1}`, protocol.CodeInvalidField, protocol.RuleNameTooLong},
		{`{"id":5,"s":"` + strings.Repeat("s", def.MaxStringBytes) + `"}`, "", ""},
		{`{"id":6,"s":"` + strings.Repeat("s", def.MaxStringBytes+1) + `"}`, protocol.CodeInvalidField, protocol.RuleStringTooLong},
		{`{"id":7,"` + strings.Repeat("n", 60<<10-20) + `":1}`, protocol.CodeInvalidField, protocol.RuleNameTooLong},
	}
	for _, tc := range []struct {
		name  string
		opts  Options
		cases []tcase
	}{
		{"small", Options{MaxFields: 3, MaxFieldNameBytes: 8, MaxStringBytes: 4}, small},
		{"defaults", Options{}, defaults},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, tc.opts, wal.Options{})
			c := rawDial(t, ts, hsToken(t, "dev-1", nil))
			var stored []string
			codes, rules := map[string]int{}, map[string]int{}
			for i, m := range tc.cases {
				seq := uint64(i + 1)
				send(t, c, m.msg)
				var got string
				for {
					of, err := readFrame(t, c)
					if err != nil {
						t.Fatalf("message %d: %v", i, err)
					}
					if of.Type == "error" {
						if of.Seq != seq || string(of.ID) != fmt.Sprint(i+1) || of.Message == "" || len(of.Message) > 300 {
							t.Fatalf("message %d: error frame %+v", i, of)
						}
						got = of.Code
						continue
					}
					if of.Seq == seq {
						break
					}
				}
				if got != m.code {
					t.Fatalf("message %d (%.60s): code %q, want %q", i, m.msg, got, m.code)
				}
				if m.code == "" {
					stored = append(stored, m.msg)
				} else {
					codes[m.code]++
					rules[m.rule]++
				}
			}
			for _, code := range []string{protocol.CodeTooManyFields, protocol.CodeInvalidField} {
				if got := testutil.ToFloat64(ts.srv.m.rejected.WithLabelValues(code)); got != float64(codes[code]) {
					t.Errorf("rejected{code=%q} = %v, want %d", code, got, codes[code])
				}
			}
			for _, rule := range protocol.FieldRules() {
				if got := testutil.ToFloat64(ts.srv.m.fieldRules.WithLabelValues(rule)); got != float64(rules[rule]) {
					t.Errorf("field_rejections{rule=%q} = %v, want %d", rule, got, rules[rule])
				}
			}
			c.CloseNow()
			ts.stop(t)
			envs := testkit.WALEnvelopes(t, ts.dir)
			if len(envs) != len(stored) {
				t.Fatalf("%d envelopes stored, want %d", len(envs), len(stored))
			}
			for i, e := range envs {
				if string(e.Payload) != stored[i] {
					t.Fatalf("envelope %d holds %.60s, want %.60s", i, e.Payload, stored[i])
				}
			}
		})
	}
}
