package status_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// engine is a registry with the metrics a frontend and the WALs register,
// under their real names and labels.
type engine struct {
	reg         *prometheus.Registry
	connections prometheus.Gauge
	received    prometheus.Counter
	acked       prometheus.Counter
	depth       *prometheus.GaugeVec
	depthBytes  *prometheus.GaugeVec
	ackLatency  prometheus.Histogram
}

func newEngine(t *testing.T) *engine {
	e := &engine{
		reg:         prometheus.NewRegistry(),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ingest_frontend_connections"}),
		received:    prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_frontend_messages_received_total"}),
		acked:       prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_frontend_messages_acked_total"}),
		depth:       prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_queue_depth_entries"}, []string{"hop"}),
		depthBytes:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_queue_depth_bytes"}, []string{"hop"}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ingest_frontend_ack_latency_seconds",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
	}
	e.reg.MustRegister(e.connections, e.received, e.acked, e.depth, e.depthBytes, e.ackLatency)
	return e
}

// serve mounts a status handler at /status/ as ingest all does, on a real
// loopback listener.
func serve(t *testing.T, opts status.Options) string {
	t.Helper()
	h, err := status.New(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/status/", http.StripPrefix("/status", h))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func snapshot(t *testing.T, base string) *status.Snapshot {
	t.Helper()
	resp, err := http.Get(base + "/status/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("snapshot: %s %q: %s", resp.Status, resp.Header.Get("Content-Type"), b)
	}
	var s status.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func near(got *float64, want float64) bool {
	return got != nil && math.Abs(*got-want) < 1e-9
}

func show(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestSnapshot(t *testing.T) {
	e := newEngine(t)
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	url := serve(t, status.Options{Gatherer: e.reg, Now: clk.now})

	e.connections.Set(3)
	e.received.Add(100)
	e.acked.Add(90)
	e.depth.WithLabelValues("middletier").Set(7)
	e.depthBytes.WithLabelValues("middletier").Set(700)
	e.depth.WithLabelValues("frontend").Set(12)
	e.depthBytes.WithLabelValues("frontend").Set(1200)
	e.depth.WithLabelValues("uplink_inflight").Set(4)
	for range 50 {
		e.ackLatency.Observe(.0015)
	}
	for range 49 {
		e.ackLatency.Observe(.003)
	}
	e.ackLatency.Observe(.2)
	clk.advance(2 * time.Second)

	s := snapshot(t, url)
	if !s.Time.Equal(clk.now()) || s.WindowSeconds != 2 {
		t.Errorf("time %v, window %v s; want %v, 2 s", s.Time, s.WindowSeconds, clk.now())
	}
	if !near(s.DevicesConnected, 3) {
		t.Errorf("devices_connected %v, want 3", show(s.DevicesConnected))
	}
	if s.Received == nil || s.Received.Total != 100 || !near(s.Received.PerSecond, 50) {
		t.Errorf("received %+v, want 100 at 50/s", s.Received)
	}
	if s.Acked == nil || s.Acked.Total != 90 || !near(s.Acked.PerSecond, 45) {
		t.Errorf("acked %+v, want 90 at 45/s", s.Acked)
	}
	// 50 observations up to 2 ms, 99 up to 5 ms: histogram_quantile gives
	// the buckets' upper bounds.
	if l := s.AckLatency; l == nil || l.Count != 100 || !near(l.P50Seconds, .002) || !near(l.P99Seconds, .005) {
		t.Errorf("ack latency %+v, want 100 observations, p50 2 ms, p99 5 ms", l)
	}
	// What the process does not register is null.
	if s.Rejected != nil || s.Stored != nil || s.FeedDelivered != nil || s.FeedReaders != nil || s.FeedLatency != nil || s.StoreLatency != nil ||
		s.Commands != nil {
		t.Errorf("figures without metrics should be null: %+v", s)
	}
	// Queues in the order a message passes them.
	var hops []string
	for _, q := range s.Queues {
		hops = append(hops, q.Hop)
	}
	if strings.Join(hops, " ") != "frontend uplink_inflight middletier" {
		t.Fatalf("queues %+v", s.Queues)
	}
	if q := s.Queues[0]; q.Entries != 12 || !near(q.Bytes, 1200) {
		t.Errorf("frontend queue %+v", q)
	}
	if q := s.Queues[1]; q.Entries != 4 || q.Bytes != nil {
		t.Errorf("uplink queue %+v, want 4 entries and no bytes", q)
	}

	// The JSON members the page reads, by name.
	resp, err := http.Get(url + "/status/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	json.NewDecoder(resp.Body).Decode(&raw)
	resp.Body.Close()
	for _, k := range []string{"time", "window_seconds", "devices_connected", "received", "acked", "rejected", "stored",
		"feed_delivered", "feed_readers", "queues", "ack_latency", "feed_latency", "store_latency", "commands"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("snapshot has no %q: %v", k, raw)
		}
	}
	if r, _ := raw["received"].(map[string]any); r["per_second"] == nil || r["total"] == nil {
		t.Errorf("received %v", raw["received"])
	}
}

// The commands the homes keep, by state, summed over the homes; answered
// is acknowledged and failed together.
func TestSnapshotCommands(t *testing.T) {
	e := newEngine(t)
	cmds := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ingest_command_commands"}, []string{"home", "state"})
	e.reg.MustRegister(cmds)
	url := serve(t, status.Options{Gatherer: e.reg})
	for home, n := range map[string]float64{"mt-0": 1, "mt-1": 10} {
		for i, st := range []string{"queued", "sent", "acknowledged", "failed", "expired", "cancelled"} {
			cmds.WithLabelValues(home, st).Set(n * float64(i+1))
		}
	}
	got := snapshot(t, url).Commands
	want := status.Commands{Queued: 11, Sent: 22, Answered: 33 + 44, Acknowledged: 33, Failed: 44, Expired: 55, Cancelled: 66}
	if got == nil || *got != want {
		t.Fatalf("commands %+v, want %+v", got, want)
	}
}

// The queues come in one order, snapshot after snapshot: the pipeline's
// hops in the order a message passes them, then the command homes' (which
// no message passes), by name, as in the history. Before, the hops after
// the pipeline's came in the order of a map's iteration, which changes
// from one snapshot to the next: the page's rows of queues swapped.
func TestSnapshotQueueOrder(t *testing.T) {
	e := newEngine(t)
	url := serve(t, status.Options{Gatherer: e.reg})
	for _, hop := range []string{"middletier", "command_events", "frontend", "command"} {
		e.depth.WithLabelValues(hop).Set(1)
	}
	for i := range 20 {
		var hops []string
		for _, q := range snapshot(t, url).Queues {
			hops = append(hops, q.Hop)
		}
		if got, want := strings.Join(hops, " "), "frontend middletier command command_events"; got != want {
			t.Fatalf("snapshot %d: queues %s, want %s", i, got, want)
		}
	}
}

// Rates and quantiles cover the last Window, not the process's life; a
// counter that restarts counts from zero.
func TestSnapshotWindow(t *testing.T) {
	e := newEngine(t)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	url := serve(t, status.Options{Gatherer: e.reg, Now: clk.now, Window: 5 * time.Second})

	// Ten seconds of 10 messages a second, each acked in 20 ms, polled
	// every second.
	second := func(n int, ackSeconds float64) {
		e.received.Add(float64(n))
		for range n {
			e.ackLatency.Observe(ackSeconds)
		}
		clk.advance(time.Second)
		snapshot(t, url)
	}
	for range 10 {
		second(10, .02)
	}
	// Then two seconds at 100 a second, acked in 400 ms.
	for range 2 {
		second(100, .4)
	}
	s := snapshot(t, url)
	// The window is the last 5 s: 3 s at 10/s, 2 s at 100/s.
	if s.WindowSeconds != 5 || !near(s.Received.PerSecond, (3*10+2*100)/5.0) || s.Received.Total != 300 {
		t.Errorf("window %v s, received %+v: want 5 s, 46/s, 300", s.WindowSeconds, s.Received)
	}
	if l := s.AckLatency; l.Count != 230 || *l.P50Seconds <= .25 || !near(l.P99Seconds, .5-.25*((230-.99*230)/200)) {
		t.Errorf("ack latency %+v (p50 %v, p99 %v): want 230 observations, p50 and p99 in the 250-500 ms bucket", l, show(l.P50Seconds), show(l.P99Seconds))
	}

	// The frontend's metrics come back (a restart within the process): the
	// new counter's value is its rate since the base.
	e.reg.Unregister(e.received)
	fresh := prometheus.NewCounter(prometheus.CounterOpts{Name: "ingest_frontend_messages_received_total"})
	e.reg.MustRegister(fresh)
	fresh.Add(25)
	clk.advance(time.Second)
	s = snapshot(t, url)
	if s.Received.Total != 25 || !near(s.Received.PerSecond, 25/s.WindowSeconds) {
		t.Errorf("after a reset: received %+v over %v s, want 25 in total", s.Received, s.WindowSeconds)
	}

	// A quiet minute: the window stretches back to the last sample rather
	// than having no base.
	clk.advance(time.Minute)
	s = snapshot(t, url)
	if s.WindowSeconds < 60 || !near(s.Received.PerSecond, 0) || s.AckLatency.Count != 0 || s.AckLatency.P50Seconds != nil {
		t.Errorf("after a quiet minute: window %v s, received %+v, ack latency %+v", s.WindowSeconds, s.Received, s.AckLatency)
	}
}

// Latencies above the highest bucket are reported as its bound, as
// histogram_quantile does.
func TestSnapshotInfBucket(t *testing.T) {
	e := newEngine(t)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	url := serve(t, status.Options{Gatherer: e.reg, Now: clk.now})
	e.ackLatency.Observe(7)
	e.ackLatency.Observe(9)
	clk.advance(time.Second)
	if l := snapshot(t, url).AckLatency; !near(l.P50Seconds, 2.5) || !near(l.P99Seconds, 2.5) {
		t.Errorf("ack latency p50 %v p99 %v, want 2.5 s", show(l.P50Seconds), show(l.P99Seconds))
	}
}

func TestPage(t *testing.T) {
	e := newEngine(t)
	url := serve(t, status.Options{Gatherer: e.reg, FeedURL: "/v1/feed"})
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get("/status")
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/status/" {
		t.Errorf("GET /status: %s at %s", resp.Status, resp.Request.URL.Path)
	}
	if !strings.Contains(body, `data-feed="/v1/feed"`) || !strings.Contains(body, `<script src="app.js">`) ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("page %q:\n%s", resp.Header.Get("Content-Type"), body)
	}
	for path, ctype := range map[string]string{"/status/app.js": "text/javascript", "/status/style.css": "text/css"} {
		resp, body := get(path)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) || len(body) < 100 {
			t.Errorf("GET %s: %s %q, %d bytes", path, resp.Status, resp.Header.Get("Content-Type"), len(body))
		}
	}
	if resp, _ := get("/status/index.html.orig"); resp.StatusCode != 404 {
		t.Errorf("GET an unknown file: %s", resp.Status)
	}
	resp, err := http.Post(url+"/status/snapshot", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST snapshot: %s", resp.Status)
	}

	// Without a feed the page has no table to fill.
	url = serve(t, status.Options{Gatherer: e.reg})
	if _, body := get("/status/"); !strings.Contains(body, `data-feed=""`) {
		t.Errorf("page without a feed:\n%s", body)
	}

	if _, err := status.New(status.Options{}, nil); err == nil {
		t.Error("New without a gatherer succeeded")
	}
}

