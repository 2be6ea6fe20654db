package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/envelope"
)

// tokenConfig is `ingest token`: one token, signed with the key the
// frontend verifies (the HS256 secret itself, or the private half of an
// RS256 or ES256 public key), printed on stdout.
type tokenConfig struct {
	hs256File, rs256File, es256File string
	keysDir, kid                    string
	alg                             string
	subject, audience, issuer       string
	scope                           string
	ttl                             time.Duration
	expiry                          string
	f                               flags
}

const tokenHeader = `Mints a token and prints it on stdout: a device's (--subject is its device id), or a
dashboard reader's or an application's (--scope feed:read, --scope commands). It is
signed with the key the frontend verifies: the same HS256 secret file
(INGEST_AUTH_HS256_SECRET_FILE), or the private key whose public half the frontend has.
`

func (c *tokenConfig) register(f flags) {
	c.f = f
	f.str(&c.subject, "subject", "the token's subject (sub): the device id (required)")
	f.str(&c.hs256File, "auth.hs256-secret-file", "file holding the HS256 shared secret (at least 32 bytes), as the frontend's")
	f.str(&c.rs256File, "auth.rs256-private-key", "PEM RSA private key (PKCS #1 or #8, at least 2048 bits) to sign RS256 with")
	f.str(&c.es256File, "auth.es256-private-key", "PEM P-256 private key (SEC 1 or PKCS #8) to sign ES256 with")
	f.str(&c.keysDir, "auth.keys-dir", "the frontend's key directory: with --kid and none of the keys above, sign HS256 with the secret <kid>.hs256 in it")
	f.str(&c.kid, "kid", "the key id written in the token's header (kid): the name, without .hs256 or .pem, of the key's file in the frontend's --auth.keys-dir")
	f.str(&c.alg, "alg", "HS256, RS256 or ES256; empty: the one the key given implies")
	f.duration(&c.ttl, "ttl", "the token expires this long from now (exp, in whole seconds: at least 1s); 0 and no --expiry: it never expires, and a frontend with --auth.require-exp refuses it")
	f.str(&c.expiry, "expiry", "the token expires at this time (exp), RFC 3339 (2027-01-31T00:00:00Z) or a date (2027-01-31, midnight UTC); instead of --ttl")
	f.str(&c.audience, "audience", "the token's audience (aud), comma-separated; must hold the frontend's --auth.audience if it has one")
	f.str(&c.issuer, "issuer", "the token's issuer (iss); must be the frontend's --auth.issuer if it has one")
	f.str(&c.scope, "scope", "comma-separated scopes (scope): feed:read for a live feed reader, commands for the command API; none for a device")
}

// errNoSigningKey is the error of `ingest token` without a key.
var errNoSigningKey = errors.New("give the signing key: --auth.hs256-secret-file (INGEST_AUTH_HS256_SECRET_FILE), --auth.rs256-private-key, --auth.es256-private-key, or --auth.keys-dir and --kid")

