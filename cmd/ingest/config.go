package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/wal"
)

// The configs here are shared by several tiers; ingest all registers each
// once: one logger, one set of keys for devices and dashboard readers, one
// device registry.

// logConfig is the process logger's flags.
type logConfig struct {
	level, format string
}

func newLogConfig() logConfig { return logConfig{level: "info", format: "text"} }

func (c *logConfig) register(f flags) {
	f.str(&c.level, "log.level", "log level: debug, info, warn, error")
	f.str(&c.format, "log.format", "log format: text or json")
}

// logger builds the process logger on stderr.
func (c *logConfig) logger() (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.level)); err != nil {
		return nil, fmt.Errorf("parse --log.level: %w", err)
	}
	o := &slog.HandlerOptions{Level: l}
	switch c.format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, o)), nil
	}
	return nil, fmt.Errorf("parse --log.format %q: want text or json", c.format)
}

// authConfig is how devices (frontend) and dashboard readers (feed) are
// authenticated: JWT keys, or none on loopback.
type authConfig struct {
	hs256File, rs256File, es256File string
	keysDir                         string
	issuer, audience                string
	requireExp                      bool
	leeway                          time.Duration
	noAuth                          bool
	f                               flags
}

// register registers the auth flags; who names the clients ("devices").
func (c *authConfig) register(f flags, who string) {
	c.f = f
	f.str(&c.hs256File, "auth.hs256-secret-file", "file holding the HS256 shared secret (at least 32 bytes)")
	f.str(&c.rs256File, "auth.rs256-public-keys", "PEM file of RSA public keys accepted for RS256")
	f.str(&c.es256File, "auth.es256-public-keys", "PEM file of P-256 public keys accepted for ES256")
	f.str(&c.keysDir, "auth.keys-dir", "directory of keys a token's kid header selects, the file name the kid: <kid>.hs256 an HS256 secret, <kid>.pem an RSA (RS256) or P-256 (ES256) public key; with the keys above, or instead of them")
	f.str(&c.issuer, "auth.issuer", "required token issuer (iss), if set")
	f.str(&c.audience, "auth.audience", "required token audience (aud), if set")
	f.boolean(&c.requireExp, "auth.require-exp", "refuse tokens without exp")
	f.duration(&c.leeway, "auth.leeway", "clock skew tolerated on exp and nbf")
	f.boolean(&c.noAuth, "insecure-no-auth", "accept "+who+" without tokens; loopback only")
}

func (c *authConfig) keyed() bool {
	return c.hs256File != "" || c.rs256File != "" || c.es256File != "" || c.keysDir != ""
}

// loopbackOnly refuses, without auth, a listen address of f (flag name,
// value, ...) that is not on loopback: one without a host (every
// interface) or with an IP address that is not loopback. It is said
// before anything is opened, naming the flag; a host name is left to the
// server, which checks the address it bound.
func (c *authConfig) loopbackOnly(f flags, nameValues ...string) error {
	if !c.noAuth {
		return nil
	}
	for i := 0; i+1 < len(nameValues); i += 2 {
		name, addr := nameValues[i], nameValues[i+1]
		if addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			continue // the listen says what is wrong with it
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && !ip.IsLoopback() {
			return fmt.Errorf("--%s serves loopback only: --%s %s is not (give 127.0.0.1:<port>, or auth keys)",
				c.f.name("insecure-no-auth"), f.name(name), addr)
		}
	}
	return nil
}

