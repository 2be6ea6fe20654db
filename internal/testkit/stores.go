package testkit

// The external stores the storage sinks are tested against: real servers
// from Debian's packages (prometheus, influxdb, victoria-metrics; `make
// deps` installs them), each started once per test binary on loopback with
// its own data directory and ports, and stopped by the package's TestMain
// (StopStores). The harness starts no goroutine: a server's exit is polled
// with wait4, so goleak has nothing to see; should the test binary die
// without stopping them, the servers get SIGKILL with it (Pdeathsig).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
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

	"github.com/ingest-io/ingest/internal/freeport"
)

// Store is a store server the tests started.
type Store struct {
	Name string
	URL  string // http://127.0.0.1:port
	dir  string
	cmd  *exec.Cmd
	log  *os.File
	gone bool // the process has ended and was reaped
}

// stores are the servers of this test binary: one of each, for all its
// tests.
var stores struct {
	mu      sync.Mutex
	running map[string]*Store
	failed  map[string]error
}

// startStore returns the running server called name, starting it with start
// the first time. A server that cannot be started fails the test: `make
// test` installs every one of them.
func startStore(t testing.TB, name string, start func() (*Store, error)) *Store {
	t.Helper()
	stores.mu.Lock()
	defer stores.mu.Unlock()
	if s := stores.running[name]; s != nil {
		return s
	}
	if err := stores.failed[name]; err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	s, err := start()
	if err != nil {
		if stores.failed == nil {
			stores.failed = map[string]error{}
		}
		stores.failed[name] = err
		t.Fatalf("%s: %v", name, err)
	}
	if stores.running == nil {
		stores.running = map[string]*Store{}
	}
	stores.running[name] = s
	return s
}

// StopStores stops the store servers the tests started and removes their
// data. A TestMain calls it after the tests and before its leak check.
func StopStores() {
	stores.mu.Lock()
	defer stores.mu.Unlock()
	for name, s := range stores.running {
		if err := s.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop %s: %v\n", name, err)
		}
	}
	stores.running = nil
}

// lookStoreBinary finds a server's binary or says how to get it.
func lookStoreBinary(bin, pkg string) (string, error) {
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("find %s: %w: install Debian's package %s (make deps does)", bin, err, pkg)
	}
	return p, nil
}

