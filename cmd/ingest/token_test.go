package main

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
)

// keyFiles are a key of each kind in files: the HS256 secret, and the
// private and public halves of an RSA and a P-256 key.
type keyFiles struct {
	hs256, rsaPriv, rsaPub, ecPriv, ecPub string
}

func writeKeyFiles(t *testing.T, secret string) keyFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rk := testkit.RSAKey(t, 2048)
	ek := testkit.ECKey(t, elliptic.P256())
	pemOf := func(typ string, der []byte, err error) []byte {
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	}
	rpub, err := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	rpubPEM := pemOf("PUBLIC KEY", rpub, err)
	epriv, err := x509.MarshalECPrivateKey(ek)
	eprivPEM := pemOf("EC PRIVATE KEY", epriv, err)
	epub, err := x509.MarshalPKIXPublicKey(&ek.PublicKey)
	return keyFiles{
		hs256:   write("hs256", []byte(secret+"\n")),
		rsaPriv: write("rsa.key", pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk), nil)),
		rsaPub:  write("rsa.pub", rpubPEM),
		ecPriv:  write("ec.key", eprivPEM),
		ecPub:   write("ec.pub", pemOf("PUBLIC KEY", epub, err)),
	}
}

// startKeyedFrontend runs `ingest frontend` verifying with k's secret
// and public keys (and args added), and returns its device URL.
func startKeyedFrontend(t *testing.T, k keyFiles, args ...string) (*tierProc, string) {
	t.Helper()
	p := &tierProc{t: t, name: "frontend", ready: addrRE,
		args: append([]string{"frontend", "--listen", "127.0.0.1:0", "--wal.dir", t.TempDir(),
			"--auth.hs256-secret-file", k.hs256, "--auth.rs256-public-keys", k.rsaPub, "--auth.es256-public-keys", k.ecPub}, args...)}
	p.start()
	return p, "ws://" + addrRE.FindStringSubmatch(p.logs.String())[1] + "/v1/ingest"
}

// sendOne connects as the token's device and has one message
// acknowledged, or returns why not.
func sendOne(url, tok string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{URL: url, Token: tok})
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SendWait(ctx, []byte(`{"temp":21.5}`))
}

// A token `ingest token` mints with each algorithm, from the key files the
// frontend's flags and their environment twins name, is accepted by a
// frontend that has the key and refused by one that has other keys; the
// claims are the ones asked for.
func TestTokenRoundTrip(t *testing.T) {
	right := writeKeyFiles(t, secret)
	wrong := writeKeyFiles(t, strings.Repeat("another secret, 32 bytes at least ", 2))
	fe, url := startKeyedFrontend(t, right, "--auth.audience", "fleet", "--auth.issuer", "ops", "--auth.require-exp")
	defer fe.stop()
	other, otherURL := startKeyedFrontend(t, wrong, "--auth.audience", "fleet", "--auth.issuer", "ops")
	defer other.stop()

	claims := []string{"--audience", "fleet", "--issuer", "ops"}
	for _, c := range []struct {
		alg  string
		env  []string // the key, as the frontend's environment has it
		args []string
	}{
		{"HS256", []string{"INGEST_AUTH_HS256_SECRET_FILE=" + right.hs256}, []string{"--ttl", "1h"}},
		{"RS256", nil, []string{"--auth.rs256-private-key", right.rsaPriv, "--ttl", "1h"}},
		{"ES256", nil, []string{"--auth.es256-private-key", right.ecPriv, "--alg", "ES256", "--expiry", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}},
	} {
		t.Run(c.alg, func(t *testing.T) {
			dev := "tok-" + strings.ToLower(c.alg)
			out, errOut, code := runBin(t, "", c.env, append(append([]string{"token", "--subject", dev}, claims...), c.args...)...)
			if code != 0 || errOut != "" || !regexp.MustCompile(`^[\w-]+\.[\w-]+\.[\w-]+\n$`).MatchString(out) {
				t.Fatalf("ingest token: exit %d, stdout %q, stderr %q; want a token and a newline", code, out, errOut)
			}
			tok := strings.TrimSpace(out)
			var got tokenClaims
			parsed, _, err := jwt.NewParser().ParseUnverified(tok, &got)
			if err != nil {
				t.Fatal(err)
			}
			exp, _ := got.GetExpirationTime()
			if parsed.Method.Alg() != c.alg || got.Subject != dev || got.Issuer != "ops" || len(got.Audience) != 1 || got.Audience[0] != "fleet" ||
				exp == nil || time.Until(exp.Time) < 50*time.Minute || time.Until(exp.Time) > 61*time.Minute || got.IssuedAt == nil {
				t.Errorf("token %s: header %v, claims %+v", tok, parsed.Header, got)
			}
			if err := sendOne(url, tok); err != nil {
				t.Errorf("a frontend with the key: %v", err)
			}
			if err := sendOne(otherURL, tok); !errors.Is(err, client.ErrRefused) {
				t.Errorf("a frontend with other keys: %v, want refused", err)
			}
		})
	}
	// The frontend's claims are checked: without the audience, or
	// without an expiry, the token is refused.
	for _, args := range [][]string{{"--issuer", "ops", "--ttl", "1h"}, claims} {
		out, errOut, code := runBin(t, "", nil, append([]string{"token", "--subject", "tok-claims", "--auth.hs256-secret-file", right.hs256}, args...)...)
		if code != 0 {
			t.Fatalf("ingest token %q: exit %d: %s", args, code, errOut)
		}
		if err := sendOne(url, strings.TrimSpace(out)); !errors.Is(err, client.ErrRefused) {
			t.Errorf("a token minted with %q: %v, want refused", args, err)
		}
	}
}