// options reads the keys.
func (c *authConfig) options() (auth.Options, error) {
	o := auth.Options{Issuer: c.issuer, Audience: c.audience, RequireExpiry: c.requireExp, Leeway: c.leeway}
	if c.noAuth && c.keyed() {
		return o, fmt.Errorf("--%s cannot be combined with auth keys", c.f.name("insecure-no-auth"))
	}
	if !c.noAuth && !c.keyed() {
		// Said here, naming the flags, rather than by the tier's options,
		// which name their fields.
		return o, errNoAuth
	}
	if c.hs256File != "" {
		b, err := os.ReadFile(c.hs256File)
		if err != nil {
			return o, fmt.Errorf("read HS256 secret (--%s): %w", c.f.name("auth.hs256-secret-file"), err)
		}
		o.HS256Secrets = [][]byte{[]byte(strings.TrimSpace(string(b)))}
	}
	var err error
	if c.keysDir != "" {
		if o.Keys, err = readKeyDir(c.keysDir); err != nil {
			return o, fmt.Errorf("--%s: %w", c.f.name("auth.keys-dir"), err)
		}
	}
	if c.rs256File != "" {
		if o.RS256Keys, err = readKeys(c.rs256File, jwt.ParseRSAPublicKeyFromPEM); err != nil {
			return o, err
		}
	}
	if c.es256File != "" {
		if o.ES256Keys, err = readKeys(c.es256File, jwt.ParseECPublicKeyFromPEM); err != nil {
			return o, err
		}
	}
	return o, nil
}

// keyIDs are the key ids a key directory's file names may give, and
// `ingest token --kid` may write.
var keyIDs = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// readKeyDir reads the keys of a key directory, each file a key whose
// name is its id: <kid>.hs256 an HS256 secret (white space around it
// trimmed), <kid>.pem one PEM public key, RSA for RS256 or P-256 for
// ES256. Names that start with a dot, and directories, are passed over:
// a Kubernetes Secret mounted as a directory has its ..data entries beside
// the keys.
func readKeyDir(dir string) ([]auth.Key, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	var keys []auth.Key
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if st, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("read keys: %w", err)
		} else if st.IsDir() {
			continue
		}
		ext := filepath.Ext(e.Name())
		k := auth.Key{ID: strings.TrimSuffix(e.Name(), ext)}
		if ext != ".hs256" && ext != ".pem" {
			return nil, fmt.Errorf("key file %s: name it <kid>.hs256 (an HS256 secret) or <kid>.pem (a public key)", path)
		}
		if !keyIDs.MatchString(k.ID) {
			return nil, fmt.Errorf("key file %s: the key id %q is not 1 to 64 letters, digits, '.', '_' or '-'", path, k.ID)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read keys: %w", err)
		}
		if ext == ".hs256" {
			k.Secret = []byte(strings.TrimSpace(string(b)))
		} else if k.Public, err = parsePublicKey(b); err != nil {
			return nil, fmt.Errorf("key file %s: %w", path, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no key in %s (<kid>.hs256 or <kid>.pem)", dir)
	}
	return keys, nil
}

// parsePublicKey parses one PEM public key, RSA or EC.
func parsePublicKey(b []byte) (crypto.PublicKey, error) {
	blk, rest := pem.Decode(b)
	switch {
	case blk == nil:
		return nil, errors.New("no PEM block")
	case len(bytes.TrimSpace(rest)) > 0:
		return nil, errors.New("more than one PEM block: one key a file")
	}
	if k, err := jwt.ParseRSAPublicKeyFromPEM(b); err == nil {
		return k, nil
	}
	k, err := jwt.ParseECPublicKeyFromPEM(b)
	if err != nil {
		return nil, errors.New("not an RSA or EC public key")
	}
	return k, nil
}