// runStore starts bin with args, its output in dir/<name>.log, and waits
// until GET ready answers 2xx.
func runStore(name, dir, bin, ready string, args ...string) (*Store, error) {
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
	s := &Store{Name: name, dir: dir, cmd: cmd, log: lf}
	u, _ := url.Parse(ready)
	s.URL = u.Scheme + "://" + u.Host
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

func (s *Store) logTail() string {
	b, _ := os.ReadFile(s.log.Name())
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// exited reports whether the server's process has ended, reaping it if so.
func (s *Store) exited() bool {
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
func (s *Store) stop() error {
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

// PrometheusOOOWindow is the out-of-order window the test Prometheus runs
// with.
const PrometheusOOOWindow = time.Hour

// prepareStore finds the binary bin of the Debian package pkg and makes
// the store name a directory and a port.
func prepareStore(name, bin, pkg string) (path, dir string, port int, err error) {
	if path, err = lookStoreBinary(bin, pkg); err != nil {
		return "", "", 0, err
	}
	if dir, err = os.MkdirTemp("", "ingest-"+name+"-"); err != nil {
		return "", "", 0, err
	}
	if port, err = freeport.Port(); err != nil {
		return "", "", 0, err
	}
	return path, dir, port, nil
}

// Prometheus returns the test binary's Prometheus server, started with its
// remote-write receiver and an out-of-order window of PrometheusOOOWindow.
func Prometheus(t testing.TB) *Store {
	return startStore(t, "prometheus", func() (*Store, error) {
		bin, dir, port, err := prepareStore("prometheus", "prometheus", "prometheus")
		if err != nil {
			return nil, err
		}
		cfg := fmt.Sprintf("storage:\n  tsdb:\n    out_of_order_time_window: %s\n", PrometheusOOOWindow)
		if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		return runStore("prometheus", dir, bin, "http://"+addr+"/-/ready",
			"--config.file="+filepath.Join(dir, "prometheus.yml"),
			"--storage.tsdb.path="+filepath.Join(dir, "data"),
			"--web.listen-address="+addr,
			"--web.enable-remote-write-receiver",
			"--log.level=warn",
		)
	})
}

// InfluxDB returns the test binary's InfluxDB 1.x server.
func InfluxDB(t testing.TB) *Store {
	return startStore(t, "influxdb", func() (*Store, error) {
		bin, dir, port, err := prepareStore("influxdb", "influxd", "influxdb")
		if err != nil {
			return nil, err
		}
		rpc, err := freeport.Port()
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
		return runStore("influxdb", dir, bin, fmt.Sprintf("http://127.0.0.1:%d/ping", port),
			"run", "-config", filepath.Join(dir, "influxdb.conf"))
	})
}

// VictoriaMetrics returns the test binary's VictoriaMetrics server, which
// keeps one sample per series and timestamp.
func VictoriaMetrics(t testing.TB) *Store {
	return startStore(t, "victoria-metrics", func() (*Store, error) {
		bin, dir, port, err := prepareStore("victoria-metrics", "victoria-metrics", "victoria-metrics")
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		return runStore("victoria-metrics", dir, bin, "http://"+addr+"/health",
			"-storageDataPath="+filepath.Join(dir, "data"),
			"-httpListenAddr="+addr,
			// Keep one sample per series and timestamp: without it a
			// repeated delivery is stored twice (docs/storage.md).
			"-dedup.minScrapeInterval=1ms",
			"-loggerLevel=WARN",
		)
	})
}

// storeClient talks to the test servers; it keeps no idle connection, so
// nothing is left for goleak.
var storeClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// StoreGetJSON GETs u with query q and decodes the JSON answer into v.
func StoreGetJSON(t testing.TB, u string, q url.Values, v any) {
	t.Helper()
	resp, err := storeClient.Get(u + "?" + q.Encode())
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

// StorePost POSTs q to u and fails the test unless the answer is 2xx.
func StorePost(t testing.TB, u string, q url.Values) []byte {
	t.Helper()
	resp, err := storeClient.PostForm(u, q)
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

// InfluxQuery runs an InfluxQL statement and returns its first series' rows
// as column → value maps (timestamps in ms), numbers as json.Number.
func InfluxQuery(t testing.TB, s *Store, db, q string) []map[string]any {
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
	b := StorePost(t, s.URL+"/query", url.Values{"db": {db}, "q": {q}, "epoch": {"ms"}})
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

// Sample is one raw sample as a Prometheus-API store returns it: its time
// in ms and its value as the store formats it.
type Sample struct {
	T int64
	V string
}

// PromRaw returns the raw samples of every series matching selector over
// the last `window`, keyed by the series' labels (LabelsKey), through
// /api/v1/query with a range selector (Prometheus and VictoriaMetrics both
// answer it).
func PromRaw(t testing.TB, s *Store, selector string, at time.Time, window time.Duration) map[string][]Sample {
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
	StoreGetJSON(t, s.URL+"/api/v1/query", q, &out)
	res := map[string][]Sample{}
	for _, r := range out.Data.Result {
		var ss []Sample
		for _, v := range r.Values {
			ts, _ := v[0].(float64)
			val, _ := v[1].(string)
			ss = append(ss, Sample{T: int64(ts*1000 + 0.5), V: val})
		}
		res[LabelsKey(r.Metric)] = ss
	}
	return res
}

// VMExport returns the raw samples VictoriaMetrics stores for selector,
// duplicates included, keyed by the series' labels (LabelsKey), through
// /api/v1/export after a flush.
func VMExport(t testing.TB, s *Store, selector string) map[string][]Sample {
	t.Helper()
	StoreGetJSON(t, s.URL+"/internal/force_flush", url.Values{}, nil)
	resp, err := storeClient.Get(s.URL + "/api/v1/export?" + url.Values{"match[]": {selector}}.Encode())
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("export: %s: %s", resp.Status, b)
	}
	res := map[string][]Sample{}
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
		k := LabelsKey(line.Metric)
		for i, ts := range line.Timestamps {
			res[k] = append(res[k], Sample{T: ts, V: fmt.Sprint(line.Values[i])})
		}
	}
	return res
}

// LabelsKey formats a label set as {a="1", b="2"}, sorted by name.
func LabelsKey(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
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

// DiffSamples says how got differs from want, series by series, or "".
func DiffSamples(got, want map[string][]Sample) string {
	for k, w := range want {
		g := got[k]
		if !slices.Equal(g, w) {
			return fmt.Sprintf("series %s: got %v, want %v", k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			return fmt.Sprintf("unexpected series %s: %v", k, got[k])
		}
	}
	return ""
}

// Eventually polls cond every 50ms until it holds, and fails the test if it
// does not within the given time, with what cond last said. It is WaitFor
// for conditions that cost a request to a store to check.
func Eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
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
