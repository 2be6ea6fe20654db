package storage

// The external stores the sinks are tested against: real servers from
// Debian's packages (prometheus, influxdb, victoria-metrics; `make deps`
// installs them), each started once per test binary on loopback with its own
// data directory and ports, and stopped by TestMain (StopExtServers, in
// export_test.go). The harness starts no goroutine: a server's exit is
// polled with wait4, so goleak has nothing to see; should the test binary
// die without stopping them, the servers get SIGKILL with it (Pdeathsig).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// extServer is a store server the tests started.
type extServer struct {
	name string
	url  string // http://127.0.0.1:port
	dir  string
	cmd  *exec.Cmd
	log  *os.File
	gone bool // the process has ended and was reaped
}

var extServers struct {
	mu      sync.Mutex
	running map[string]*extServer
	failed  map[string]error
}

// extServer returns the running server called name, starting it with start
// the first time. A server that cannot be started fails the test: `make
// test` installs every one of them.
func startExtServer(t testing.TB, name string, start func() (*extServer, error)) *extServer {
	t.Helper()
	extServers.mu.Lock()
	defer extServers.mu.Unlock()
	if s := extServers.running[name]; s != nil {
		return s
	}
	if err := extServers.failed[name]; err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	s, err := start()
	if err != nil {
		if extServers.failed == nil {
			extServers.failed = map[string]error{}
		}
		extServers.failed[name] = err
		t.Fatalf("%s: %v", name, err)
	}
	if extServers.running == nil {
		extServers.running = map[string]*extServer{}
	}
	extServers.running[name] = s
	return s
}

func stopExtServers() {
	extServers.mu.Lock()
	defer extServers.mu.Unlock()
	for name, s := range extServers.running {
		if err := s.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop %s: %v\n", name, err)
		}
	}
	extServers.running = nil
}

// extLookBinary finds a server's binary or says how to get it.
func extLookBinary(bin, pkg string) (string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("find %s: %w: install Debian's package %s (make deps does)", bin, err, pkg)
	}
	return p, nil
}

// extFreePort returns a loopback port nothing listens on now.
func extFreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// run starts bin with args, its output in dir/<name>.log, and waits until
// GET ready answers 2xx.
func runExtServer(name, dir, bin, ready string, args ...string) (*extServer, error) {
	lf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("create log: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = lf, lf
	// If the test binary dies without stopping it, the server dies too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &extServer{name: name, dir: dir, cmd: cmd, log: lf}
	u, _ := url.Parse(ready)
	s.url = u.Scheme + "://" + u.Host
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := c.Get(ready)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return s, nil
			}
		}
		if s.exited() {
			tail := s.logTail()
			_ = s.stop()
			return nil, fmt.Errorf("%s exited before it was ready: %s", name, tail)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
		if time.Now().After(deadline) {
			_ = s.stop()
			return nil, fmt.Errorf("%s not ready at %s after 90s (last error %v): %s", name, ready, err, s.logTail())
		}
	}
}

func (s *extServer) logTail() string {
	b, _ := os.ReadFile(s.log.Name())
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// exited reports whether the server's process has ended, reaping it if so.
func (s *extServer) exited() bool {
	if s.gone {
		return true
	}
	var ws syscall.WaitStatus
	pid, err := syscall.Wait4(s.cmd.Process.Pid, &ws, syscall.WNOHANG, nil)
	if pid == s.cmd.Process.Pid || errors.Is(err, syscall.ECHILD) {
		s.gone = true
		return true
	}
	return false
}

// stop ends the server (SIGTERM, then SIGKILL after 15s) and removes its
// directory.
func (s *extServer) stop() error {
	if !s.exited() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		deadline := time.Now().Add(15 * time.Second)
		for !s.exited() {
			if time.Now().After(deadline) {
				_ = s.cmd.Process.Kill()
				var ws syscall.WaitStatus
				_, _ = syscall.Wait4(s.cmd.Process.Pid, &ws, 0, nil)
				s.gone = true
				break
			}
			time.Sleep(20 * time.Millisecond) // polling interval
		}
	}
	s.log.Close()
	return os.RemoveAll(s.dir)
}

// promOOOWindow is the out-of-order window the test Prometheus runs with.
const promOOOWindow = time.Hour

func prometheusServer(t testing.TB) *extServer {
	return startExtServer(t, "prometheus", func() (*extServer, error) {
		bin, err := extLookBinary("prometheus", "prometheus")
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "ingest-prometheus-")
		if err != nil {
			return nil, err
		}
		port, err := extFreePort()
		if err != nil {
			return nil, err
		}
		cfg := fmt.Sprintf("storage:\n  tsdb:\n    out_of_order_time_window: %s\n", promOOOWindow)
		if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		return runExtServer("prometheus", dir, bin, "http://"+addr+"/-/ready",
			"--config.file="+filepath.Join(dir, "prometheus.yml"),
			"--storage.tsdb.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr,
			"--web.enable-remote-write-receiver",
			"--log.level=warn",
		)
	})
}

func influxServer(t testing.TB) *extServer {
	return startExtServer(t, "influxdb", func() (*extServer, error) {
		bin, err := extLookBinary("influxd", "influxdb")
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "ingest-influxdb-")
		if err != nil {
			return nil, err
		}
		port, err := extFreePort()
		if err != nil {
			return nil, err
		}
		rpc, err := extFreePort()
		if err != nil {
			return nil, err
		}
		cfg := fmt.Sprintf(`reporting-disabled = true
bind-address = "127.0.0.1:%d"
[meta]
  dir = %q
[data]
  dir = %q
  wal-dir = %q
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:%d"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
`, rpc, filepath.Join(dir, "meta"), filepath.Join(dir, "data"), filepath.Join(dir, "wal"), port)
		if err := os.WriteFile(filepath.Join(dir, "influxdb.conf"), []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		return runExtServer("influxdb", dir, bin, fmt.Sprintf("http://127.0.0.1:%d/ping", port),
			"run", "-config", filepath.Join(dir, "influxdb.conf"))
	})
}

