// Package auth verifies the JSON Web Tokens that devices and dashboard
// readers present. Each configured key kind enables exactly one algorithm
// (HS256, RS256 or ES256); tokens signed with any other algorithm, including
// "none", are refused, and keys of one kind are never tried for another
// algorithm, so an RS256 public key cannot be abused as an HS256 secret.
// exp and nbf are honoured whenever present. A token longer than
// Options.MaxTokenBytes (8 KiB by default) is refused before it is parsed.
//
// Keys may carry an id (Options.Keys): a token whose header names a key
// id (kid) is checked against that key alone, and refused if no key has
// that id or the key is of another algorithm; a token without kid is
// checked against every key of its algorithm, with an id or without. A
// frontend holding the old and the new key at once accepts the tokens of
// both, which is how a fleet moves from one key to the next.
package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Options configure a Verifier.
type Options struct {
	// HS256Secrets are shared secrets (at least 32 bytes each) for HS256.
	HS256Secrets [][]byte
	// RS256Keys are RSA public keys (at least 2048 bits) for RS256.
	RS256Keys []*rsa.PublicKey
	// ES256Keys are P-256 public keys for ES256.
	ES256Keys []*ecdsa.PublicKey
	// Keys are keys of any of the three kinds, each with an id that a
	// token's kid header selects.
	Keys []Key
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer   string
	Audience string
	// RequireExpiry refuses tokens without exp. Default false: exp and nbf are
	// honoured whenever present.
	RequireExpiry bool
	// Leeway tolerates clock skew on exp and nbf. Default 0.
	Leeway time.Duration
	// MaxTokenBytes bounds the length of a token: a longer one is refused
	// with ErrTokenTooLarge before it is decoded or its signature checked.
	// Tokens carry a subject and a few claims; nothing legitimate comes
	// near the default, 8 KiB (DefaultMaxTokenBytes).
	MaxTokenBytes int
}

// Key is a verification key with an id.
type Key struct {
	// ID is the key id a token names in its kid header; not empty, and
	// unique among Options.Keys.
	ID string
	// Secret is an HS256 shared secret (at least 32 bytes), or Public an
	// RS256 (*rsa.PublicKey, at least 2048 bits) or an ES256 key
	// (*ecdsa.PublicKey on P-256): one of the two.
	Secret []byte
	Public crypto.PublicKey
}

// Alg is the algorithm the key verifies, or "" if it is none of the
// kinds a Verifier takes.
func (k Key) Alg() string {
	switch p := k.Public.(type) {
	case nil:
		if k.Secret != nil {
			return jwt.SigningMethodHS256.Alg()
		}
	case *rsa.PublicKey:
		if k.Secret == nil && p != nil {
			return jwt.SigningMethodRS256.Alg()
		}
	case *ecdsa.PublicKey:
		if k.Secret == nil && p != nil {
			return jwt.SigningMethodES256.Alg()
		}
	}
	return ""
}

// DefaultMaxTokenBytes is the default of Options.MaxTokenBytes.
const DefaultMaxTokenBytes = 8 << 10

// Configured reports whether any key is configured.
func (o *Options) Configured() bool {
	return len(o.HS256Secrets)+len(o.RS256Keys)+len(o.ES256Keys)+len(o.Keys) > 0
}

var (
	// ErrUnauthorized wraps every verification failure.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrTokenTooLarge is the failure of a token longer than
	// Options.MaxTokenBytes; it wraps ErrUnauthorized too.
	ErrTokenTooLarge = errors.New("token too large")
)

// Verifier checks tokens against the configured keys. It is safe for
// concurrent use.
type Verifier struct {
	parser *jwt.Parser
	max    int // bytes in a token, at most
	hs     jwt.VerificationKeySet
	rs     jwt.VerificationKeySet
	es     jwt.VerificationKeySet
	byID   map[string]idKey
}

// idKey is a key of Options.Keys.
type idKey struct {
	alg string
	key any
}

