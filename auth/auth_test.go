package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var secret = []byte("0123456789abcdef0123456789abcdef")

func TestVerify(t *testing.T) {
	rsaKey := testkit.RSAKey(t, 2048)
	ecKey := testkit.ECKey(t, elliptic.P256())
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
	small := testkit.RSAKey(t, 1024)
	p384 := testkit.ECKey(t, elliptic.P384())
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
		{"BEARER abc", "/", "abc", true},
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

// TestTokenSizeCap: a validly signed token longer than the cap is refused
// before it is verified, with ErrTokenTooLarge (and ErrUnauthorized); one at
// the cap is accepted.
func TestTokenSizeCap(t *testing.T) {
	// sized returns a valid HS256 token of exactly n bytes or a little less.
	sign := func(pad int) string {
		c := jwt.RegisteredClaims{Subject: "s", ID: strings.Repeat("p", pad)}
		return testkit.SignHS256(t, secret, c)
	}
	sized := func(n int) string {
		// Each 3 bytes of claims are 4 of the token.
		pad := max(0, (n-len(sign(0)))*3/4+3)
		for {
			if s := sign(pad); len(s) <= n || pad == 0 {
				return s
			}
			pad--
		}
	}
	for _, tc := range []struct {
		name  string
		max   int // Options.MaxTokenBytes
		size  int
		ok    bool
		large bool // refused as too large
	}{
		{name: "small", size: 200, ok: true},
		{name: "at the default cap", size: DefaultMaxTokenBytes, ok: true},
		{name: "over the default cap", size: DefaultMaxTokenBytes + 4, large: true},
		{name: "100 KiB", size: 100 << 10, large: true},
		{name: "at a smaller cap", max: 1024, size: 1024, ok: true},
		{name: "over a smaller cap", max: 1024, size: 1030, large: true},
		{name: "under a larger cap", max: 64 << 10, size: 32 << 10, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(Options{HS256Secrets: [][]byte{secret}, MaxTokenBytes: tc.max})
			if err != nil {
				t.Fatal(err)
			}
			tok := sized(tc.size)
			if len(tok) < tc.size-4 {
				t.Fatalf("token of %d bytes, want %d", len(tok), tc.size)
			}
			var c jwt.RegisteredClaims
			err = v.Verify(tok, &c)
			switch {
			case tc.ok && err != nil:
				t.Fatalf("%d-byte token refused: %v", len(tok), err)
			case !tc.ok && !errors.Is(err, ErrUnauthorized):
				t.Fatalf("%d-byte token: %v, want ErrUnauthorized", len(tok), err)
			case errors.Is(err, ErrTokenTooLarge) != tc.large:
				t.Fatalf("%d-byte token: %v, too large %v", len(tok), err, tc.large)
			}
		})
	}
	if _, err := NewVerifier(Options{HS256Secrets: [][]byte{secret}, MaxTokenBytes: -1}); err == nil {
		t.Fatal("negative cap accepted")
	}
}