// historyAnswer is /status/history's JSON.
type historyAnswer struct {
	IntervalSeconds float64               `json:"interval_seconds"`
	WindowSeconds   float64               `json:"window_seconds"`
	HistorySeconds  float64               `json:"history_seconds"`
	Time            []int64               `json:"time"`
	Series          map[string][]*float64 `json:"series"`
	Queues          []struct {
		Hop     string     `json:"hop"`
		Entries []*float64 `json:"entries"`
	} `json:"queues"`
}

func getHistory(t *testing.T, h http.Handler, query string) historyAnswer {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/history"+query, nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /history%s: %d %q %s", query, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	var a historyAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("GET /history%s: %v\n%s", query, err, rec.Body)
	}
	return a
}

// runHandler starts h.Run and stops it at the end of the test.
func runHandler(t *testing.T, h *status.Handler) {
	testkit.Go(t, "Run", h.Run)
}

// The history holds a point a second for the last 15 minutes, each over
// the window before it: a page opened late gets all of it at once, and
// then only what is new.
func TestHistory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t)
		h, err := status.New(status.Options{Gatherer: e.reg}, nil)
		if err != nil {
			t.Fatal(err)
		}
		runHandler(t, h)

		// Before the first second there is no point.
		if a := getHistory(t, h, ""); len(a.Time) != 0 || a.IntervalSeconds != 1 || a.WindowSeconds != 5 || a.HistorySeconds != 900 {
			t.Fatalf("history at start: %+v", a)
		}
		// Twenty minutes: 10 messages a second acked in 3 ms, then for
		// the last 2 minutes 100 a second acked in 300 ms; the frontend's
		// queue holds as many entries as minutes have passed. The engine
		// changes half-way between the handler's ticks.
		time.Sleep(500 * time.Millisecond)
		for s := range 20 * 60 {
			n, lat := 10, .003
			if s >= 18*60 {
				n, lat = 100, .3
			}
			e.received.Add(float64(n))
			e.acked.Add(float64(n))
			for range n {
				e.ackLatency.Observe(lat)
			}
			e.depth.WithLabelValues("frontend").Set(float64(s / 60))
			if s >= 19*60 {
				e.depth.WithLabelValues("middletier").Set(7)
			}
			time.Sleep(time.Second)
		}
		end := time.Now().Add(-500 * time.Millisecond) // the last tick

		a := getHistory(t, h, "")
		if len(a.Time) != 900 {
			t.Fatalf("%d points, want 900 (15 minutes, one a second)", len(a.Time))
		}
		for i, ms := range a.Time {
			if want := end.Add(time.Duration(i-899) * time.Second).UnixMilli(); ms != want {
				t.Fatalf("point %d at %d, want %d: one a second up to the last tick", i, ms, want)
			}
		}
		value := func(series string, i int) any {
			if p := a.Series[series][i]; p != nil {
				return *p
			}
			return nil
		}
		// The oldest point is at 5 minutes, the newest at 20.
		for _, c := range []struct {
			series string
			i      int
			want   any
		}{
			{"received", 0, 10.0}, {"acked", 0, 10.0}, {"received", 899, 100.0},
			// 3 s after the change: 2 s at 10/s and 3 s at 100/s.
			{"received", 899 - 117, (2*10 + 3*100) / 5.0},
			// Everything between 2 and 5 ms: interpolated as
			// histogram_quantile does.
			{"ack_p50", 0, .0035}, {"ack_p99", 0, .002 + .003*.99},
			{"ack_p50", 899, .25 + .25*.5}, {"ack_p99", 899, .25 + .25*.99},
			{"stored", 0, nil}, {"feed_p50", 899, nil}, {"store_p99", 899, nil},
		} {
			got := value(c.series, c.i)
			if w, ok := c.want.(float64); ok {
				if g, ok := got.(float64); !ok || math.Abs(g-w) > 1e-4*math.Max(1, w) {
					t.Errorf("%s[%d] = %v, want %v", c.series, c.i, got, w)
				}
			} else if got != nil {
				t.Errorf("%s[%d] = %v, want null: no such metric", c.series, c.i, got)
			}
		}
		if len(a.Queues) != 2 || a.Queues[0].Hop != "frontend" || a.Queues[1].Hop != "middletier" {
			t.Fatalf("queues %+v", a.Queues)
		}
		if f := a.Queues[0].Entries; f[0] == nil || *f[0] != 5 || *f[899] != 19 {
			t.Errorf("frontend queue from %v to %v, want 5 to 19", f[0], f[899])
		}
		if m := a.Queues[1].Entries; m[0] != nil || m[899] == nil || *m[899] != 7 {
			t.Errorf("middletier queue from %v to %v, want null (no such hop yet) to 7", m[0], m[899])
		}

		// What is new since a point.
		b := getHistory(t, h, fmt.Sprintf("?since=%d", a.Time[896]))
		if len(b.Time) != 3 || b.Time[0] != a.Time[897] || len(b.Series["received"]) != 3 || len(b.Queues[0].Entries) != 3 {
			t.Errorf("since the third-last point: %+v", b)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/history?since=yesterday", nil))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("since=yesterday: %d", rec.Code)
		}
	})
}