// `ingest token` says what is wrong with its command line or its key.
func TestTokenErrors(t *testing.T) {
	k := writeKeyFiles(t, secret)
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("too short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	hs := []string{"--auth.hs256-secret-file", k.hs256}
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	// Later than now, but in this second: exp, in whole seconds, would be
	// past when the token is printed.
	thisSecond := time.Now().UTC().Truncate(time.Second).Add(999 * time.Millisecond)
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no key", []string{"--subject", "d1"}, 2,
			"ingest token: give the signing key: --auth.hs256-secret-file (INGEST_AUTH_HS256_SECRET_FILE), --auth.rs256-private-key, --auth.es256-private-key, or --auth.keys-dir and --kid\n"},
		{"no subject", hs, 2, "ingest token: --subject (INGEST_SUBJECT) is required\n"},
		{"unknown algorithm", append([]string{"--subject", "d1", "--alg", "HS512"}, hs...), 2,
			`ingest token: unknown algorithm --alg "HS512": HS256, RS256 or ES256` + "\n"},
		{"algorithm not the key's", []string{"--subject", "d1", "--alg", "RS256", "--auth.es256-private-key", k.ecPriv}, 2,
			"ingest token: --alg RS256, but --auth.es256-private-key is a key for ES256\n"},
		{"two keys", append([]string{"--subject", "d1", "--auth.rs256-private-key", k.rsaPriv}, hs...), 2,
			"ingest token: give one signing key, not --auth.hs256-secret-file (INGEST_AUTH_HS256_SECRET_FILE) and --auth.rs256-private-key (INGEST_AUTH_RS256_PRIVATE_KEY)\n"},
		{"duration without unit", append([]string{"--subject", "d1", "--ttl", "24"}, hs...), 2,
			`ingest token: invalid value "24" for flag --ttl: a duration needs a unit: "24s"?`},
		{"not a duration", append([]string{"--subject", "d1", "--ttl", "a year"}, hs...), 2,
			`ingest token: invalid value "a year" for flag --ttl: not a duration: write it as 5s, 250ms or 1m30s`},
		{"negative ttl", append([]string{"--subject", "d1", "--ttl", "-1h"}, hs...), 2, "ingest token: --ttl -1h0m0s is negative\n"},
		{"ttl under a second", append([]string{"--subject", "d1", "--ttl", "400ms"}, hs...), 2,
			"ingest token: --ttl 400ms is under a second: a token's expiry is in whole seconds\n"},
		{"ttl and expiry", append([]string{"--subject", "d1", "--ttl", "1h", "--expiry", "2099-01-01"}, hs...), 2,
			"ingest token: give --ttl or --expiry, not both\n"},
		{"bad expiry", append([]string{"--subject", "d1", "--expiry", "tomorrow"}, hs...), 2,
			`ingest token: --expiry "tomorrow": write it as 2027-01-31T00:00:00Z (RFC 3339) or 2027-01-31` + "\n"},
		{"expiry in the past", append([]string{"--subject", "d1", "--expiry", past}, hs...), 2,
			"ingest token: --expiry " + past + " is in the past\n"},
		{"expiry in this second", append([]string{"--subject", "d1", "--expiry", thisSecond.Format(time.RFC3339Nano)}, hs...), 2,
			"ingest token: --expiry " + thisSecond.Format(time.RFC3339) + " is in the past\n"},
		{"subject too long", append([]string{"--subject", strings.Repeat("d", 256)}, hs...), 2,
			"ingest token: --subject: check id: length 256 outside 1..255\n"},
		{"short secret", []string{"--subject", "d1", "--auth.hs256-secret-file", short}, 1,
			"ingest token: --auth.hs256-secret-file: check HS256 secret: 9 bytes, at least 32 required\n"},
		{"public key for a private one", []string{"--subject", "d1", "--auth.rs256-private-key", k.rsaPub}, 1,
			"ingest token: --auth.rs256-private-key: parse RS256 private key: "},
		{"RSA key for ES256", []string{"--subject", "d1", "--auth.es256-private-key", k.rsaPriv}, 1,
			"ingest token: --auth.es256-private-key: parse ES256 private key: "},
		{"no such file", []string{"--subject", "d1", "--auth.hs256-secret-file", missing}, 1,
			fmt.Sprintf("ingest token: read signing key (--auth.hs256-secret-file): open %s: no such file or directory\n", missing)},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runBin(t, "", nil, append([]string{"token"}, c.args...)...)
			if code != c.code || out != "" || !strings.HasPrefix(errOut, c.want) {
				t.Errorf("ingest token %q: exit %d, stdout %q, stderr\n%s\nwant exit %d and %q", c.args, code, out, errOut, c.code, c.want)
			}
		})
	}
}

