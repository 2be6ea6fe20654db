package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// Signer mints tokens with one key, for the one algorithm its kind
// enables: what a Verifier configured with the matching secret or public
// key accepts. The key is held to the Verifier's rules (an HS256 secret of
// at least 32 bytes, an RSA key of at least 2048 bits, a P-256 key), so a
// token it mints is never one a frontend refuses for its key.
type Signer struct {
	method jwt.SigningMethod
	key    any
	public crypto.PublicKey // nil for HS256
	secret []byte
	kid    string
}

// NewSigner returns a Signer for alg ("HS256", "RS256" or "ES256") with
// key: the shared secret for HS256, a PEM private key (PKCS #1 or PKCS #8
// for RS256, SEC 1 or PKCS #8 for ES256) for the others.
func NewSigner(alg string, key []byte) (*Signer, error) {
	switch alg {
	case jwt.SigningMethodHS256.Alg():
		if len(key) < 32 {
			return nil, fmt.Errorf("check HS256 secret: %d bytes, at least 32 required", len(key))
		}
		return &Signer{method: jwt.SigningMethodHS256, key: key, secret: key}, nil
	case jwt.SigningMethodRS256.Alg():
		k, err := jwt.ParseRSAPrivateKeyFromPEM(key)
		if err != nil {
			return nil, fmt.Errorf("parse RS256 private key: %w", err)
		}
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("check RS256 key: %d bits, at least 2048 required", k.N.BitLen())
		}
		return &Signer{method: jwt.SigningMethodRS256, key: k, public: &k.PublicKey}, nil
	case jwt.SigningMethodES256.Alg():
		k, err := jwt.ParseECPrivateKeyFromPEM(key)
		if err != nil {
			return nil, fmt.Errorf("parse ES256 private key: %w", err)
		}
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("check ES256 key: curve %s, P-256 required", k.Curve.Params().Name)
		}
		return &Signer{method: jwt.SigningMethodES256, key: k, public: &k.PublicKey}, nil
	}
	return nil, fmt.Errorf("check algorithm %q: HS256, RS256 or ES256 are supported", alg)
}

// WithKeyID returns a copy of s that names its key kid in every token's
// header: a Verifier whose Options.Keys hold the key under that id checks
// the token against it alone.
func (s *Signer) WithKeyID(kid string) *Signer {
	c := *s
	c.kid = kid
	return &c
}

// Alg is the algorithm the Signer signs with.
func (s *Signer) Alg() string { return s.method.Alg() }

// Sign mints a token with claims. A device token's subject is the device
// id.
func (s *Signer) Sign(claims jwt.Claims) (string, error) {
	t := jwt.NewWithClaims(s.method, claims)
	if s.kid != "" {
		t.Header["kid"] = s.kid
	}
	tok, err := t.SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return tok, nil
}

// Verifying returns o with the Signer's secret or public key added (to
// Keys under its key id, if it has one), so that a Verifier built from it
// accepts the Signer's tokens.
func (s *Signer) Verifying(o Options) Options {
	if s.kid != "" {
		k := Key{ID: s.kid, Public: s.public}
		if s.public == nil {
			k.Secret = s.secret
		}
		o.Keys = append(o.Keys, k)
		return o
	}
	switch k := s.public.(type) {
	case *rsa.PublicKey:
		o.RS256Keys = append(o.RS256Keys, k)
	case *ecdsa.PublicKey:
		o.ES256Keys = append(o.ES256Keys, k)
	default:
		o.HS256Secrets = append(o.HS256Secrets, s.secret)
	}
	return o
}
