// Package certfile serves a TLS certificate and key from two PEM files and
// takes up new ones when the files change, without a restart: a
// certificate manager or a Kubernetes Secret volume replaces them, and the
// next handshake after the change presents the new certificate.
//
// The files are looked at from the handshake itself (tls.Config's
// GetCertificate), at most once per Options.CheckInterval: a stat of each,
// and a read of both when either differs from the pair in use (another
// file, a modification time or a size). A new pair that cannot be read or
// does not parse (a certificate whose key is not the key file's, or a
// certificate replaced and its key not yet), or whose certificate is
// outside its validity period while the one in use is within its own
// (every client would refuse it), is logged and counted, the pair in use
// stays, and the files are read again as soon as either changes again.
package certfile

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/metricset"
)

// Options name the files.
type Options struct {
	// CertFile holds the certificate in PEM, the leaf first and the
	// intermediates after it; KeyFile its private key in PEM.
	CertFile, KeyFile string
	// CheckInterval is the least time between two looks at the files.
	// Zero: DefaultCheckInterval.
	CheckInterval time.Duration
}

// DefaultCheckInterval is how often, at most, the files are looked at.
const DefaultCheckInterval = 2 * time.Second

// Reloader holds the pair in use and looks for a new one.
type Reloader struct {
	opts Options
	lg   *slog.Logger
	set  *metricset.Set // the metrics, registered

	mu     sync.Mutex
	cert   *tls.Certificate
	stamps [2]os.FileInfo // of the files last read, whether they parsed or not
	// validFrom, when not zero, is when the pair last read, refused as not
	// yet valid, becomes valid: it is read again then, its files unchanged.
	validFrom time.Time
	lastCheck time.Time

	m struct {
		reloads  *prometheus.CounterVec
		notAfter prometheus.Gauge
	}
}

// New reads the pair; a pair that cannot be read or does not parse is an
// error naming the file. reg and lg may be nil.
func New(opts Options, reg prometheus.Registerer, lg *slog.Logger) (*Reloader, error) {
	if opts.CertFile == "" || opts.KeyFile == "" {
		return nil, errors.New("certfile: a certificate file and a key file are both needed")
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{opts: opts, lg: lg}
	r.m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ingest_tls_reloads_total",
		Help: "Reads of a changed TLS certificate and key, by result (ok, error); after an error the pair in use stays."}, []string{"result"})
	r.m.notAfter = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_tls_certificate_expiry_timestamp_seconds",
		Help: "When the TLS certificate in use expires (its NotAfter), in seconds since the epoch."})
	r.m.reloads.WithLabelValues("ok")
	r.m.reloads.WithLabelValues("error")
	stamps, err := stat(opts)
	if err != nil {
		return nil, err
	}
	cert, err := load(opts)
	if err != nil {
		return nil, err
	}
	r.cert, r.stamps, r.lastCheck = cert, stamps, time.Now()
	r.m.notAfter.Set(float64(cert.Leaf.NotAfter.Unix()))
	if r.set, err = metricset.Register(reg, r.m.reloads, r.m.notAfter); err != nil {
		return nil, fmt.Errorf("certfile: register metrics: %w", err)
	}
	return r, nil
}

// Close unregisters the metrics. The Reloader still serves its pair.
func (r *Reloader) Close() error {
	r.set.Unregister()
	return nil
}

// TLSConfig is a server configuration that presents the files' pair, TLS
// 1.2 and later, offering the application protocols protos through ALPN:
// "http/1.1" for HTTP servers (WebSocket handshakes are HTTP/1.1
// requests), none for MQTT, whose clients may ask for names of their own.
func (r *Reloader) TLSConfig(protos ...string) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: protos, GetCertificate: r.GetCertificate}
}

// GetCertificate returns the pair in use, after looking at the files if
// the last look is CheckInterval old.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.lastCheck) >= r.opts.CheckInterval {
		r.lastCheck = now
		r.check()
	}
	return r.cert, nil
}

// check reads the pair again if either file changed since it was last
// read. r.mu is held.
func (r *Reloader) check() {
	stamps, err := stat(r.opts)
	if err != nil {
		// A file gone for a moment (a rename in progress) or for good:
		// keep serving, say so once per change.
		if r.stamps[0] != nil {
			r.fail(err)
			r.stamps = [2]os.FileInfo{}
		}
		return
	}
	if same(stamps, r.stamps) && (r.validFrom.IsZero() || time.Now().Before(r.validFrom)) {
		return
	}
	r.stamps, r.validFrom = stamps, time.Time{}
	cert, err := load(r.opts)
	if err != nil {
		r.fail(err)
		return
	}
	if now := time.Now(); !valid(cert.Leaf, now) && valid(r.cert.Leaf, now) {
		// Every client would refuse it: keep the one that still works.
		// One not yet valid (its issuer's clock ahead, or no NotBefore
		// backdating) is taken once it is.
		if now.Before(cert.Leaf.NotBefore) {
			r.validFrom = cert.Leaf.NotBefore
		}
		r.fail(fmt.Errorf("certfile: the certificate is valid from %s to %s, not now",
			cert.Leaf.NotBefore.UTC().Format(time.RFC3339), cert.Leaf.NotAfter.UTC().Format(time.RFC3339)))
		return
	}
	r.cert = cert
	r.m.reloads.WithLabelValues("ok").Inc()
	r.m.notAfter.Set(float64(cert.Leaf.NotAfter.Unix()))
	r.lg.Info("tls certificate reloaded", "cert", r.opts.CertFile, "serial", cert.Leaf.SerialNumber.String(),
		"subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
}

// valid reports whether c is within its validity period at now.
func valid(c *x509.Certificate, now time.Time) bool {
	return !now.Before(c.NotBefore) && !now.After(c.NotAfter)
}

func (r *Reloader) fail(err error) {
	r.m.reloads.WithLabelValues("error").Inc()
	r.lg.Error("tls certificate not reloaded: the pair in use stays", "err", err,
		"serial", r.cert.Leaf.SerialNumber.String())
}

func stat(o Options) ([2]os.FileInfo, error) {
	var st [2]os.FileInfo
	for i, p := range []string{o.CertFile, o.KeyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return st, fmt.Errorf("certfile: %w", err)
		}
		st[i] = fi
	}
	return st, nil
}

// same reports whether a and b are the same files, unchanged.
func same(a, b [2]os.FileInfo) bool {
	for i := range a {
		if a[i] == nil || b[i] == nil || !os.SameFile(a[i], b[i]) ||
			!a[i].ModTime().Equal(b[i].ModTime()) || a[i].Size() != b[i].Size() {
			return false
		}
	}
	return true
}

func load(o Options) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("certfile: load %s and %s: %w", o.CertFile, o.KeyFile, err)
	}
	if c.Leaf == nil { // filled by LoadX509KeyPair since Go 1.23
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certfile: parse %s: %w", o.CertFile, err)
		}
	}
	return &c, nil
}
