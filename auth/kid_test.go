package auth

import (
	"crypto/elliptic"
	"crypto/rsa"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/internal/testkit"
)

// kidSigners are signers of every kind: HS256 "a" and "b", RS256 "r",
// ES256 "e", and an HS256 secret without id.
func kidSigners(t testing.TB) map[string]*Signer {
	t.Helper()
	keys := signerKeys(t)
	m := map[string]*Signer{}
	for id, k := range map[string]struct {
		alg string
		key []byte
	}{
		"a": {"HS256", []byte("secret a, 32 bytes or more, ....")}, "b": {"HS256", []byte("secret b, 32 bytes or more, ....")},
		"r": {"RS256", keys["rsa pkcs1"]}, "e": {"ES256", keys["ec sec1"]}, "": {"HS256", secret},
	} {
		s, err := NewSigner(k.alg, k.key)
		if err != nil {
			t.Fatal(err)
		}
		m[id] = s.WithKeyID(id)
	}
	return m
}

func sign(t testing.TB, s *Signer, header map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, jwt.RegisteredClaims{Subject: "dev-1"})
	for k, v := range header {
		tok.Header[k] = v
	}
	str, err := tok.SignedString(s.key)
	if err != nil {
		t.Fatal(err)
	}
	return str
}

// TestKeyIDs: a token with kid is checked against the key of that id
// alone; one without, against every key of its algorithm, with an id or
// without.
func TestKeyIDs(t *testing.T) {
	s := kidSigners(t)
	var o Options
	for _, id := range []string{"a", "b", "r", "e", ""} {
		o = s[id].Verifying(o)
	}
	if len(o.Keys) != 4 || len(o.HS256Secrets) != 1 {
		t.Fatalf("options %+v: want four keys with ids and one secret without", o)
	}
	v, err := NewVerifier(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		tok  string
		want string // in the error; "" for none
	}{
		{"HS256 a", sign(t, s["a"], map[string]any{"kid": "a"}), ""},
		{"HS256 b", sign(t, s["b"], map[string]any{"kid": "b"}), ""},
		{"RS256 r", sign(t, s["r"], map[string]any{"kid": "r"}), ""},
		{"ES256 e", sign(t, s["e"], map[string]any{"kid": "e"}), ""},
		{"HS256 b without kid", sign(t, s["b"], nil), ""},
		{"RS256 without kid", sign(t, s["r"], nil), ""},
		{"secret without id, without kid", sign(t, s[""], nil), ""},
		{"a's secret named b", sign(t, s["a"], map[string]any{"kid": "b"}), "signature is invalid"},
		{"secret without id named a", sign(t, s[""], map[string]any{"kid": "a"}), "signature is invalid"},
		{"unknown kid", sign(t, s["a"], map[string]any{"kid": "z"}), `no key with id (kid) "z"`},
		{"empty kid", sign(t, s["a"], map[string]any{"kid": ""}), `no key with id (kid) ""`},
		{"RS256 token naming an HS256 key", sign(t, s["r"], map[string]any{"kid": "a"}), `key "a" is for HS256, not RS256`},
		{"HS256 token naming the RSA key", sign(t, s["a"], map[string]any{"kid": "r"}), `key "r" is for RS256, not HS256`},
		{"kid a number", sign(t, s["a"], map[string]any{"kid": 1}), "key id (kid) is not a string"},
	} {
		err := v.Verify(c.tok, &jwt.RegisteredClaims{})
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}

// TestRotation: key a, then a and b, then b: a token naming a is accepted
// until a is taken away, one naming b from the moment b is added.
func TestRotation(t *testing.T) {
	s := kidSigners(t)
	ta, tb := sign(t, s["a"], map[string]any{"kid": "a"}), sign(t, s["b"], map[string]any{"kid": "b"})
	for _, c := range []struct {
		keys     []string
		aOK, bOK bool
	}{{[]string{"a"}, true, false}, {[]string{"a", "b"}, true, true}, {[]string{"b"}, false, true}} {
		var o Options
		for _, id := range c.keys {
			o = s[id].Verifying(o)
		}
		v, err := NewVerifier(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Verify(ta, &jwt.RegisteredClaims{}); (err == nil) != c.aOK {
			t.Errorf("keys %v, a's token: %v", c.keys, err)
		}
		if err := v.Verify(tb, &jwt.RegisteredClaims{}); (err == nil) != c.bOK {
			t.Errorf("keys %v, b's token: %v", c.keys, err)
		}
	}
}

// Keys with ids are held to the same rules as the others, and each id
// names one key.
func TestNewVerifierChecksKeyIDs(t *testing.T) {
	small := testkit.RSAKey(t, 1024)
	p384 := testkit.ECKey(t, elliptic.P384())
	ec := testkit.ECKey(t, elliptic.P256())
	var nilRSA *rsa.PublicKey
	for _, c := range []struct {
		name string
		keys []Key
		want string
	}{
		{"no id", []Key{{Secret: secret}}, "check key 0: no id"},
		{"two keys of one id", []Key{{ID: "a", Secret: secret}, {ID: "a", Public: &ec.PublicKey}}, `check key "a": two keys with that id`},
		{"short secret", []Key{{ID: "a", Secret: []byte("short")}}, `check HS256 key "a": 5 bytes, at least 32 required`},
		{"small RSA", []Key{{ID: "r", Public: &small.PublicKey}}, `check RS256 key "r": at least 2048 bits required`},
		{"P-384", []Key{{ID: "e", Public: &p384.PublicKey}}, `check ES256 key "e": a P-256 key is required`},
		{"secret and public key", []Key{{ID: "x", Secret: secret, Public: &ec.PublicKey}}, `check key "x": an HS256 secret, or an RSA or P-256 public key, is required`},
		{"private key", []Key{{ID: "x", Public: ec}}, `check key "x": an HS256 secret`},
		{"nil RSA key", []Key{{ID: "x", Public: nilRSA}}, `check key "x": an HS256 secret`},
		{"nothing", []Key{{ID: "x"}}, `check key "x": an HS256 secret`},
	} {
		if _, err := NewVerifier(Options{Keys: c.keys}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	if o := (Options{Keys: []Key{{ID: "e", Public: &ec.PublicKey}}}); !o.Configured() {
		t.Error("options with a key with an id are not configured")
	}
}

// FuzzVerifyKeyIDs: whatever the token, Verify against keys with and
// without ids answers without panicking, and accepts a token only if one
// of the keys signed it: a kid naming a key of another algorithm, or no
// key, is never accepted.
func FuzzVerifyKeyIDs(f *testing.F) {
	s := kidSigners(f)
	var o Options
	for _, id := range []string{"a", "r", "e", ""} {
		o = s[id].Verifying(o)
	}
	v, err := NewVerifier(o)
	if err != nil {
		f.Fatal(err)
	}
	for _, id := range []string{"a", "b", "r", "e", ""} {
		f.Add(sign(f, s[id], map[string]any{"kid": id}))
		f.Add(sign(f, s[id], nil))
	}
	f.Add(sign(f, s["r"], map[string]any{"kid": "a"}))
	f.Add("eyJhbGciOiJIUzI1NiIsImtpZCI6WyJhIl19.e30.x")
	f.Fuzz(func(t *testing.T, tok string) {
		if err := v.Verify(tok, &jwt.RegisteredClaims{}); err != nil {
			return
		}
		parsed, _, err := jwt.NewParser().ParseUnverified(tok, &jwt.RegisteredClaims{})
		if err != nil {
			t.Fatalf("accepted a token that does not parse: %v", err)
		}
		if kid, ok := parsed.Header["kid"]; ok {
			id, _ := kid.(string)
			k, known := v.byID[id]
			if !known || k.alg != parsed.Method.Alg() {
				t.Fatalf("accepted a %s token naming key %v", parsed.Method.Alg(), kid)
			}
		}
	})
}
