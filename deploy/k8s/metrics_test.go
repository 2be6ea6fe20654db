package k8s_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/client"
)

// binPath is the full binary (the image "ingest", which storage runs);
// slimPath is built with -tags nostorage (the image "ingest-slim", which
// the other tiers run).
var binPath, slimPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ingest-k8s-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath, slimPath = filepath.Join(dir, "ingest"), filepath.Join(dir, "ingest-slim")
	for _, b := range [][]string{{"-o", binPath}, {"-tags", "nostorage", "-o", slimPath}} {
		if out, err := exec.Command("go", append(append([]string{"build"}, b...), "../../cmd/ingest")...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build ingest %v: %v\n%s", b, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// targetLabels are added by Prometheus and the Prometheus Operator when
// they scrape, so a binary's /metrics does not carry them.
var targetLabels = map[string]bool{"job": true, "namespace": true, "pod": true, "instance": true, "container": true, "endpoint": true, "tier": true}

// synthetic are series Prometheus makes for every target.
var synthetic = map[string]bool{"up": true}

// fleetMessage is the device message TestMetricsExist sends: the fields a
// GPS tracker sends (those of bench -shape gps), a temperature and a
// string. The fleet dashboard's series are what the storage tier makes of
// it.
const fleetMessage = `{"id":%d,"seq":%d,"ts":%d,"lat":48.8566,"lon":2.3522,"speed":42,"heading":270,"fix":true,"temp":21.5,"door":"open"}`

// TestMetricsExist starts every tier's binary (the one its image holds) on
// loopback, sends device messages through them and follows them on the
// live feed, scrapes each /metrics, and checks that every metric the
// alerts and the engine's dashboard panels select exists there with the
// label values they select. The fleet dashboard's queries of the device
// data are checked against the storage tier's query API: every series
// they select must be among those the storage tier wrote for the device's
// messages (with its registry labels), and every query must run.
func TestMetricsExist(t *testing.T) {
	var exprs, fleet []rule
	for _, dir := range overlays(t) {
		o := render(t, dir)
		exprs = append(exprs, ruleExprs(t, o)...)
		for _, r := range dashboardExprs(t, o) {
			if r.devices {
				fleet = append(fleet, r)
			} else {
				exprs = append(exprs, r)
			}
		}
	}
	if len(exprs) == 0 || len(fleet) == 0 {
		t.Fatalf("the overlays have %d alert and engine dashboard expressions, %d of the fleet dashboard", len(exprs), len(fleet))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	dir := t.TempDir()
	regFile := filepath.Join(dir, "devices.yaml")
	if err := os.WriteFile(regFile, []byte("devices:\n  - id: "+fleetDevice+"\n    name: Truck 1\n    group: "+fleetGroup+
		"\n    site: depot-a\n    type: gps\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mt := start(t, "middletier listening", "middletier", "--id", "mt-0", "--data.dir", filepath.Join(dir, "mt"),
		"--consumers", "storage", "--ingest.addr", "tcp://127.0.0.1:0", "--consumer.addr", "tcp://127.0.0.1:0",
		"--stream.addr", "tcp://127.0.0.1:0", "--feed.addr", "tcp://127.0.0.1:0", "--http.listen", "127.0.0.1:0")
	fe := start(t, "frontend listening", "frontend", "--id", "fe-0", "--wal.dir", filepath.Join(dir, "fe"), "--insecure-no-auth",
		"--listen", "127.0.0.1:0", "--uplink.middletiers", mt.attr("ingest"), "--drain-window", "100ms")
	st := start(t, "storage listening", "storage", "--consumer", "storage", "--data.dir", filepath.Join(dir, "tsdb"),
		"--middletiers.stream", mt.attr("stream"), "--middletiers.consumer", mt.attr("consumer"), "--http.listen", "127.0.0.1:0",
		"--registry.file", regFile)
	fd := start(t, "feed listening", "feed", "--id", "feed-0", "--insecure-no-auth", "--listen", "127.0.0.1:0",
		"--middletiers", mt.attr("feed"), "--middletiers.consumer", mt.attr("consumer"))

	// A dashboard follows the devices.
	reader, _, err := websocket.Dial(ctx, "ws://"+fd.attr("addr")+"/v1/feed", nil)
	if err != nil {
		t.Fatalf("dial feed: %v", err)
	}
	defer reader.CloseNow()
	if err := reader.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","prefixes":["k8s-"]}`)); err != nil {
		t.Fatal(err)
	}

	// The payload ids of the messages the feed delivers, in order.
	delivered := make(chan int, 256)
	go func() {
		defer close(delivered)
		for {
			_, b, err := reader.Read(ctx)
			if err != nil {
				return
			}
			var f struct {
				Type    string `json:"type"`
				Payload struct {
					ID int `json:"id"`
				} `json:"payload"`
			}
			if json.Unmarshal(b, &f) == nil && f.Type == "message" {
				delivered <- f.Payload.ID
			}
		}
	}()

	// A device that gives no id is refused at the handshake, as the fleet
	// dashboard's errors show.
	if _, _, err := websocket.Dial(ctx, "ws://"+fe.attr("addr")+"/v1/ingest", nil); err == nil {
		t.Fatal("a handshake without a device id was accepted")
	}

	// A device sends, and closes.
	dev, err := client.Dial(ctx, client.Options{URL: "ws://" + fe.attr("addr") + "/v1/ingest?device=" + fleetDevice})
	if err != nil {
		t.Fatalf("dial frontend: %v", err)
	}
	next := 0
	send := func() {
		t.Helper()
		if err := dev.SendWait(ctx, fmt.Appendf(nil, fleetMessage, next, next, time.Now().UnixMilli())); err != nil {
			t.Fatalf("send %d: %v", next, err)
		}
		next++
	}
	// The feed is live from the first record it sees on a middletier's
	// stream, and a ZeroMQ subscription takes a moment to reach the
	// publisher: send one message at a time until one is delivered. Every
	// later one must be, in order.
	first := -1
	for first < 0 {
		send()
		select {
		case id, ok := <-delivered:
			if !ok {
				t.Fatal("feed reader closed before the first message")
			}
			first = id
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("no message delivered by the feed after %d sent", next)
		}
	}
	const n = 20
	for next < first+1+n {
		send()
	}
	dev.Close()
	for want := first + 1; want < next; want++ {
		select {
		case id, ok := <-delivered:
			if !ok || id != want {
				t.Fatalf("feed delivered message %d (open %v), want %d", id, ok, want)
			}
		case <-ctx.Done():
			t.Fatalf("feed delivered messages %d to %d of %d", first, want-1, next-1)
		}
	}
	reader.Close(websocket.StatusNormalClosure, "")
	for range delivered {
	}

	// Scrape every tier until each selector finds its series (some are
	// set by periodic work, such as the consumer lag), or the deadline.
	var families map[string]*dto.MetricFamily
	checked := map[string]bool{}
	untilNone(t, 15*time.Second, func() (missing []string) {
		families = map[string]*dto.MetricFamily{}
		for _, addr := range []string{fe.attr("addr"), mt.attr("http"), st.attr("http"), fd.attr("addr")} {
			for name, f := range scrape(t, ctx, addr) {
				if g, ok := families[name]; ok {
					g.Metric = append(g.Metric, f.Metric...)
				} else {
					families[name] = f
				}
			}
		}
		for _, r := range exprs {
			for _, sel := range vectorSelectors(r.expr) {
				checked[sel.String()] = true
				if !synthetic[sel.Name] && !seriesExist(families, sel) {
					missing = append(missing, fmt.Sprintf("%s: %q selects %s, which no tier's /metrics has", r.alert, r.text, sel))
				}
			}
		}
		return missing
	})
	t.Logf("%d selectors checked against %d metric families", len(checked), len(families))
	checkFleet(t, ctx, "http://"+st.attr("http"), fleet)

	for _, p := range []*proc{fd, fe, st, mt} {
		p.stop(t)
	}
}

// checkFleet checks the fleet dashboard's queries against the storage
// tier's query API: each selector finds a series the device's messages
// made, and each query runs. Stored points are visible once the writer
// has committed them: it waits for them until the deadline.
func checkFleet(t *testing.T, ctx context.Context, api string, fleet []rule) {
	t.Helper()
	get := func(path string, params url.Values) (json.RawMessage, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", api+path+"?"+params.Encode(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Status, ErrorType, Error string
			Data                     json.RawMessage
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, resp.Status, err)
		}
		if r.Status != "success" {
			return nil, fmt.Errorf("%s: %s: %s", r.ErrorType, resp.Status, r.Error)
		}
		return r.Data, nil
	}
	checked := map[string]bool{}
	untilNone(t, 15*time.Second, func() (problems []string) {
		now := time.Now()
		for _, r := range fleet {
			for _, sel := range vectorSelectors(r.expr) {
				checked[sel.String()] = true
				data, err := get("/api/v1/series", url.Values{"match[]": {sel.String()},
					"start": {fmt.Sprint(now.Add(-time.Hour).Unix())}, "end": {fmt.Sprint(now.Unix())}})
				var series []map[string]string
				if err == nil {
					err = json.Unmarshal(data, &series)
				}
				if err != nil || len(series) == 0 {
					problems = append(problems, fmt.Sprintf("%s: %q selects %s, which the store does not hold for the device's messages (%v)", r.alert, r.text, sel, err))
				}
			}
			if _, err := get("/api/v1/query", url.Values{"query": {grafanaVars.Replace(r.text)}, "time": {fmt.Sprint(now.Unix())}}); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %q: %v", r.alert, r.text, err))
			}
		}
		return problems
	})
	// What the store holds, to read a failure by.
	if t.Failed() {
		if data, err := get("/api/v1/series", url.Values{"match[]": {`{device=~".+"}`}}); err == nil {
			t.Logf("the store's device series: %s", data)
		}
	}
	t.Logf("%d fleet selectors checked against the store", len(checked))
}