// NewVerifier checks the keys and returns a Verifier for them.
func NewVerifier(o Options) (*Verifier, error) {
	v := &Verifier{max: o.MaxTokenBytes, byID: map[string]idKey{}}
	switch {
	case v.max < 0:
		return nil, fmt.Errorf("check token size bound: %d is negative", v.max)
	case v.max == 0:
		v.max = DefaultMaxTokenBytes
	}
	var methods []string
	for i, k := range o.HS256Secrets {
		if len(k) < 32 {
			return nil, fmt.Errorf("check HS256 secret %d: %d bytes, at least 32 required", i, len(k))
		}
		v.hs.Keys = append(v.hs.Keys, k)
	}
	for i, k := range o.RS256Keys {
		if k == nil || k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("check RS256 key %d: at least 2048 bits required", i)
		}
		v.rs.Keys = append(v.rs.Keys, k)
	}
	for i, k := range o.ES256Keys {
		if k == nil || k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("check ES256 key %d: a P-256 key is required", i)
		}
		v.es.Keys = append(v.es.Keys, k)
	}
	if err := v.addKeys(o.Keys); err != nil {
		return nil, err
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
	popts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(o.Leeway)}
	if o.RequireExpiry {
		popts = append(popts, jwt.WithExpirationRequired())
	}
	if o.Issuer != "" {
		popts = append(popts, jwt.WithIssuer(o.Issuer))
	}
	if o.Audience != "" {
		popts = append(popts, jwt.WithAudience(o.Audience))
	}
	v.parser = jwt.NewParser(popts...)
	return v, nil
}

// addKeys checks the keys with ids and adds each to its algorithm's
// keys, for tokens without kid, and under its id.
func (v *Verifier) addKeys(keys []Key) error {
	for i, k := range keys {
		if k.ID == "" {
			return fmt.Errorf("check key %d: no id", i)
		}
		if _, dup := v.byID[k.ID]; dup {
			return fmt.Errorf("check key %q: two keys with that id", k.ID)
		}
		var key jwt.VerificationKey
		switch alg := k.Alg(); alg {
		case jwt.SigningMethodHS256.Alg():
			if len(k.Secret) < 32 {
				return fmt.Errorf("check HS256 key %q: %d bytes, at least 32 required", k.ID, len(k.Secret))
			}
			key = k.Secret
			v.hs.Keys = append(v.hs.Keys, key)
		case jwt.SigningMethodRS256.Alg():
			if p := k.Public.(*rsa.PublicKey); p.N == nil || p.N.BitLen() < 2048 {
				return fmt.Errorf("check RS256 key %q: at least 2048 bits required", k.ID)
			}
			key = k.Public
			v.rs.Keys = append(v.rs.Keys, key)
		case jwt.SigningMethodES256.Alg():
			if k.Public.(*ecdsa.PublicKey).Curve != elliptic.P256() {
				return fmt.Errorf("check ES256 key %q: a P-256 key is required", k.ID)
			}
			key = k.Public
			v.es.Keys = append(v.es.Keys, key)
		default:
			return fmt.Errorf("check key %q: an HS256 secret, or an RSA or P-256 public key, is required", k.ID)
		}
		v.byID[k.ID] = idKey{alg: k.Alg(), key: key}
	}
	return nil
}

// keyFor returns the key the token's kid names, or else only the keys of
// the token's own algorithm family.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	if kid, ok := t.Header["kid"]; ok {
		id, ok := kid.(string)
		if !ok {
			return nil, errors.New("key id (kid) is not a string")
		}
		k, ok := v.byID[id]
		switch {
		case !ok:
			return nil, fmt.Errorf("no key with id (kid) %q", id)
		case k.alg != t.Method.Alg():
			return nil, fmt.Errorf("key %q is for %s, not %s", id, k.alg, t.Method.Alg())
		}
		return k.key, nil
	}
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

// Verify checks a token's signature, algorithm and registered claims, and
// decodes its claims into claims (a *jwt.RegisteredClaims, or a struct that
// embeds one to read more). Every error wraps ErrUnauthorized.
func (v *Verifier) Verify(token string, claims jwt.Claims) error {
	if len(token) > v.max {
		return fmt.Errorf("%w: %w: %d bytes, at most %d", ErrUnauthorized, ErrTokenTooLarge, len(token), v.max)
	}
	if _, err := v.parser.ParseWithClaims(token, claims, v.keyFor); err != nil {
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	return nil
}

// BearerToken extracts a token from "Authorization: Bearer <token>" or, for
// clients that cannot set headers, the "token" query parameter. The scheme
// is matched without regard to case ("bearer" too), as RFC 9110 has it.
func BearerToken(r *http.Request) (string, bool) {
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
