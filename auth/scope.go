package auth

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// ScopedClaims are the claims of a token that grants scopes, an
// application's or a feed reader's: the registered claims and "scope".
type ScopedClaims struct {
	jwt.RegisteredClaims
	Scope Scopes `json:"scope"`
}

// Scopes are a token's scopes. The claim "scope" is read as a
// space-separated string (RFC 8693) or as an array of strings.
type Scopes []string

// UnmarshalJSON reads the claim in either form.
func (s *Scopes) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		// Separated by spaces only (RFC 6749 3.3, RFC 8693 4.2): a scope
		// with a tab or a no-break space in it is one scope, not two.
		*s = slices.DeleteFunc(strings.Split(str, " "), func(x string) bool { return x == "" })
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New("scope is neither a string nor an array of strings")
	}
	*s = list
	return nil
}

// Has reports whether want is one of the scopes.
func (s Scopes) Has(want string) bool { return slices.Contains(s, want) }