func readKeys[K *rsa.PublicKey | *ecdsa.PublicKey](path string, parse func([]byte) (K, error)) ([]K, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	var keys []K
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		k, err := parse(pem.EncodeToMemory(blk))
		if err != nil {
			return nil, fmt.Errorf("parse key in %s: %w", path, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("parse keys: no PEM block in %s", path)
	}
	return keys, nil
}

// walConfig is a WAL's flags.
type walConfig struct {
	maxBytes       int64
	segmentBytes   int
	noPreallocate  bool
	repair         bool
	commitInterval time.Duration
	// repairFlag is --wal.repair's name as registered (within ingest all,
	// with its tier's prefix), which the error of a cut log names.
	repairFlag string
}

// defaultCommitInterval is the tiers' --wal.commit-interval: see
// wal.Options.CommitInterval and docs/benchmarks.md for how it was chosen.
const defaultCommitInterval = time.Millisecond

func newWALConfig() walConfig {
	d := wal.DefaultOptions()
	return walConfig{maxBytes: d.MaxBytes, segmentBytes: d.SegmentBytes, commitInterval: defaultCommitInterval}
}

// register registers the WAL's flags; full says what happens past its bound.
func (c *walConfig) register(f flags, full string) {
	f.int64(&c.maxBytes, "wal.max-bytes", "bound on the WAL's unreleased bytes; past it "+full)
	f.integer(&c.segmentBytes, "wal.segment-bytes", "WAL segment size")
	f.boolean(&c.noPreallocate, "wal.no-preallocate", "let WAL segments grow as they are written instead of writing each next one as zeros ahead of need (fewer bytes written, a slower sync per acknowledgement)")
	f.duration(&c.commitInterval, "wal.commit-interval", "least time between the starts of two WAL group commits (one write and one fsync each): an append sooner waits for the rest of it and shares the next commit, which bounds the fsyncs a second under load at the cost of up to this much latency per acknowledgement, plus the timer slack (INGEST_TIMER_SLACK) by which the wait may overrun; 0: commit at once")
	f.boolean(&c.repair, "wal.repair", "open a WAL whose last segment was cut short (refused otherwise): keep its whole entries, log and count what is lost, give the log a new identity")
	c.repairFlag = f.name("wal.repair")
}

// openError is the error of a WAL of hop that did not open: one whose last
// segment was cut short names the flag that repairs it.
func (c *walConfig) openError(hop, shown string, err error) error {
	if errors.Is(err, wal.ErrTruncated) && c.repairFlag != "" {
		return fmt.Errorf("open %s wal: %w (--%s repairs it)", hop, err, c.repairFlag)
	}
	return fmt.Errorf("open %s wal: %w", hop, inUse(shown, err))
}

// open opens the WAL of hop in dir and has p close it last. shown is the
// directory to name if another process holds it.
func (c *walConfig) open(p *process, hop, dir, shown string) (*wal.Log, error) {
	l, err := wal.Open(dir, wal.Options{Hop: hop, MaxBytes: c.maxBytes, SegmentBytes: c.segmentBytes,
		NoPreallocate: c.noPreallocate, RepairTruncated: c.repair, CommitInterval: c.commitInterval}, p.reg, p.lg)
	if err != nil {
		return nil, c.openError(hop, shown, err)
	}
	p.onClose(hop+" wal", l.Close)
	return l, nil
}

// registryConfig is the device registry's flag.
type registryConfig struct {
	file string
}

func (c *registryConfig) register(f flags, use string) {
	f.str(&c.file, "registry.file", "device registry (YAML or CSV) "+use+"; reloaded on change (none if empty)")
}

// build loads the registry and has p follow the file.
func (c *registryConfig) build(p *process) (*registry.Registry, error) {
	r, err := registry.New(c.file, p.reg, p.lg)
	if err != nil {
		return nil, err
	}
	p.onClose("registry", r.Close)
	p.add(part{name: "registry", stage: stageSupport, run: r.Run})
	return r, nil
}

// buildIfGiven is build when --registry.file is given, and nil otherwise.
func (c *registryConfig) buildIfGiven(p *process) (*registry.Registry, error) {
	if c.file == "" {
		return nil, nil
	}
	return c.build(p)
}

// errNoAuth is returned when neither keys nor --insecure-no-auth are given.
var errNoAuth = errors.New("give auth keys (--auth.hs256-secret-file, --auth.rs256-public-keys, --auth.es256-public-keys or --auth.keys-dir), or --insecure-no-auth to try the engine on loopback")
