package auth

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestScopesBothForms(t *testing.T) {
	for _, tc := range []struct {
		claims string
		want   []string
	}{
		{`{"scope":"feed:read  commands"}`, []string{"feed:read", "commands"}},
		{`{"scope":["feed:read","commands"]}`, []string{"feed:read", "commands"}},
		{`{"scope":""}`, nil},
		// Spaces alone separate scopes: a tab or a no-break space is part
		// of one (it grants no "commands").
		{`{"scope":"x\u00a0commands"}`, []string{"x\u00a0commands"}},
		{`{"scope":"feed:read\tcommands"}`, []string{"feed:read\tcommands"}},
		{`{}`, nil},
	} {
		var c ScopedClaims
		if err := json.Unmarshal([]byte(tc.claims), &c); err != nil {
			t.Fatalf("%s: %v", tc.claims, err)
		}
		if len(c.Scope) != len(tc.want) || !slices.Equal(c.Scope, tc.want) && len(tc.want) > 0 {
			t.Errorf("%s: scopes %q, want %q", tc.claims, c.Scope, tc.want)
		}
		if c.Scope.Has("commands") != slices.Contains(tc.want, "commands") {
			t.Errorf("%s: Has(commands) = %v", tc.claims, c.Scope.Has("commands"))
		}
	}
	for _, bad := range []string{`{"scope":3}`, `{"scope":[1]}`, `{"scope":{"a":"b"}}`} {
		var c ScopedClaims
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("%s: decoded as %q", bad, c.Scope)
		}
	}
}

func FuzzScopes(f *testing.F) {
	for _, s := range []string{`"a b"`, `["a","b"]`, `""`, `null`, `3`, `["a",`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Scopes
		if err := s.UnmarshalJSON(b); err != nil {
			return
		}
		for _, v := range s {
			if !s.Has(v) {
				t.Fatalf("Has(%q) false for a scope it holds", v)
			}
		}
	})
}
