package main

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/ingest-io/ingest/internal/certfile"
)

// tlsConfig is TLS on the listeners a process serves to devices, readers
// and users: the device endpoint and the MQTT listener, the live feed and
// the status page, the query API. ingest all registers it once, for all of
// them. The middletier's metrics port stays plain.
type tlsConfig struct {
	certFile, keyFile string
	f                 flags
}

func (c *tlsConfig) register(f flags, on string) {
	c.f = f
	f.str(&c.certFile, "tls.cert-file", "PEM certificate (the leaf first, then intermediates) to serve TLS with on "+on+"; read again when it changes; empty: plain")
	f.str(&c.keyFile, "tls.key-file", "PEM private key of --"+f.name("tls.cert-file"))
}

// build reads the pair and has p serve TLS with it (p.tls), or leaves p
// plain if neither file is given.
func (c *tlsConfig) build(p *process) error {
	if c.certFile == "" && c.keyFile == "" {
		return nil
	}
	cert, key := c.f.name("tls.cert-file"), c.f.name("tls.key-file")
	if c.certFile == "" || c.keyFile == "" {
		return fmt.Errorf("--%s and --%s go together", cert, key)
	}
	r, err := certfile.New(certfile.Options{CertFile: c.certFile, KeyFile: c.keyFile}, p.reg, p.lg)
	if err != nil {
		return fmt.Errorf("tls (--%s, --%s): %w", cert, key, err)
	}
	p.onClose("tls", r.Close)
	p.tls = r
	return nil
}

// listenTLS binds addr, the value of the flag called flag, as listen does;
// when p serves TLS, connections are TLS, offering the application
// protocols protos ("http/1.1" for HTTP, none for MQTT).
func (p *process) listenTLS(flag, addr string, protos ...string) (net.Listener, error) {
	ln, err := listen(flag, addr)
	if err != nil || p.tls == nil {
		return ln, err
	}
	return tls.NewListener(ln, p.tls.TLSConfig(protos...)), nil
}

// scheme is s ("ws", "http") as p serves it: "wss" and "https" with TLS.
func (p *process) scheme(s string) string {
	if p.tls != nil {
		return s + "s"
	}
	return s
}
