package main

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// A storage writer's sinks come from --sink (INGEST_SINK), one spec each:
//
//	KIND[+URL][#OPTION=VALUE,...]
//
// embedded                                  the embedded TSDB (--data.dir)
// remotewrite+http://vm:8428/api/v1/write   Prometheus remote-write 1.0
// influx+http://influxdb:8086#db=ingest     InfluxDB line protocol, 1.x API
// influx+http://influxdb:8086#org=o,bucket=b,token-file=/t   the 2.x API
//
// The flag may be given several times, and one value (the environment
// twin's in particular) may hold several specs separated by white space.
// Option values are percent-decoded: %2C is a comma, %20 a space, %23 a
// '#'. Files named by options are read when the writer is built, not here:
// parseSinkSpec checks the syntax only.

// sinkKinds are the kinds of sink, with the options each takes and an
// example, in the order --help and the errors list them.
var sinkKinds = []sinkKind{
	{"embedded", "embedded", false, []string{"name"}},
	{"remotewrite", "remotewrite+http://victoria-metrics:8428/api/v1/write#bearer-file=/run/secrets/vm-token",
		true, httpSinkOptions},
	{"influx", "influx+http://influxdb:8086#db=ingest,user=ingest,password-file=/run/secrets/influx-password",
		true, append([]string{"db", "rp", "org", "bucket", "token-file", "measurement", "no-strings"}, httpSinkOptions...)},
}

type sinkKind struct {
	kind, example string
	url           bool // it takes a URL
	opts          []string
}

// httpSinkOptions are the options every HTTP sink takes.
var httpSinkOptions = []string{"name", "header", "ca-file", "bearer-file", "user", "password-file"}

// sinkSpec is one parsed --sink.
type sinkSpec struct {
	kind string
	url  string // remotewrite: the endpoint; influx: the server's base URL
	name string // the metrics' sink label, and the suffix of the consumer name when there are several sinks
	// opts are the options but name and header, each given at most once.
	opts map[string]string
	// headers are the header options, in order: [name, value] each.
	headers [][2]string
}

