package auth

import (
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/internal/testkit"
)

func pemOf(t testing.TB, typ string, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// signerKeys are private keys of every kind, in the encodings openssl
// writes, and keys the Verifier would refuse.
func signerKeys(t testing.TB) map[string][]byte {
	t.Helper()
	rk := testkit.RSAKey(t, 2048)
	small := testkit.RSAKey(t, 1024)
	ek := testkit.ECKey(t, elliptic.P256())
	p384 := testkit.ECKey(t, elliptic.P384())
	rk8, _ := x509.MarshalPKCS8PrivateKey(rk)
	ek1, _ := x509.MarshalECPrivateKey(ek)
	ek8, _ := x509.MarshalPKCS8PrivateKey(ek)
	p384der, _ := x509.MarshalECPrivateKey(p384)
	pub, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	return map[string][]byte{
		"rsa pkcs1":  pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk)),
		"rsa pkcs8":  pemOf(t, "PRIVATE KEY", rk8),
		"rsa 1024":   pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)),
		"ec sec1":    pemOf(t, "EC PRIVATE KEY", ek1),
		"ec pkcs8":   pemOf(t, "PRIVATE KEY", ek8),
		"ec p384":    pemOf(t, "EC PRIVATE KEY", p384der),
		"rsa public": pemOf(t, "PUBLIC KEY", pub),
	}
}

// TestSigner: a Signer takes the keys a Verifier would take and refuses
// the others with an error that names the algorithm; its tokens verify
// against its own key, and against no key of another kind.
func TestSigner(t *testing.T) {
	keys := signerKeys(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	for _, c := range []struct {
		alg  string
		key  []byte
		want string // in the error; "" for none
	}{
		{"HS256", secret, ""},
		{"HS256", secret[:31], "at least 32"},
		{"RS256", keys["rsa pkcs1"], ""},
		{"RS256", keys["rsa pkcs8"], ""},
		{"RS256", keys["rsa 1024"], "at least 2048"},
		{"RS256", keys["ec sec1"], "parse RS256 private key"},
		{"RS256", keys["rsa public"], "parse RS256 private key"},
		{"RS256", []byte("not a key"), "parse RS256 private key"},
		{"ES256", keys["ec sec1"], ""},
		{"ES256", keys["ec pkcs8"], ""},
		{"ES256", keys["ec p384"], "P-256 required"},
		{"ES256", keys["rsa pkcs8"], "parse ES256 private key"},
		{"none", secret, `algorithm "none"`},
		{"HS512", secret, `algorithm "HS512"`},
	} {
		s, err := NewSigner(c.alg, c.key)
		if c.want != "" {
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s with %.20q: %v, want an error with %q", c.alg, c.key, err, c.want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.alg, err)
		}
		tok, err := s.Sign(jwt.RegisteredClaims{Subject: "dev-1", Audience: jwt.ClaimStrings{"ingest"},
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))})
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier(s.Verifying(Options{Audience: "ingest", RequireExpiry: true}))
		if err != nil {
			t.Fatal(err)
		}
		var claims jwt.RegisteredClaims
		if err := v.Verify(tok, &claims); err != nil || claims.Subject != "dev-1" {
			t.Fatalf("%s: verify %v, subject %q", c.alg, err, claims.Subject)
		}
		// Another kind of key never verifies it.
		other := "HS256"
		if c.alg == "HS256" {
			other = "ES256"
		}
		o, _ := NewSigner(other, map[string][]byte{"HS256": secret, "ES256": keys["ec sec1"]}[other])
		v, _ = NewVerifier(o.Verifying(Options{}))
		if err := v.Verify(tok, &jwt.RegisteredClaims{}); err == nil {
			t.Fatalf("a %s token verified against an %s key", c.alg, other)
		}
	}
}

// FuzzNewSigner: whatever the key bytes, NewSigner returns a Signer or an
// error, never panics; a Signer's token verifies against its own key.
func FuzzNewSigner(f *testing.F) {
	for _, k := range signerKeys(f) {
		f.Add("RS256", k)
		f.Add("ES256", k)
	}
	f.Add("HS256", []byte("0123456789abcdef0123456789abcdef"))
	f.Fuzz(func(t *testing.T, alg string, key []byte) {
		s, err := NewSigner(alg, key)
		if err != nil {
			return
		}
		tok, err := s.Sign(jwt.RegisteredClaims{Subject: "d"})
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier(s.Verifying(Options{}))
		if err != nil {
			t.Fatalf("a key NewSigner takes is refused by NewVerifier: %v", err)
		}
		if err := v.Verify(tok, &jwt.RegisteredClaims{}); err != nil {
			t.Fatalf("own token refused: %v", err)
		}
	})
}