// The page asks for the points after the newest it has, by the time the
// history gave it: in milliseconds. A point taken within a millisecond (as
// every real one is: the clock does not tick on whole milliseconds) is not
// after its own time, and is not given again. Before, it was: the page
// added the newest point a second time at every poll.
func TestHistorySinceMillisecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t)
		time.Sleep(300 * time.Microsecond) // ticks off the millisecond
		h, err := status.New(status.Options{Gatherer: e.reg}, nil)
		if err != nil {
			t.Fatal(err)
		}
		runHandler(t, h)
		time.Sleep(3*time.Second + 500*time.Millisecond)
		a := getHistory(t, h, "")
		if len(a.Time) != 3 {
			t.Fatalf("%d points after 3.5 s, want 3", len(a.Time))
		}
		b := getHistory(t, h, fmt.Sprintf("?since=%d", a.Time[1]))
		if len(b.Time) != 1 || b.Time[0] != a.Time[2] {
			t.Errorf("since the second point (%d): points at %v, want the third alone (%d)", a.Time[1], b.Time, a.Time[2])
		}
		if b := getHistory(t, h, fmt.Sprintf("?since=%d", a.Time[2])); len(b.Time) != 0 {
			t.Errorf("since the newest point (%d): points at %v, want none", a.Time[2], b.Time)
		}
	})
}
