package certfile_test

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/certfile"
	"github.com/ingest-io/ingest/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve accepts TLS connections with r's configuration on loopback until
// the test ends, completing each handshake, and returns the address.
func serve(t *testing.T, r *certfile.Reloader) string {
	t.Helper()
	ln := testkit.Listen(t)
	tln := tls.NewListener(ln, r.TLSConfig())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := tln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.(*tls.Conn).Handshake()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func newReloader(t *testing.T, certFile, keyFile string, every time.Duration, reg prometheus.Registerer) *certfile.Reloader {
	t.Helper()
	r, err := certfile.New(certfile.Options{CertFile: certFile, KeyFile: keyFile, CheckInterval: every}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func reloads(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ingest_tls_reloads_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no ingest_tls_reloads_total{result=%q}", result)
	return 0
}

// A new pair written over the files is presented from the next handshake
// after the check interval, and a pair that does not parse leaves the
// pair in use, counted and logged, until a good one comes.
func TestReload(t *testing.T) {
	ca := testkit.NewCA(t)
	dir := t.TempDir()
	first := ca.Issue(t)
	certFile, keyFile := first.Write(t, dir)
	reg := prometheus.NewRegistry()
	r := newReloader(t, certFile, keyFile, time.Nanosecond, reg)
	addr := serve(t, r)
	ca.CheckServes(t, addr, first, "at first")

	second := ca.Issue(t)
	second.Write(t, dir)
	ca.CheckServes(t, addr, second, "after the files changed")
	if ok, bad := reloads(t, reg, "ok"), reloads(t, reg, "error"); ok != 1 || bad != 0 {
		t.Fatalf("reloads ok %v error %v, want 1 and 0", ok, bad)
	}

	// A certificate whose key is another's: refused, the second stays.
	third, fourth := ca.Issue(t), ca.Issue(t)
	writeFile(t, certFile, third.CertPEM)
	writeFile(t, keyFile, fourth.KeyPEM)
	ca.CheckServes(t, addr, second, "after a mismatched pair (the pair in use stays)")
	if bad := reloads(t, reg, "error"); bad != 1 {
		t.Fatalf("reloads error %v, want 1", bad)
	}
	// Unchanged since: not read again, not counted again.
	ca.ServedSerial(t, addr)
	if bad := reloads(t, reg, "error"); bad != 1 {
		t.Fatalf("reloads error %v after a handshake with the files unchanged, want 1", bad)
	}
	// Garbage in the certificate file: refused too.
	writeFile(t, certFile, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
	ca.CheckServes(t, addr, second, "after a garbled certificate")
	// The right key arrives: the third is taken.
	writeFile(t, certFile, third.CertPEM)
	writeFile(t, keyFile, third.KeyPEM)
	ca.CheckServes(t, addr, third, "once the pair matched")
	if ok := reloads(t, reg, "ok"); ok != 2 {
		t.Fatalf("reloads ok %v, want 2", ok)
	}
	exp := gauge(t, reg, "ingest_tls_certificate_expiry_timestamp_seconds")
	if d := time.Until(time.Unix(int64(exp), 0)); d < 20*time.Hour || d > 25*time.Hour {
		t.Fatalf("expiry gauge %v is %v from now, want about a day", exp, d)
	}

	// An expired pair, or one not yet valid, while the one in use is
	// valid: refused, the third stays (every client would refuse it).
	before := reloads(t, reg, "error")
	for i, l := range []testkit.Leaf{
		ca.IssueValid(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)),
		ca.IssueValid(t, time.Now().Add(time.Hour), time.Now().Add(48*time.Hour)),
	} {
		l.Write(t, dir)
		ca.CheckServes(t, addr, third, "after a pair outside its validity")
		if bad := reloads(t, reg, "error"); bad != before+float64(i+1) {
			t.Fatalf("reloads error %v after %d pairs outside their validity, want %v", bad, i+1, before+float64(i+1))
		}
	}

	// One that becomes valid a moment later is taken then, its files
	// unchanged since it was refused.
	// (NotBefore is kept to the second: 2 s ahead is at least 1 s.)
	soon := ca.IssueValid(t, time.Now().Add(2*time.Second), time.Now().Add(48*time.Hour))
	soon.Write(t, dir)
	ca.CheckServes(t, addr, third, "while the renewed pair is not yet valid")
	time.Sleep(2100 * time.Millisecond)
	ca.CheckServes(t, addr, soon, "once the renewed pair is valid, its files unchanged since")
	third = soon

	// Files gone: the pair in use stays.
	os.Remove(certFile)
	ca.CheckServes(t, addr, third, "with the certificate file gone")
}

// The files are looked at no more than once per check interval.
func TestCheckInterval(t *testing.T) {
	ca := testkit.NewCA(t)
	dir := t.TempDir()
	first := ca.Issue(t)
	certFile, keyFile := first.Write(t, dir)
	r := newReloader(t, certFile, keyFile, time.Hour, nil)
	addr := serve(t, r)
	ca.Issue(t).Write(t, dir)
	for range 3 {
		ca.CheckServes(t, addr, first, "within the check interval")
	}
}

// A Kubernetes Secret volume swaps a symlink to a new directory; the files
// named through it change identity, not always size.
func TestSymlinkSwap(t *testing.T) {
	ca := testkit.NewCA(t)
	dir := t.TempDir()
	first, second := ca.Issue(t), ca.Issue(t)
	for i, l := range []testkit.Leaf{first, second} {
		d := filepath.Join(dir, []string{"..v1", "..v2"}[i])
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		l.Write(t, d)
	}
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"cert.pem", "key.pem"} {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	r := newReloader(t, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), time.Nanosecond, nil)
	addr := serve(t, r)
	ca.CheckServes(t, addr, first, "at first")
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink("..v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	ca.CheckServes(t, addr, second, "after the swap")
}

// A pair that cannot be used at start is an error naming the files.
func TestNewRefuses(t *testing.T) {
	ca := testkit.NewCA(t)
	dir := t.TempDir()
	a, b := ca.Issue(t), ca.Issue(t)
	certFile, keyFile := a.Write(t, dir)
	writeFile(t, keyFile, b.KeyPEM)
	for _, tc := range []struct {
		name       string
		cert, key  string
		wantInErr  string
		wantErrIsF bool
	}{
		{"no files", "", "", "both needed", false},
		{"missing", filepath.Join(dir, "none.pem"), keyFile, "none.pem", true},
		{"mismatched", certFile, keyFile, "cert.pem", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := certfile.New(certfile.Options{CertFile: tc.cert, KeyFile: tc.key}, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.wantInErr) {
				t.Fatalf("New: %v, want an error naming %q", err, tc.wantInErr)
			}
			if tc.wantErrIsF && !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("New: %v, want it to wrap os.ErrNotExist", err)
			}
		})
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	ms := testkit.Series(t, reg, name)
	if len(ms) == 0 {
		t.Fatalf("no %s", name)
	}
	return ms[0].GetGauge().GetValue()
}