// writeKeyDir makes a key directory holding files (name -> content), as
// a Kubernetes Secret mounted as a directory does: the files are links
// into a ..data directory.
func writeKeyDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_01_01_00_00_00.000000001")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(data, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mint(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runBin(t, "", nil, append([]string{"token"}, args...)...)
	if code != 0 {
		t.Fatalf("ingest token %q: exit %d: %s", args, code, errOut)
	}
	return strings.TrimSpace(out)
}

// TestKeyRotation moves a frontend from key a to key b as an operator
// does: b is added beside a, devices are given tokens naming b, a is taken
// away. At each step the frontend accepts the tokens of the keys it has,
// each token checked against the key its kid names; tokens without kid,
// from the flags that came before the key directory, keep working beside
// it.
func TestKeyRotation(t *testing.T) {
	k := writeKeyFiles(t, secret)
	secretA, secretB := strings.Repeat("a", 40), strings.Repeat("b", 40)
	rsaPub, err := os.ReadFile(k.rsaPub)
	if err != nil {
		t.Fatal(err)
	}
	minting := writeKeyDir(t, map[string]string{"a.hs256": secretA + "\n", "b.hs256": secretB})
	tokA := mint(t, "--subject", "rot-a", "--auth.keys-dir", minting, "--kid", "a")
	tokB := mint(t, "--subject", "rot-b", "--auth.keys-dir", minting, "--kid", "b")
	tokR := mint(t, "--subject", "rot-r", "--auth.rs256-private-key", k.rsaPriv, "--kid", "r")
	tokLegacy := mint(t, "--subject", "rot-legacy", "--auth.hs256-secret-file", k.hs256)
	// a's secret under b's name: checked against b alone, and refused.
	forged := mint(t, "--subject", "rot-forged", "--auth.hs256-secret-file", filepath.Join(minting, "a.hs256"), "--kid", "b")
	if h, _, err := jwt.NewParser().ParseUnverified(tokA, &tokenClaims{}); err != nil || h.Header["kid"] != "a" || h.Method.Alg() != "HS256" {
		t.Fatalf("token for key a: %v %v", h.Header, err)
	}
	for _, step := range []struct {
		name  string
		files map[string]string
		ok    map[string]bool // which tokens are accepted
	}{
		{"a", map[string]string{"a.hs256": secretA, "r.pem": string(rsaPub)}, map[string]bool{"a": true, "r": true, "legacy": true}},
		{"a and b", map[string]string{"a.hs256": secretA, "b.hs256": secretB, "r.pem": string(rsaPub)}, map[string]bool{"a": true, "b": true, "r": true, "legacy": true}},
		{"b", map[string]string{"b.hs256": secretB}, map[string]bool{"b": true, "legacy": true}},
	} {
		t.Run(step.name, func(t *testing.T) {
			fe := &tierProc{t: t, name: "frontend", ready: addrRE,
				env:  []string{"INGEST_AUTH_KEYS_DIR=" + writeKeyDir(t, step.files)},
				args: []string{"frontend", "--listen", "127.0.0.1:0", "--wal.dir", t.TempDir(), "--auth.hs256-secret-file", k.hs256}}
			fe.start()
			defer fe.stop()
			url := "ws://" + addrRE.FindStringSubmatch(fe.logs.String())[1] + "/v1/ingest"
			for name, tok := range map[string]string{"a": tokA, "b": tokB, "r": tokR, "legacy": tokLegacy, "forged": forged} {
				err := sendOne(url, tok)
				if step.ok[name] && err != nil {
					t.Errorf("keys %s: token %s refused: %v", step.name, name, err)
				}
				if !step.ok[name] && !errors.Is(err, client.ErrRefused) {
					t.Errorf("keys %s: token %s: %v, want refused", step.name, name, err)
				}
			}
		})
	}
}

