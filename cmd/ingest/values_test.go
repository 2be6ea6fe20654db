package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

type flagCase struct{ flag, value string }

// checkRefused runs ingest all with each case's flag and fails unless it
// exits 2 with an error naming the flag.
func checkRefused(t *testing.T, cases []flagCase) {
	for _, c := range cases {
		t.Run(c.flag, func(t *testing.T) {
			args := []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", "127.0.0.1:0",
				"--mqtt.listen", "127.0.0.1:0", "--feed.listen", "127.0.0.1:0", "--storage.http.listen", "127.0.0.1:0",
				"--self-monitor.interval", "0", "--" + c.flag, c.value}
			p := &tierProc{t: t, name: "all", args: args, ready: regexpEngine}
			_, errOut, code := runBinStopping(t, p)
			if code != 2 || !strings.Contains(errOut, "--"+c.flag) {
				t.Errorf("ingest all --%s %s: exit %d, printed %q; want exit 2 and an error naming --%s",
					c.flag, c.value, code, strings.TrimSpace(tail(errOut, 1)), c.flag)
			}
		})
	}
}

// TestNegativeValuesRefused: a negative duration or count is refused at
// start (exit 2, naming the flag). Before, the engine served (exit -1
// below: it had to be stopped), the value standing silently for the
// default, or (flush and storage timeouts) for "do not wait at all".
func TestNegativeValuesRefused(t *testing.T) {
	checkRefused(t, []flagCase{
		{"uplink.window", "-1"},
		{"uplink.ack-timeout", "-1s"},
		{"uplink.flush-timeout", "-1s"},
		{"drain.storage-timeout", "-1s"},
		{"storage.tsdb.retention", "-1h"},
		{"middletier.lease.ttl", "-1s"},
		{"commands.max-ttl", "-1s"},
	})
}

// TestBadValueNamesItsFlag: a value the tiers' options would refuse is
// refused at start with exit 2 and the flag's name. Before, it was refused
// after the WALs and the TSDB were opened, with exit 1 and an error that
// named no flag ("check options: limits must not be negative": the
// frontend's or the feed's?).
func TestBadValueNamesItsFlag(t *testing.T) {
	checkRefused(t, []flagCase{
		{"feed.max-readers", "-1"},
		{"max-connections", "-1"},
		{"wal.segment-bytes", "-5"},
		{"max-message-bytes", "300000"},
		{"burst", "10"}, // below --max-batch's 500
		{"mqtt.receive-maximum", "70000"},
	})
}

// TestZeroFrameBoundIsTheDefault: --max-frame-bytes 0 stands for the
// default frame bound (256 KiB), so a message bound under it is served and
// one over it is refused naming the flag. Before, the message bound was
// compared with 0 and any was refused.
func TestZeroFrameBoundIsTheDefault(t *testing.T) {
	for _, c := range []struct {
		msg  string
		code int // -1: served
	}{{"1000", -1}, {"300000", 2}} {
		args := []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", "127.0.0.1:0",
			"--mqtt.listen", "127.0.0.1:0", "--feed.listen", "127.0.0.1:0", "--storage.http.listen", "127.0.0.1:0",
			"--self-monitor.interval", "0", "--max-frame-bytes", "0", "--max-message-bytes", c.msg}
		_, errOut, code := runBinStopping(t, &tierProc{t: t, name: "all", args: args, ready: regexpEngine})
		if code != c.code || code == 2 && !strings.Contains(errOut, "--max-message-bytes") {
			t.Errorf("ingest all --max-frame-bytes 0 --max-message-bytes %s: exit %d, printed %q; want exit %d (-1: served)",
				c.msg, code, strings.TrimSpace(tail(errOut, 1)), c.code)
		}
	}
}

var regexpEngine = regexp.MustCompile(`msg="engine running`)

// runBinStopping runs p's command line; if the process gets to its ready
// line it is sent SIGTERM. It returns stdout (empty), stderr and the exit
// code (-1 if it started and had to be stopped: the value was accepted).
func runBinStopping(t *testing.T, p *tierProc) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binPath, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	started := false
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if !started && p.ready.MatchString(sc.Text()) {
			started = true
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	cmd.Wait()
	if started {
		return "", "started and served (value accepted)\n" + out.String(), -1
	}
	return "", out.String(), cmd.ProcessState.ExitCode()
}

// TestTokenKeysDirBesideASecretFile: docs/devices.md's
// `ingest token --auth.keys-dir keys/ --kid k2026b` signs with the secret
// k2026b.hs256, in a loop that may export INGEST_AUTH_HS256_SECRET_FILE.
// The directory's key is not dropped for the environment's secret file:
// before, the token carried kid k2026b and was signed with the old secret,
// which every frontend refuses. The mix is refused, naming both.
func TestTokenKeysDirBesideASecretFile(t *testing.T) {
	dir := t.TempDir()
	oldSecret := filepath.Join(dir, "old")
	keys := filepath.Join(dir, "keys")
	os.Mkdir(keys, 0o700)
	newSecret := "new-secret-new-secret-new-secret-4567"
	os.WriteFile(oldSecret, []byte("old-secret-old-secret-old-secret-0123\n"), 0o600)
	os.WriteFile(filepath.Join(keys, "k2026b.hs256"), []byte(newSecret+"\n"), 0o600)
	out, errOut, code := runBin(t, "", []string{"INGEST_AUTH_HS256_SECRET_FILE=" + oldSecret},
		"token", "--auth.keys-dir", keys, "--kid", "k2026b", "--subject", "dev-1")
	if code != 2 || !strings.Contains(errOut, "INGEST_AUTH_HS256_SECRET_FILE") || !strings.Contains(errOut, "--auth.keys-dir") {
		t.Fatalf("exit %d, printed %q, token %q: want exit 2 naming both keys", code, errOut, out)
	}
	// Alone, the directory's key signs.
	out, errOut, code = runBin(t, "", nil, "token", "--auth.keys-dir", keys, "--kid", "k2026b", "--subject", "dev-1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if _, err := jwt.Parse(strings.TrimSpace(out), func(*jwt.Token) (any, error) { return []byte(newSecret), nil },
		jwt.WithValidMethods([]string{"HS256"})); err != nil {
		t.Fatalf("token with kid k2026b is not signed with keys/k2026b.hs256: %v", err)
	}
}

