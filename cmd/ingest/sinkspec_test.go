//go:build !nostorage

package main

import (
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseSinkSpec(t *testing.T) {
	for _, c := range []struct {
		spec          string
		kind, name, u string
		opts          map[string]string
		headers       [][2]string
	}{
		{"embedded", "embedded", "embedded", "", map[string]string{}, nil},
		{"embedded#name=tsdb", "embedded", "tsdb", "", map[string]string{}, nil},
		{"remotewrite+http://vm:8428/api/v1/write", "remotewrite", "remotewrite", "http://vm:8428/api/v1/write", map[string]string{}, nil},
		{"remotewrite+https://mimir/api/v1/push#name=mimir,header=X-Scope-OrgID:tenant-1,header=X-Extra:a%2Cb%20c,ca-file=/ca.pem,bearer-file=/t",
			"remotewrite", "mimir", "https://mimir/api/v1/push", map[string]string{"ca-file": "/ca.pem", "bearer-file": "/t"},
			[][2]string{{"X-Scope-OrgID", "tenant-1"}, {"X-Extra", "a,b c"}}},
		{"influx+http://influxdb:8086#db=ingest,rp=week,user=u,password-file=/p", "influx", "influx", "http://influxdb:8086",
			map[string]string{"db": "ingest", "rp": "week", "user": "u", "password-file": "/p"}, nil},
		{"influx+http://influxdb:8086/prefix/#org=acme,bucket=b%23x,token-file=/t,measurement=m,no-strings=true,name=i2", "influx", "i2", "http://influxdb:8086/prefix/",
			map[string]string{"org": "acme", "bucket": "b#x", "token-file": "/t", "measurement": "m", "no-strings": "true"}, nil},
	} {
		s, err := parseSinkSpec(c.spec)
		if err != nil {
			t.Errorf("%s: %v", c.spec, err)
			continue
		}
		if s.kind != c.kind || s.name != c.name || s.url != c.u || !maps.Equal(s.opts, c.opts) || !slices.Equal(s.headers, c.headers) {
			t.Errorf("%s: got %+v", c.spec, s)
		}
	}
	for spec, want := range map[string]string{
		"influx+http://influxdb:8086#db=ingest,rp=week":           "http://influxdb:8086/write?db=ingest&rp=week",
		"influx+http://vm:8428/influx/#org=acme,bucket=b%26x":     "http://vm:8428/influx/api/v2/write?bucket=b%26x&org=acme",
		"influx+https://influxdb:8086/?precision=s#db=ingest":     "https://influxdb:8086/write?db=ingest&precision=s",
		"influx+http://influxdb:8086/a%2Fb#org=o,bucket=b,name=x": "http://influxdb:8086/a/b/api/v2/write?bucket=b&org=o",
	} {
		s, err := parseSinkSpec(spec)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		if got := s.influxURL(); got != want {
			t.Errorf("%s: write URL %s, want %s", spec, got, want)
		}
	}
}

func TestParseSinks(t *testing.T) {
	specs, err := parseSinks([]string{"embedded", " remotewrite+http://a/api/v1/write#name=a\n\tremotewrite+http://b/api/v1/write#name=b "})
	if err != nil {
		t.Fatal(err)
	}
	var consumers []string
	for i := range specs {
		consumers = append(consumers, specs[i].consumer("storage", len(specs)))
	}
	if want := []string{"storage-embedded", "storage-a", "storage-b"}; !slices.Equal(consumers, want) {
		t.Errorf("consumers %q, want %q", consumers, want)
	}
	if one, _ := parseSinks([]string{"embedded"}); one[0].consumer("storage", 1) != "storage" {
		t.Errorf("one sink: consumer %q, want the writer's own", one[0].consumer("storage", 1))
	}
}

// The query API's status/flags, which any client of --http.listen reads
// without a token, shows --sink with the values of its header options
// withheld: a header may carry the sink's credentials
// (header=Authorization:Bearer …, which the spec takes in place of
// bearer-file, or an API key of another name). It used to show them as
// given.
func TestSinkFlagValuesHideHeaders(t *testing.T) {
	var c storageConfig
	f := newFlags("storage")
	c.register(f)
	if err := f.fs.Parse([]string{"--sink", "embedded remotewrite+https://vm/api/v1/write#name=vm,header=Authorization:Bearer%20s3cret-1,ca-file=/ca.pem",
		"--sink", "influx+http://influxdb:8086#db=ingest,header=X-Api-Key%3As3cret-2,header=X-Scope-OrgID:s3cret-3",
		// Some stores take a token as a query parameter.
		"--sink", "remotewrite+https://push.example/api/v1/push?api_key=s3cret-4&precision=ms#name=hosted",
		// Or as a parameter of its own, with no '=' (?<token>).
		"--sink", "remotewrite+https://proxy.example/write?s3cret-5&db=x#name=bare"}); err != nil {
		t.Fatal(err)
	}
	got := flagValues(f.fs)["sink"]
	if strings.Contains(got, "s3cret") {
		t.Errorf("status/flags shows a header's value: sink = %q", got)
	}
	for _, want := range []string{"embedded ", "remotewrite+https://vm/api/v1/write#name=vm,header=Authorization:", ",ca-file=/ca.pem",
		"influx+http://influxdb:8086#db=ingest,header=X-Api-Key:", ",header=X-Scope-OrgID:",
		"remotewrite+https://push.example/api/v1/push?api_key=<redacted>&precision=ms#name=hosted",
		"remotewrite+https://proxy.example/write?<redacted>&db=x#name=bare"} {
		if !strings.Contains(got, want) {
			t.Errorf("sink = %q, want %q in it", got, want)
		}
	}
	if c.sinks.values[0] != "embedded remotewrite+https://vm/api/v1/write#name=vm,header=Authorization:Bearer%20s3cret-1,ca-file=/ca.pem" {
		t.Errorf("the flag's own value changed: %q", c.sinks.values)
	}
}

// A bad --sink is refused at start with a message that names what is wrong
// with it; exit 2 for the syntax (a usage error), 1 for what only shows when
// the writer is built (a file that cannot be read, sinks that clash).
func TestSinkErrors(t *testing.T) {
	for _, c := range sinkErrorCases(t) {
		t.Run(c.name, func(t *testing.T) {
			for _, sub := range []string{"storage", "all"} {
				args := append([]string{sub, "--http.listen", "127.0.0.1:0"}, c.args...)
				if sub == "all" {
					args = append([]string{sub, "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", "127.0.0.1:0",
						"--mqtt.listen", "127.0.0.1:0", "--feed.listen", "127.0.0.1:0", "--storage.http.listen", "127.0.0.1:0"}, c.args...)
					if strings.Contains(c.name, "data.dir") {
						continue // ingest all has a default
					}
				}
				_, errOut, code := runBin(t, "", c.env, args...)
				if code != c.code || !strings.Contains(errOut, c.want) {
					t.Errorf("ingest %q: exit %d, printed\n%s\nwant exit %d and %q", args, code, errOut, c.code, c.want)
				}
			}
		})
	}
}

// sinkErrorCase is a bad --sink (args) or INGEST_SINK (env), and the exit
// code and the message it is refused with.
type sinkErrorCase struct {
	name string
	env  []string
	args []string
	code int
	want string
}

// sinkErrorCases are the bad sinks TestSinkErrors tries, with the files
// some of them name.
func sinkErrorCases(t *testing.T) []sinkErrorCase {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rw := "remotewrite+http://127.0.0.1:1/api/v1/write"
	return []sinkErrorCase{
		{"unknown kind", nil, []string{"--sink", "kafka+http://k:9092"}, 2,
			`invalid value "kafka+http://k:9092" for flag --sink: sink "kafka+http://k:9092": unknown kind "kafka": want embedded, remotewrite, influx`},
		{"unknown kind from the environment", []string{"INGEST_SINK=embedded mimir"}, nil, 2,
			`invalid value "embedded mimir" for INGEST_SINK (--sink): sink "mimir": unknown kind "mimir"`},
		{"no URL", nil, []string{"--sink", "remotewrite"}, 2,
			`sink "remotewrite": remotewrite needs a URL: remotewrite+http://`},
		{"URL for embedded", nil, []string{"--sink", "embedded+http://x"}, 2, `sink "embedded+http://x": embedded takes no URL`},
		{"not http", nil, []string{"--sink", "remotewrite+ftp://x/y"}, 2, `"ftp://x/y" is not an http:// or https:// URL with a host`},
		{"no host", nil, []string{"--sink", "remotewrite+http:///api/v1/write"}, 2, `is not an http:// or https:// URL with a host`},
		{"user in URL", nil, []string{"--sink", "remotewrite+http://u:p@vm/api/v1/write"}, 2, `(and no user in it: use the user option)`},
		{"unknown option", nil, []string{"--sink", rw + "#db=x"}, 2,
			`remotewrite takes no option "db" (it takes name, header, ca-file, bearer-file, user, password-file)`},
		{"option without value", nil, []string{"--sink", rw + "#bearer-file"}, 2, `option "bearer-file" is not name=value`},
		{"empty option", nil, []string{"--sink", rw + "#ca-file="}, 2, `option ca-file is empty`},
		{"nothing after #", nil, []string{"--sink", rw + "#"}, 2, `nothing after '#': give options as name=value pairs separated by commas`},
		{"option twice", nil, []string{"--sink", rw + "#ca-file=a,ca-file=b"}, 2, `option ca-file given twice`},
		{"name twice", nil, []string{"--sink", rw + "#name=a,name=b"}, 2, `option name given twice`},
		{"bad name", nil, []string{"--sink", rw + "#name=a/b"}, 2, `name "a/b": up to 32 letters, digits`},
		{"bad header", nil, []string{"--sink", rw + "#header=NoColon"}, 2, `header "NoColon" is not Name:Value`},
		{"bad header name", nil, []string{"--sink", rw + "#header=A%20B:c"}, 2, `header "A B:c" is not Name:Value`},
		{"header with a newline", nil, []string{"--sink", rw + "#header=A:b%0AC:d"}, 2, `is not Name:Value`},
		{"bad percent-encoding", nil, []string{"--sink", rw + "#header=A:%zz"}, 2, `option header: bad percent-encoding in "A:%zz"`},
		{"two authorizations", nil, []string{"--sink", rw + "#bearer-file=/a,user=u,password-file=/p"}, 2,
			`give one of bearer-file, user with password-file, token-file and an Authorization header`},
		{"authorization header and bearer", nil, []string{"--sink", rw + "#bearer-file=/a,header=Authorization:x"}, 2,
			`give one of bearer-file`},
		{"user without password", nil, []string{"--sink", rw + "#user=u"}, 2, `user and password-file go together`},
		{"influx without db or bucket", nil, []string{"--sink", "influx+http://i:8086"}, 2,
			`influx needs db=… (the 1.x API) or org=…,bucket=… (the 2.x API)`},
		{"influx db and bucket", nil, []string{"--sink", "influx+http://i:8086#db=a,bucket=b,org=o"}, 2,
			`db (the 1.x API) and bucket (the 2.x API) exclude each other`},
		{"influx bucket without org", nil, []string{"--sink", "influx+http://i:8086#bucket=b"}, 2, `bucket needs org`},
		{"influx token with db", nil, []string{"--sink", "influx+http://i:8086#db=a,token-file=/t"}, 2,
			`org and token-file are for the 2.x API (bucket=…), not db=…`},
		{"influx rp with bucket", nil, []string{"--sink", "influx+http://i:8086#org=o,bucket=b,rp=x"}, 2, `rp is for the 1.x API`},
		{"no-strings not a bool", nil, []string{"--sink", "influx+http://i:8086#db=a,no-strings=yes"}, 2, `no-strings=yes: want true or false`},
		{"two of one name", nil, []string{"--sink", rw, "--sink", "remotewrite+http://127.0.0.1:2/api/v1/write"}, 1,
			`--sink: two sinks are named "remotewrite": name each (#name=…)`},
		{"two embedded", []string{"INGEST_SINK=embedded embedded#name=b"}, nil, 1,
			`--sink: more than one embedded sink: a writer has one embedded TSDB (--data.dir)`},
		{"embedded without data.dir", nil, []string{"--sink", rw, "--sink", "embedded"}, 1, `--data.dir (INGEST_DATA_DIR) is required`},
		{"missing bearer file", nil, []string{"--sink", rw + "#bearer-file=" + filepath.Join(dir, "nothing")}, 1,
			`--sink: sink remotewrite: read bearer-file: open ` + filepath.Join(dir, "nothing") + `: no such file or directory`},
		{"empty password file", nil, []string{"--sink", rw + "#user=u,password-file=" + empty}, 1,
			`--sink: sink remotewrite: password-file ` + empty + `: want one line, not empty`},
		{"CA file without a certificate", nil, []string{"--sink", rw + "#ca-file=" + notPEM}, 1,
			`--sink: sink remotewrite: ca-file ` + notPEM + ` holds no PEM certificate`},
	}
}

// FuzzSinkSpec: a spec parses or is refused with an error, never a panic;
// what parses is usable: a known kind, a name fit for a consumer name and a
// label, an http(s) URL for the HTTP kinds, headers that are one line,
// options its kind takes, and an InfluxDB write URL that parses.
func FuzzSinkSpec(f *testing.F) {
	for _, s := range []string{
		"embedded", "embedded#name=x", "remotewrite+http://vm:8428/api/v1/write#name=vm,header=A:b,ca-file=/c",
		"influx+http://i:8086#db=ingest,rp=r,user=u,password-file=/p", "influx+https://i/p#org=o,bucket=b,token-file=/t,no-strings=true",
		"remotewrite+http://x/#header=A:%0A", "influx+http://[::1]:8086#db=%zz", "#", "+", "remotewrite+#",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := parseSinkSpec(spec)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		i := slices.IndexFunc(sinkKinds, func(k sinkKind) bool { return k.kind == s.kind })
		if i < 0 {
			t.Fatalf("kind %q", s.kind)
		}
		if !sinkNameRE.MatchString(s.name) || len(s.consumer("storage", 2)) > 64 {
			t.Fatalf("name %q", s.name)
		}
		if sinkKinds[i].url {
			u, err := url.Parse(s.url)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Fatalf("url %q", s.url)
			}
		} else if s.url != "" {
			t.Fatalf("%s with url %q", s.kind, s.url)
		}
		for _, h := range s.headers {
			if !headerNameRE.MatchString(h[0]) || h[1] == "" || strings.ContainsAny(h[1], "\r\n\x00") {
				t.Fatalf("header %q", h)
			}
		}
		for o, v := range s.opts {
			if !slices.Contains(sinkKinds[i].opts, o) || v == "" || o == "name" || o == "header" {
				t.Fatalf("option %s=%q for %s", o, v, s.kind)
			}
		}
		if s.kind == "influx" {
			u, err := url.Parse(s.influxURL())
			if err != nil || !(strings.HasSuffix(u.Path, "/write") || strings.HasSuffix(u.Path, "/api/v2/write")) {
				t.Fatalf("influx write url %q from %q: %v", s.influxURL(), s.url, err)
			}
			q := u.Query()
			if (q.Get("db") == "") == (q.Get("bucket") == "") {
				t.Fatalf("influx write url %q: db %q, bucket %q", s.influxURL(), q.Get("db"), q.Get("bucket"))
			}
		}
	})
}