func vectorSelectors(e parser.Expr) []*parser.VectorSelector {
	var vs []*parser.VectorSelector
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if v, ok := n.(*parser.VectorSelector); ok {
			vs = append(vs, v)
		}
		return nil
	})
	return vs
}

// seriesExist reports whether some scraped series has sel's name and
// matches its matchers on every label a binary exports.
func seriesExist(families map[string]*dto.MetricFamily, sel *parser.VectorSelector) bool {
	for _, s := range series(families, sel.Name) {
		ok := true
		for _, m := range sel.LabelMatchers {
			if m.Name == model.MetricNameLabel || targetLabels[m.Name] {
				continue
			}
			if !m.Matches(s[m.Name]) {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// series lists the label sets of the samples named name, with histograms
// and summaries expanded into _bucket, _sum and _count as Prometheus
// stores them.
func series(families map[string]*dto.MetricFamily, name string) []map[string]string {
	base, suffix := name, ""
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if f, ok := families[strings.TrimSuffix(name, s)]; ok && strings.HasSuffix(name, s) &&
			(f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY) {
			base, suffix = strings.TrimSuffix(name, s), s
		}
	}
	f, ok := families[base]
	if !ok {
		return nil
	}
	isHist := f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY
	if isHist != (suffix != "") {
		return nil
	}
	var out []map[string]string
	for _, m := range f.GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if suffix != "_bucket" {
			out = append(out, l)
			continue
		}
		for _, b := range m.GetHistogram().GetBucket() {
			lb := map[string]string{"le": fmt.Sprint(b.GetUpperBound())}
			for k, v := range l {
				lb[k] = v
			}
			out = append(out, lb)
		}
	}
	return out
}

func scrape(t *testing.T, ctx context.Context, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s/metrics: %v", addr, err)
	}
	return fams
}

// proc is one tier's binary, started with JSON logs; attrs are the
// attributes of the log line that says it is listening.
type proc struct {
	cmd   *exec.Cmd
	attrs map[string]any
	done  chan error
	out   *strings.Builder
}

func (p *proc) attr(k string) string {
	v, _ := p.attrs[k].(string)
	return v
}

// start runs the binary the tier's image holds and waits for the log line
// whose msg is ready.
func start(t *testing.T, ready string, args ...string) *proc {
	t.Helper()
	bin := slimPath
	if args[0] == "storage" {
		bin = binPath
	}
	cmd := exec.Command(bin, append(args, "--log.format", "json")...)
	cmd.Env = cleanEnv()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1), out: &strings.Builder{}}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	found := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.out.WriteString(line + "\n")
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == ready {
				found <- m
			}
		}
		io.Copy(io.Discard, stderr)
		p.done <- cmd.Wait()
	}()
	select {
	case p.attrs = <-found:
	case err := <-p.done:
		p.done <- err
		t.Fatalf("%v exited before %q: %v\n%s", args, ready, err, p.out)
	case <-time.After(20 * time.Second):
		t.Fatalf("%v: no %q in 20s\n%s", args, ready, p.out)
	}
	return p
}

func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("%v: %v\n%s", p.cmd.Args, err, p.out)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("%v did not stop in 20s", p.cmd.Args)
	}
}

// cleanEnv is the test's environment without INGEST_ variables, which
// would set the binaries' flags.
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "INGEST_") {
			env = append(env, e)
		}
	}
	return env
}

// untilNone runs check every 100 ms until it finds no problem or within
// has passed, and reports each problem it found last as an error.
func untilNone(t *testing.T, within time.Duration, check func() []string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		problems := check()
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				t.Error(p)
			}
			return
		}
		time.Sleep(100 * time.Millisecond) // the polling interval, not a wait for a condition
	}
}
