package frontend

import (
	"fmt"
	"net/http"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/envelope"
)

// AuthOptions configures device authentication with JWTs (package auth):
// each configured key kind enables exactly one algorithm; tokens signed with
// any other algorithm, including "none", are refused.
type AuthOptions auth.Options

func (a *AuthOptions) configured() bool { return (*auth.Options)(a).Configured() }

// errUnauthorized wraps every authentication failure.
var errUnauthorized = auth.ErrUnauthorized

type verifier struct{ v *auth.Verifier }

func newVerifier(a AuthOptions) (*verifier, error) {
	v, err := auth.NewVerifier(auth.Options(a))
	if err != nil {
		return nil, err
	}
	return &verifier{v: v}, nil
}

// verify checks a token and returns its subject (the device id) and its expiry
// (zero when the token has none).
func (v *verifier) verify(token string) (device string, exp time.Time, err error) {
	var claims jwt.RegisteredClaims
	if err := v.v.Verify(token, &claims); err != nil {
		return "", time.Time{}, err
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
func bearerToken(r *http.Request) (string, bool) { return auth.BearerToken(r) }