// TestEndpointWithoutScheme: a ZeroMQ endpoint without its scheme (mt-0:5555
// for tcp://mt-0:5555) can never be dialled ("zmq4: invalid address"); the
// tiers that bind refuse it at start (middletier --ingest.addr), and so now
// do the tiers that dial, naming the flag. Before, they retried it for
// ever: a frontend acknowledged devices into a WAL it never forwarded.
func TestEndpointWithoutScheme(t *testing.T) {
	for _, c := range []struct {
		name, flag string
		ready      string
		args       []string
	}{
		{"frontend uplink", "uplink.middletiers", `msg="frontend listening"`, []string{"frontend", "--insecure-no-auth", "--wal.dir", "", "--listen", "127.0.0.1:0",
			"--uplink.middletiers", "127.0.0.1:5555"}},
		{"frontend commands", "commands.homes", `msg="frontend listening"`, []string{"frontend", "--insecure-no-auth", "--wal.dir", "", "--listen", "127.0.0.1:0",
			"--commands.homes", "127.0.0.1:5558"}},
		{"storage", "middletiers.stream", `msg="storage listening"`, []string{"storage", "--data.dir", "", "--http.listen", "127.0.0.1:0", "--self-monitor.interval", "0",
			"--middletiers.stream", "127.0.0.1:5557", "--middletiers.consumer", "127.0.0.1:5556"}},
		{"feed", "middletiers", `msg="feed listening"`, []string{"feed", "--insecure-no-auth", "--listen", "127.0.0.1:0", "--middletiers", "127.0.0.1:5558"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := slices.Clone(c.args)
			for i, a := range args {
				if a == "" {
					args[i] = t.TempDir()
				}
			}
			p := &tierProc{t: t, name: c.name, args: args, ready: regexp.MustCompile(c.ready)}
			_, errOut, code := runBinStopping(t, p)
			if code != 2 || !strings.Contains(errOut, "--"+c.flag) {
				t.Errorf("ingest %s --%s without tcp://: exit %d, printed %q; want it refused at start naming --%s",
					args[0], c.flag, code, strings.TrimSpace(tail(errOut, 2)), c.flag)
			}
		})
	}
}

// TestTokenKidOfAPublicKey: with INGEST_AUTH_HS256_SECRET_FILE exported and
// --auth.keys-dir --kid naming the directory's public key (<kid>.pem, an
// ES256 key's), ingest token is refused (exit 2) naming the secret and the
// kid. Before, the secret signed an HS256 token that named the ES256 key,
// which every frontend with that directory refuses.
func TestTokenKidOfAPublicKey(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "old")
	keys := filepath.Join(dir, "keys")
	os.Mkdir(keys, 0o700)
	os.WriteFile(secret, []byte("old-secret-old-secret-old-secret-0123\n"), 0o600)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	os.WriteFile(filepath.Join(keys, "k2026b.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600)
	out, errOut, code := runBin(t, "", []string{"INGEST_AUTH_HS256_SECRET_FILE=" + secret},
		"token", "--auth.keys-dir", keys, "--kid", "k2026b", "--subject", "dev-1")
	if code != 2 || !strings.Contains(errOut, "INGEST_AUTH_HS256_SECRET_FILE") || !strings.Contains(errOut, "k2026b.pem") {
		t.Fatalf("exit %d, printed %q, token %q: want exit 2 naming the secret and the public key", code, errOut, out)
	}
}

// TestTokenKeyPairOfTheKid: ingest token with --auth.keys-dir and a --kid
// whose key the directory holds signs only with a key that key verifies:
// an ES256 private key that is not the pair of the directory's k1.pem is
// refused (exit 2), its pair signs. Before, the other key signed a token
// every frontend with that directory refuses.
func TestTokenKeyPairOfTheKid(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	os.Mkdir(keys, 0o700)
	var priv [2]string
	for i := range priv {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		priv[i] = filepath.Join(dir, fmt.Sprintf("k%d.key", i))
		os.WriteFile(priv[i], pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		if i == 0 {
			pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
			os.WriteFile(filepath.Join(keys, "k1.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600)
		}
	}
	out, errOut, code := runBin(t, "", nil, "token", "--auth.keys-dir", keys, "--kid", "k1", "--auth.es256-private-key", priv[1], "--subject", "dev-1")
	if code != 2 || !strings.Contains(errOut, "--kid k1") {
		t.Fatalf("another key than k1.pem's pair: exit %d, printed %q, token %q; want exit 2 naming the kid", code, errOut, out)
	}
	out, errOut, code = runBin(t, "", nil, "token", "--auth.keys-dir", keys, "--kid", "k1", "--auth.es256-private-key", priv[0], "--subject", "dev-1")
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("k1.pem's pair: exit %d, printed %q", code, errOut)
	}
}