// A key directory the frontend cannot use stops it with the file named.
func TestKeyDirErrors(t *testing.T) {
	k := writeKeyFiles(t, secret)
	priv, err := os.ReadFile(k.ecPriv)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(k.ecPub)
	if err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	for _, c := range []struct {
		name string
		dir  string
		want string
	}{
		{"empty", empty, fmt.Sprintf("ingest frontend: --auth.keys-dir: no key in %s (<kid>.hs256 or <kid>.pem)\n", empty)},
		{"other extension", writeKeyDir(t, map[string]string{"a.key": secret}), "/a.key: name it <kid>.hs256 (an HS256 secret) or <kid>.pem (a public key)\n"},
		{"short secret", writeKeyDir(t, map[string]string{"a.hs256": "short"}), `check HS256 key "a": 5 bytes, at least 32 required` + "\n"},
		{"private key", writeKeyDir(t, map[string]string{"e.pem": string(priv)}), "/e.pem: not an RSA or EC public key\n"},
		{"two keys in a file", writeKeyDir(t, map[string]string{"e.pem": string(pub) + string(pub)}), "/e.pem: more than one PEM block: one key a file\n"},
		{"bad key id", writeKeyDir(t, map[string]string{"a b.hs256": secret}), `the key id "a b" is not 1 to 64 letters, digits, '.', '_' or '-'` + "\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, errOut, code := runBin(t, "", nil, "frontend", "--listen", "127.0.0.1:0", "--wal.dir", t.TempDir(), "--auth.keys-dir", c.dir)
			if code != 1 || !strings.HasPrefix(errOut, "ingest frontend: ") || !strings.HasSuffix(errOut, c.want) {
				t.Errorf("exit %d, printed %q; want exit 1 and %q", code, errOut, c.want)
			}
		})
	}
	// ingest token with the key directory.
	dir := writeKeyDir(t, map[string]string{"e.pem": string(pub), "a.hs256": secret})
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--auth.keys-dir", dir}, "ingest token: --auth.keys-dir needs --kid: the id of the key to sign with, its file <kid>.hs256\n"},
		{[]string{"--auth.keys-dir", dir, "--kid", "e"}, "ingest token: key e in --auth.keys-dir is a public key: sign with its private key (--auth.rs256-private-key or --auth.es256-private-key) and --kid e\n"},
		{[]string{"--auth.keys-dir", dir, "--kid", "../a"}, `ingest token: --kid "../a": 1 to 64 letters, digits, '.', '_' or '-'` + "\n"},
	} {
		_, errOut, code := runBin(t, "", nil, append([]string{"token", "--subject", "d1"}, c.args...)...)
		if code != 2 || !strings.HasPrefix(errOut, c.want) {
			t.Errorf("ingest token %q: exit %d, printed %q; want exit 2 and %q", c.args, code, errOut, c.want)
		}
	}
}