// sinkNameRE is what a sink's name may be: it goes into a consumer name
// and a metric label.
var sinkNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$`)

// headerNameRE is an HTTP header name (an RFC 9110 token).
var headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// parseSinkSpec parses one spec (no white space in it).
func parseSinkSpec(spec string) (sinkSpec, error) {
	var s sinkSpec
	head, options, hasOpts := strings.Cut(spec, "#")
	kind, u, hasURL := strings.Cut(head, "+")
	i := slices.IndexFunc(sinkKinds, func(k sinkKind) bool { return k.kind == kind })
	if i < 0 {
		return s, fmt.Errorf("sink %q: unknown kind %q: want %s", spec, kind, kindList())
	}
	k := sinkKinds[i]
	s.kind, s.name, s.opts = kind, kind, map[string]string{}
	switch {
	case k.url && !hasURL:
		return s, fmt.Errorf("sink %q: %s needs a URL: %s", spec, kind, k.example)
	case !k.url && hasURL:
		return s, fmt.Errorf("sink %q: %s takes no URL", spec, kind)
	case k.url:
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.User != nil {
			return s, fmt.Errorf("sink %q: %q is not an http:// or https:// URL with a host (and no user in it: use the user option)", spec, u)
		}
		s.url = u
	}
	if hasOpts {
		if options == "" {
			return s, fmt.Errorf("sink %q: nothing after '#': give options as name=value pairs separated by commas", spec)
		}
		named := false
		for _, o := range strings.Split(options, ",") {
			name, raw, ok := strings.Cut(o, "=")
			if !ok || name == "" {
				return s, fmt.Errorf("sink %q: option %q is not name=value", spec, o)
			}
			if !slices.Contains(k.opts, name) {
				return s, fmt.Errorf("sink %q: %s takes no option %q (it takes %s)", spec, kind, name, strings.Join(k.opts, ", "))
			}
			v, err := url.PathUnescape(raw)
			if err != nil {
				return s, fmt.Errorf("sink %q: option %s: bad percent-encoding in %q", spec, name, raw)
			}
			if v == "" {
				return s, fmt.Errorf("sink %q: option %s is empty", spec, name)
			}
			switch name {
			case "header":
				hn, hv, ok := strings.Cut(v, ":")
				hv = strings.TrimSpace(hv)
				if !ok || !headerNameRE.MatchString(hn) || hv == "" || strings.ContainsAny(hv, "\r\n\x00") {
					return s, fmt.Errorf("sink %q: header %q is not Name:Value", spec, v)
				}
				s.headers = append(s.headers, [2]string{hn, hv})
				continue
			case "name":
				if named {
					return s, fmt.Errorf("sink %q: option name given twice", spec)
				}
				named = true
				if !sinkNameRE.MatchString(v) {
					return s, fmt.Errorf("sink %q: name %q: up to 32 letters, digits, '_', '.' or '-', starting with a letter or digit", spec, v)
				}
				s.name = v
				continue
			case "no-strings":
				if v != "true" && v != "false" {
					return s, fmt.Errorf("sink %q: no-strings=%s: want true or false", spec, v)
				}
			}
			if _, dup := s.opts[name]; dup {
				return s, fmt.Errorf("sink %q: option %s given twice", spec, name)
			}
			s.opts[name] = v
		}
	}
	return s, s.checkCombination(spec)
}

// checkCombination checks the options that only make sense together.
func (s *sinkSpec) checkCombination(spec string) error {
	has := func(o string) bool { _, ok := s.opts[o]; return ok }
	auth := 0
	for _, a := range []string{"bearer-file", "user", "token-file"} {
		if has(a) {
			auth++
		}
	}
	for _, h := range s.headers {
		if strings.EqualFold(h[0], "Authorization") {
			auth++
		}
	}
	switch {
	case auth > 1:
		return fmt.Errorf("sink %q: give one of bearer-file, user with password-file, token-file and an Authorization header", spec)
	case has("user") != has("password-file"):
		return fmt.Errorf("sink %q: user and password-file go together", spec)
	}
	if s.kind != "influx" {
		return nil
	}
	v1, v2 := has("db"), has("bucket")
	switch {
	case v1 && v2:
		return fmt.Errorf("sink %q: db (the 1.x API) and bucket (the 2.x API) exclude each other", spec)
	case !v1 && !v2:
		return fmt.Errorf("sink %q: influx needs db=… (the 1.x API) or org=…,bucket=… (the 2.x API)", spec)
	case v1 && (has("org") || has("token-file")):
		return fmt.Errorf("sink %q: org and token-file are for the 2.x API (bucket=…), not db=…", spec)
	case v2 && !has("org"):
		return fmt.Errorf("sink %q: bucket needs org", spec)
	case v2 && has("rp"):
		return fmt.Errorf("sink %q: rp is for the 1.x API (db=…); a bucket has its own retention", spec)
	}
	return nil
}

func kindList() string {
	var ks []string
	for _, k := range sinkKinds {
		ks = append(ks, k.kind)
	}
	return strings.Join(ks, ", ")
}

// parseSinks parses the specs of every --sink value (each may hold several,
// separated by white space) and checks them as a set: at most one embedded
// TSDB, no two sinks of one name.
func parseSinks(values []string) ([]sinkSpec, error) {
	var specs []sinkSpec
	for _, v := range values {
		for _, f := range strings.Fields(v) {
			s, err := parseSinkSpec(f)
			if err != nil {
				return nil, err
			}
			specs = append(specs, s)
		}
	}
	if len(specs) == 0 {
		return nil, errors.New("no sink: give --sink embedded, or another kind (" + kindList() + ")")
	}
	seen := map[string]bool{}
	embedded := 0
	for _, s := range specs {
		if seen[s.name] {
			return nil, fmt.Errorf("two sinks are named %q: name each (#name=…)", s.name)
		}
		seen[s.name] = true
		if s.kind == "embedded" {
			embedded++
		}
	}
	if embedded > 1 {
		return nil, errors.New("more than one embedded sink: a writer has one embedded TSDB (--data.dir)")
	}
	return specs, nil
}

// sinkFlag is the value of --sink: every value given, on the command line
// or in the environment. Until one is given it holds the default.
type sinkFlag struct {
	values []string
	set    bool
}

func (f *sinkFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(f.values, " ")
}

// redacted is the flag's value as the query API's status/flags shows it,
// which anyone who reaches --http.listen reads: each header option with
// its name and without its value, which may be the sink's credentials
// (header=Authorization:Bearer …). White space between specs becomes one
// space.
func (f *sinkFlag) redacted() string {
	var out []string
	for _, v := range f.values {
		for _, spec := range strings.Fields(v) {
			head, options, ok := strings.Cut(spec, "#")
			head = redactedQuery(head)
			if !ok {
				out = append(out, head)
				continue
			}
			opts := strings.Split(options, ",")
			for i, o := range opts {
				raw, ok := strings.CutPrefix(o, "header=")
				if !ok {
					continue
				}
				name := "?"
				if d, err := url.PathUnescape(raw); err == nil {
					name, _, _ = strings.Cut(d, ":")
				}
				opts[i] = "header=" + name + ":" + redactedValue
			}
			out = append(out, head+"#"+strings.Join(opts, ","))
		}
	}
	return strings.Join(out, " ")
}

// knownParams are the query parameters of a sink's URL shown as they are;
// any other one's value may be a credential (a hosted store's api_key=,
// InfluxDB 1.x's u= and p=).
var knownParams = map[string]bool{"db": true, "rp": true, "precision": true, "org": true, "bucket": true, "consistency": true}

// redactedQuery is head (kind+URL) with the values of its URL's query
// parameters withheld but for knownParams'. A parameter with no '=' is
// withheld whole, unless known: its name is all it has, and may be the
// token (?<token>).
func redactedQuery(head string) string {
	pre, query, ok := strings.Cut(head, "?")
	if !ok {
		return head
	}
	params := strings.Split(query, "&")
	for i, p := range params {
		name, _, hasValue := strings.Cut(p, "=")
		n, err := url.QueryUnescape(name)
		switch {
		case p == "" || err == nil && knownParams[n]:
		case hasValue:
			params[i] = name + "=" + redactedValue
		default:
			params[i] = redactedValue
		}
	}
	return pre + "?" + strings.Join(params, "&")
}

// redactedValue stands for a value withheld.
const redactedValue = "<redacted>"

func (f *sinkFlag) Set(v string) error {
	if !f.set {
		f.values, f.set = nil, true
	}
	// Checked here so that a bad spec is a usage error naming the flag;
	// parseSinks checks the set once every value is in.
	for _, s := range strings.Fields(v) {
		if _, err := parseSinkSpec(s); err != nil {
			return err
		}
	}
	f.values = append(f.values, v)
	return nil
}

// sinkUsage is --sink's help: each kind with an example.
func sinkUsage() string {
	var b strings.Builder
	b.WriteString("a sink the writer stores into, KIND[+URL][#OPTION=VALUE,...]; repeat the flag for several " +
		"(in the environment, separate them with spaces), each with its own checkpoint at the middletiers " +
		"(consumer <consumer>-<name> when there are several). Kinds:")
	for _, k := range sinkKinds {
		fmt.Fprintf(&b, "\n    \t  %s, e.g. --sink %s", k.kind, k.example)
	}
	b.WriteString("\n    \t  influx 2.x API: --sink influx+http://influxdb:8086#org=acme,bucket=ingest,token-file=/run/secrets/influx-token" +
		"\n    \tOptions of the HTTP sinks: name (metrics label sink, default the kind), header=Name:Value (repeatable), ca-file, " +
		"bearer-file, user with password-file (basic auth), token-file (influx 2.x); influx: db, rp, org, bucket, measurement, no-strings=true. " +
		"Values are percent-decoded (%2C a comma, %20 a space); files are read at start. docs/storage-sinks.md has the details.")
	return b.String()
}
