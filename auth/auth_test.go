package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var secret = []byte("0123456789abcdef0123456789abcdef")

func TestVerify(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(Options{
		HS256Secrets: [][]byte{secret},
		RS256Keys:    []*rsa.PublicKey{&rsaKey.PublicKey},
		ES256Keys:    []*ecdsa.PublicKey{&ecKey.PublicKey},
		Audience:     "ingest",
	})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(m jwt.SigningMethod, key any, mod func(*jwt.RegisteredClaims)) string {
		c := jwt.RegisteredClaims{Subject: "s", Audience: jwt.ClaimStrings{"ingest"}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
		if mod != nil {
			mod(&c)
		}
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name string
		tok  string
		ok   bool
	}{
		{"HS256", sign(jwt.SigningMethodHS256, secret, nil), true},
		{"RS256", sign(jwt.SigningMethodRS256, rsaKey, nil), true},
		{"ES256", sign(jwt.SigningMethodES256, ecKey, nil), true},
		{"none", sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, nil), false},
		{"HS384", sign(jwt.SigningMethodHS384, secret, nil), false},
		{"RSA public key as HS256 secret", sign(jwt.SigningMethodHS256, der, nil), false},
		{"expired", sign(jwt.SigningMethodHS256, secret, func(c *jwt.RegisteredClaims) {
			c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
		}), false},
		{"not yet valid", sign(jwt.SigningMethodHS256, secret, func(c *jwt.RegisteredClaims) {
			c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Minute))
		}), false},
		{"wrong audience", sign(jwt.SigningMethodHS256, secret, func(c *jwt.RegisteredClaims) {
			c.Audience = jwt.ClaimStrings{"other"}
		}), false},
		{"garbage", "a.b.c", false},
	}
	for _, tc := range cases {
		var c jwt.RegisteredClaims
		err := v.Verify(tc.tok, &c)
		if tc.ok && (err != nil || c.Subject != "s") {
			t.Errorf("%s: refused: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: got %v, want ErrUnauthorized", tc.name, err)
		}
	}
}

func TestNewVerifierChecksKeys(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]Options{
		"none":         {},
		"short secret": {HS256Secrets: [][]byte{[]byte("short")}},
		"small RSA":    {RS256Keys: []*rsa.PublicKey{&small.PublicKey}},
		"P-384":        {ES256Keys: []*ecdsa.PublicKey{&p384.PublicKey}},
	} {
		if _, err := NewVerifier(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewVerifier(Options{RequireExpiry: true, HS256Secrets: [][]byte{secret}}); err != nil {
		t.Fatal(err)
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		header, url, want string
		ok                bool
	}{
		{"Bearer abc", "/", "abc", true},
		{"bearer  abc ", "/", "abc", true},
		{"Basic abc", "/?token=x", "", false},
		{"Bearer ", "/", "", false},
		{"", "/?token=q", "q", true},
		{"", "/", "", false},
	} {
		r := httptest.NewRequest("GET", tc.url, nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		got, ok := BearerToken(r)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%q %q: got %q %v", tc.header, tc.url, got, ok)
		}
	}
}