func victoriaServer(t testing.TB) *extServer {
	return startExtServer(t, "victoria-metrics", func() (*extServer, error) {
		bin, err := extLookBinary("victoria-metrics", "victoria-metrics")
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "ingest-victoria-metrics-")
		if err != nil {
			return nil, err
		}
		port, err := extFreePort()
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		return runExtServer("victoria-metrics", dir, bin, "http://"+addr+"/health",
			"-storageDataPath="+filepath.Join(dir, "data"),
			"-httpListenAddr="+addr,
			// Keep one sample per series and timestamp: without it a
			// repeated delivery is stored twice (docs/storage.md).
			"-dedup.minScrapeInterval=1ms",
			"-loggerLevel=WARN",
		)
	})
}

// extClient talks to the test servers; it keeps no idle connection, so
// nothing is left for goleak.
var extClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// extGetJSON GETs u with query q and decodes the JSON answer into v.
func extGetJSON(t testing.TB, u string, q url.Values, v any) {
	t.Helper()
	resp, err := extClient.Get(u + "?" + q.Encode())
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", u, err)
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("GET %s?%s: %s: %s", u, q.Encode(), resp.Status, b)
	}
	if v == nil {
		return
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: decode %q: %v", u, b, err)
	}
}

// extPost POSTs q to u and fails the test unless the answer is 2xx.
func extPost(t testing.TB, u string, q url.Values) []byte {
	t.Helper()
	resp, err := extClient.PostForm(u, q)
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s %v: %s: %s", u, q, resp.Status, b)
	}
	return b
}

// extInfluxQuery runs an InfluxQL statement and returns its first series' rows
// as column → value maps (timestamps in ms).
func extInfluxQuery(t testing.TB, s *extServer, db, q string) []map[string]any {
	t.Helper()
	var out struct {
		Results []struct {
			Error  string `json:"error"`
			Series []struct {
				Columns []string `json:"columns"`
				Values  [][]any  `json:"values"`
			} `json:"series"`
		} `json:"results"`
	}
	b := extPost(t, s.url+"/query", url.Values{"db": {db}, "q": {q}, "epoch": {"ms"}})
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&out); err != nil {
		t.Fatalf("influx %q: decode %s: %v", q, b, err)
	}
	var rows []map[string]any
	for _, r := range out.Results {
		if r.Error != "" {
			t.Fatalf("influx %q: %s", q, r.Error)
		}
		for _, sr := range r.Series {
			for _, v := range sr.Values {
				row := map[string]any{}
				for i, c := range sr.Columns {
					row[c] = v[i]
				}
				rows = append(rows, row)
			}
		}
	}
	return rows
}

// extSample is one raw sample as a Prometheus-API store returns it.
type extSample struct {
	T int64
	V string
}

// extPromRaw returns the raw samples of every series matching selector over the
// last `window`, keyed by the series' labels, through /api/v1/query with a
// range selector (Prometheus and VictoriaMetrics both answer it).
func extPromRaw(t testing.TB, s *extServer, selector string, at time.Time, window time.Duration) map[string][]extSample {
	t.Helper()
	var out struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Values [][2]any          `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	q := url.Values{
		"query": {fmt.Sprintf("%s[%dms]", selector, window.Milliseconds())},
		"time":  {fmt.Sprintf("%.3f", float64(at.UnixMilli())/1000)},
	}
	extGetJSON(t, s.url+"/api/v1/query", q, &out)
	res := map[string][]extSample{}
	for _, r := range out.Data.Result {
		var ss []extSample
		for _, v := range r.Values {
			ts, _ := v[0].(float64)
			val, _ := v[1].(string)
			ss = append(ss, extSample{T: int64(ts*1000 + 0.5), V: val})
		}
		res[extLabelsKey(r.Metric)] = ss
	}
	return res
}

// extVMExport returns the raw samples VictoriaMetrics stores for selector,
// duplicates included, through /api/v1/export after a flush.
func extVMExport(t testing.TB, s *extServer, selector string) map[string][]extSample {
	t.Helper()
	extGetJSON(t, s.url+"/internal/force_flush", url.Values{}, nil)
	resp, err := extClient.Get(s.url + "/api/v1/export?" + url.Values{"match[]": {selector}}.Encode())
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("export: %s: %s", resp.Status, b)
	}
	res := map[string][]extSample{}
	d := json.NewDecoder(resp.Body)
	for {
		var line struct {
			Metric     map[string]string `json:"metric"`
			Values     []float64         `json:"values"`
			Timestamps []int64           `json:"timestamps"`
		}
		if err := d.Decode(&line); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("export: decode: %v", err)
		}
		k := extLabelsKey(line.Metric)
		for i, ts := range line.Timestamps {
			res[k] = append(res[k], extSample{T: ts, V: fmt.Sprint(line.Values[i])})
		}
	}
	return res
}

// extLabelsKey formats a label set as {a="1", b="2"}, sorted by name.
func extLabelsKey(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	b.WriteByte('}')
	return b.String()
}

// extEventually polls cond until it holds or the deadline passes.
func extEventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v; last: %s", what, within, got)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for a condition
	}
}