// signer reads the one key given and returns a Signer for it.
func (c *tokenConfig) signer() (*auth.Signer, error) {
	type keyFlag struct{ alg, flag, file string }
	var given []keyFlag
	for _, k := range []keyFlag{
		{"HS256", "auth.hs256-secret-file", c.hs256File},
		{"RS256", "auth.rs256-private-key", c.rs256File},
		{"ES256", "auth.es256-private-key", c.es256File},
	} {
		if k.file != "" {
			given = append(given, k)
		}
	}
	if c.kid != "" && !keyIDs.MatchString(c.kid) {
		return nil, c.usage(fmt.Errorf("--kid %q: 1 to 64 letters, digits, '.', '_' or '-'", c.kid))
	}
	if c.keysDir != "" && c.kid != "" {
		// The directory's secret of that id is a signing key as the files
		// are: given beside one of them (from the environment, say), which
		// to sign with is not for the command to guess.
		p := filepath.Join(c.keysDir, c.kid+".hs256")
		if _, err := os.Stat(p); err == nil || len(given) == 0 {
			given = append(given, keyFlag{"HS256", "auth.keys-dir", p})
		}
	}
	if len(given) == 0 && c.keysDir != "" {
		return nil, c.usage(errors.New("--auth.keys-dir needs --kid: the id of the key to sign with, its file <kid>.hs256"))
	}
	switch {
	case c.alg != "" && c.alg != "HS256" && c.alg != "RS256" && c.alg != "ES256":
		return nil, c.usage(fmt.Errorf("unknown algorithm --alg %q: HS256, RS256 or ES256", c.alg))
	case len(given) == 0:
		return nil, c.usage(errNoSigningKey)
	case len(given) > 1:
		return nil, c.usage(fmt.Errorf("give one signing key, not --%s (%s) and --%s (%s)", given[0].flag, envName(given[0].flag), given[1].flag, envName(given[1].flag)))
	case c.alg != "" && c.alg != given[0].alg:
		return nil, c.usage(fmt.Errorf("--alg %s, but --%s is a key for %s", c.alg, given[0].flag, given[0].alg))
	}
	k := given[0]
	b, err := os.ReadFile(k.file)
	if err != nil {
		if _, perr := os.Stat(filepath.Join(c.keysDir, c.kid+".pem")); k.flag == "auth.keys-dir" && perr == nil {
			return nil, c.usage(fmt.Errorf("key %s in --auth.keys-dir is a public key: sign with its private key (--auth.rs256-private-key or --auth.es256-private-key) and --kid %s", c.kid, c.kid))
		}
		return nil, fmt.Errorf("read signing key (--%s): %w", k.flag, err)
	}
	if k.alg == "HS256" {
		b = []byte(strings.TrimSpace(string(b))) // as the frontend reads it
	}
	s, err := auth.NewSigner(k.alg, b)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", k.flag, err)
	}
	if c.kid != "" {
		s = s.WithKeyID(c.kid)
		if err := c.checkAgainstKeysDir(s, k.flag); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// checkAgainstKeysDir refuses a signer, the key of flag, whose tokens the
// key directory's key of its kid would not verify (a secret for an RS256
// key's kid, a private key that is not the pair of the directory's public
// one): every frontend with that directory would refuse them. A directory
// without a key of that kid says nothing.
func (c *tokenConfig) checkAgainstKeysDir(s *auth.Signer, flag string) error {
	if c.keysDir == "" {
		return nil
	}
	held := ""
	for _, ext := range []string{".hs256", ".pem"} {
		if _, err := os.Stat(filepath.Join(c.keysDir, c.kid+ext)); err == nil {
			held = c.kid + ext
		}
	}
	if held == "" {
		return nil
	}
	keys, err := readKeyDir(c.keysDir)
	if err != nil {
		return fmt.Errorf("--auth.keys-dir: %w", err)
	}
	v, err := auth.NewVerifier(auth.Options{Keys: keys})
	if err != nil {
		return fmt.Errorf("--auth.keys-dir: %w", err)
	}
	tok, err := s.Sign(jwt.RegisteredClaims{Subject: "check"})
	if err == nil {
		err = v.Verify(tok, &jwt.RegisteredClaims{})
	}
	if err != nil {
		return c.usage(fmt.Errorf("--kid %s names %s in --auth.keys-dir, which does not verify what --%s (%s), a %s key, signs (%v): sign with that key's own secret or private key",
			c.kid, held, flag, envName(flag), s.Alg(), err))
	}
	return nil
}

func (c *tokenConfig) usage(err error) error { return &usageError{sub: "token", err: err} }

// claims checks the flags and returns the token's claims as of now.
func (c *tokenConfig) claims(now time.Time) (tokenClaims, error) {
	var tc tokenClaims
	if c.subject == "" {
		return tc, c.usage(c.f.required("subject"))
	}
	if err := envelope.CheckID(c.subject); err != nil {
		return tc, c.usage(fmt.Errorf("--subject: %w", err))
	}
	tc.Subject, tc.Issuer = c.subject, c.issuer
	tc.IssuedAt = jwt.NewNumericDate(now)
	tc.Audience = splitList(c.audience)
	tc.Scope = strings.Join(splitList(c.scope), " ")
	switch {
	case c.ttl > 0 && c.expiry != "":
		return tc, c.usage(errors.New("give --ttl or --expiry, not both"))
	case c.ttl > 0 && c.ttl < time.Second:
		// exp is in whole seconds: it could be the second of iat, a token
		// expired when printed.
		return tc, c.usage(fmt.Errorf("--ttl %s is under a second: a token's expiry is in whole seconds", c.ttl))
	case c.ttl > 0:
		tc.ExpiresAt = jwt.NewNumericDate(now.Add(c.ttl))
	case c.expiry != "":
		exp, err := time.Parse(time.RFC3339, c.expiry)
		if err != nil {
			if exp, err = time.Parse(time.DateOnly, c.expiry); err != nil {
				return tc, c.usage(fmt.Errorf("--expiry %q: write it as 2027-01-31T00:00:00Z (RFC 3339) or 2027-01-31", c.expiry))
			}
		}
		if !exp.Truncate(time.Second).After(now) { // exp is in whole seconds
			return tc, c.usage(fmt.Errorf("--expiry %s is in the past", exp.Format(time.RFC3339)))
		}
		tc.ExpiresAt = jwt.NewNumericDate(exp)
	}
	return tc, nil
}

// tokenClaims are a token's claims: the registered ones, and the scopes
// a feed reader's or an application's token carries.
type tokenClaims struct {
	jwt.RegisteredClaims
	Scope string `json:"scope,omitempty"`
}

// runToken is `ingest token`.
func runToken(_ context.Context, args []string) error {
	var c tokenConfig
	f := newFlags("token")
	c.register(f)
	if err := parseFlags(f.fs, args, tokenHeader); err != nil {
		return err
	}
	claims, err := c.claims(time.Now())
	if err != nil {
		return err
	}
	s, err := c.signer()
	if err != nil {
		return err
	}
	tok, err := s.Sign(claims)
	if err != nil {
		return err
	}
	_, err = fmt.Println(tok)
	return err
}
