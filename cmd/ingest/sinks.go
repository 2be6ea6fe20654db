//go:build !nostorage

package main

import (
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/influx"
	"github.com/ingest-io/ingest/storage/remotewrite"
)

// consumer is the consumer name the sink's writer keeps its checkpoint
// under at the middletiers: the writer's own with one sink, so that a
// writer keeps its checkpoint when it is given the sink it had by default;
// with several, one per sink, so that a slow sink holds back no other.
func (s *sinkSpec) consumer(base string, sinks int) string {
	if sinks == 1 {
		return base
	}
	return base + "-" + s.name
}

// httpOptions reads the files the spec names and returns the HTTP
// options of its sink: headers, authorization, certificate authorities.
func (s *sinkSpec) httpOptions() (remotewrite.HTTPOptions, error) {
	var o remotewrite.HTTPOptions
	read := func(opt string) (string, error) {
		b, err := os.ReadFile(s.opts[opt])
		if err != nil {
			return "", fmt.Errorf("sink %s: read %s: %w", s.name, opt, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" || strings.ContainsAny(v, "\r\n\x00") {
			return "", fmt.Errorf("sink %s: %s %s: want one line, not empty", s.name, opt, s.opts[opt])
		}
		return v, nil
	}
	o.Headers = map[string]string{}
	for _, h := range s.headers {
		if _, dup := o.Headers[h[0]]; dup {
			return o, fmt.Errorf("sink %s: header %s given twice", s.name, h[0])
		}
		o.Headers[h[0]] = h[1]
	}
	var err error
	var v string
	switch {
	case s.opts["bearer-file"] != "":
		if v, err = read("bearer-file"); err == nil {
			o.Headers["Authorization"] = "Bearer " + v
		}
	case s.opts["token-file"] != "":
		if v, err = read("token-file"); err == nil {
			o.Headers["Authorization"] = "Token " + v
		}
	case s.opts["password-file"] != "":
		if v, err = read("password-file"); err == nil {
			o.Headers["Authorization"] = "Basic " + base64.StdEncoding.EncodeToString([]byte(s.opts["user"]+":"+v))
		}
	}
	if err != nil {
		return o, err
	}
	if f := s.opts["ca-file"]; f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return o, fmt.Errorf("sink %s: read ca-file: %w", s.name, err)
		}
		o.RootCAs = x509.NewCertPool()
		if !o.RootCAs.AppendCertsFromPEM(pem) {
			return o, fmt.Errorf("sink %s: ca-file %s holds no PEM certificate", s.name, f)
		}
	}
	return o, nil
}

// influxURL is the write endpoint of an influx sink: /write?db= for the
// 1.x API, /api/v2/write?org=&bucket= for the 2.x API, below the path of
// the spec's URL.
func (s *sinkSpec) influxURL() string {
	u, _ := url.Parse(s.url) // parseSinkSpec has checked it
	q := u.Query()
	path := "/write"
	if b, ok := s.opts["bucket"]; ok {
		path = "/api/v2/write"
		q.Set("org", s.opts["org"])
		q.Set("bucket", b)
	} else {
		q.Set("db", s.opts["db"])
		if rp, ok := s.opts["rp"]; ok {
			q.Set("rp", rp)
		}
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawPath = ""
	u.RawQuery = q.Encode()
	return u.String()
}

// newExternalSink builds the sink of a remotewrite or influx spec.
// maxString bounds string values as the embedded TSDB does.
func (s *sinkSpec) newExternalSink(p *process, maxString int) (storage.Sink, error) {
	ho, err := s.httpOptions()
	if err != nil {
		return nil, err
	}
	switch s.kind {
	case "remotewrite":
		return remotewrite.New(remotewrite.Options{URL: s.url, Name: s.name, MaxStringBytes: maxString, HTTPOptions: ho}, p.reg, p.lg)
	case "influx":
		return influx.New(influx.Options{URL: s.influxURL(), Name: s.name, Measurement: s.opts["measurement"],
			NoStrings: s.opts["no-strings"] == "true", HTTPOptions: ho}, p.reg, p.lg)
	}
	return nil, fmt.Errorf("sink %s: kind %s is not external", s.name, s.kind)
}
