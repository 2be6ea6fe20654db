package frontend

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/envelope"
)

// AuthOptions configures device authentication with JWTs. Each configured key
// kind enables exactly one algorithm; tokens signed with any other algorithm,
// including "none", are refused. Keys of one kind are never tried for another
// algorithm, so an RS256 public key cannot be abused as an HS256 secret.
type AuthOptions struct {
	// HS256Secrets are shared secrets (at least 32 bytes each) for HS256.
	HS256Secrets [][]byte
	// RS256Keys are RSA public keys (at least 2048 bits) for RS256.
	RS256Keys []*rsa.PublicKey
	// ES256Keys are P-256 public keys for ES256.
	ES256Keys []*ecdsa.PublicKey
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer   string
	Audience string
	// RequireExpiry refuses tokens without exp. Default false: exp and nbf are
	// honoured whenever present.
	RequireExpiry bool
	// Leeway tolerates clock skew on exp and nbf. Default 0.
	Leeway time.Duration
}

func (a *AuthOptions) configured() bool {
	return len(a.HS256Secrets)+len(a.RS256Keys)+len(a.ES256Keys) > 0
}

// errUnauthorized wraps every authentication failure.
var errUnauthorized = errors.New("unauthorized")

type verifier struct {
	parser *jwt.Parser
	hs     jwt.VerificationKeySet
	rs     jwt.VerificationKeySet
	es     jwt.VerificationKeySet
}

func newVerifier(a AuthOptions) (*verifier, error) {
	v := &verifier{}
	var methods []string
	for i, k := range a.HS256Secrets {
		if len(k) < 32 {
			return nil, fmt.Errorf("check HS256 secret %d: %d bytes, at least 32 required", i, len(k))
		}
		v.hs.Keys = append(v.hs.Keys, k)
	}
	for i, k := range a.RS256Keys {
		if k == nil || k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("check RS256 key %d: at least 2048 bits required", i)
		}
		v.rs.Keys = append(v.rs.Keys, k)
	}
	for i, k := range a.ES256Keys {
		if k == nil || k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("check ES256 key %d: a P-256 key is required", i)
		}
		v.es.Keys = append(v.es.Keys, k)
	}
	if len(v.hs.Keys) > 0 {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if len(v.rs.Keys) > 0 {
		methods = append(methods, jwt.SigningMethodRS256.Alg())
	}
	if len(v.es.Keys) > 0 {
		methods = append(methods, jwt.SigningMethodES256.Alg())
	}
	if len(methods) == 0 {
		return nil, errors.New("check auth: no keys configured")
	}
	popts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(a.Leeway)}
	if a.RequireExpiry {
		popts = append(popts, jwt.WithExpirationRequired())
	}
	if a.Issuer != "" {
		popts = append(popts, jwt.WithIssuer(a.Issuer))
	}
	if a.Audience != "" {
		popts = append(popts, jwt.WithAudience(a.Audience))
	}
	v.parser = jwt.NewParser(popts...)
	return v, nil
}

// keyFor returns only the keys of the token's own algorithm family.
func (v *verifier) keyFor(t *jwt.Token) (any, error) {
	switch t.Method.Alg() {
	case jwt.SigningMethodHS256.Alg():
		return v.hs, nil
	case jwt.SigningMethodRS256.Alg():
		return v.rs, nil
	case jwt.SigningMethodES256.Alg():
		return v.es, nil
	}
	return nil, fmt.Errorf("algorithm %q not allowed", t.Method.Alg())
}

// verify checks a token and returns its subject (the device id) and its expiry
// (zero when the token has none).
func (v *verifier) verify(token string) (device string, exp time.Time, err error) {
	var claims jwt.RegisteredClaims
	if _, err := v.parser.ParseWithClaims(token, &claims, v.keyFor); err != nil {
		return "", time.Time{}, fmt.Errorf("%w: %w", errUnauthorized, err)
	}
	if err := envelope.CheckID(claims.Subject); err != nil {
		return "", time.Time{}, fmt.Errorf("%w: token subject: %w", errUnauthorized, err)
	}
	if claims.ExpiresAt != nil {
		exp = claims.ExpiresAt.Time
	}
	return claims.Subject, exp, nil
}

// bearerToken extracts a token from "Authorization: Bearer <token>" or, for
// clients that cannot set headers, the "token" query parameter.
func bearerToken(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", false
		}
		return strings.TrimSpace(tok), true
	}
	if tok := r.URL.Query().Get("token"); tok != "" {
		return tok, true
	}
	return "", false
}
