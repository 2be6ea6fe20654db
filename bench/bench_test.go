package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/internal/tmpfs"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bench-bin")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "ingest")
	if out, err := exec.Command("go", "build", "-o", binPath, "../cmd/ingest").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	testkit.StopStores()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// A short run against a frontend the bench starts itself: every message
// sent is acknowledged, and the JSON and the plot are written.
func TestRunSpawned(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		c    config
	}{
		{"closed loop", config{Devices: 8, Window: 4, Size: 200, Shape: "sensor"}},
		{"paced", config{Devices: 20, Window: 4, Rate: 50, Size: 120, Shape: "gps"}},
		{"mqtt closed loop", config{Proto: "mqtt", Devices: 8, Window: 4, Size: 200, Shape: "sensor"}},
		{"mqtt5 paced", config{Proto: "mqtt5", Devices: 20, Window: 4, Rate: 50, Size: 120, Shape: "gps"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.Spawn, c.Duration, c.Drain, c.Sources, c.Quiet = binPath, 2*time.Second, 10*time.Second, 2, true
			c.JSON, c.Plot = filepath.Join(dir, tc.name+".json"), filepath.Join(dir, tc.name+".svg")
			r := runResult(t, c)
			if r.Connected != c.Devices || r.Acked == 0 || r.Acked != r.Sent || len(r.Errors) != 0 {
				t.Fatalf("connected %d, sent %d, acked %d, errors %v", r.Connected, r.Sent, r.Acked, r.Errors)
			}
			if r.AckLatency.P50 <= 0 || r.AckLatency.P99 < r.AckLatency.P50 {
				t.Fatalf("latency %+v", r.AckLatency)
			}
			if c.Rate > 0 {
				// Paced: about rate × devices × duration messages, not more.
				want := c.Rate * float64(c.Devices) * c.Duration.Seconds()
				if float64(r.Sent) > want*1.1 {
					t.Fatalf("sent %d at %g/s per device for %v, want at most ~%.0f", r.Sent, c.Rate, c.Duration, want)
				}
			}
			svg, err := os.ReadFile(c.Plot)
			if err != nil || !strings.HasPrefix(string(svg), "<svg") {
				t.Fatalf("plot: %v", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	good := config{URL: "ws://x", Insecure: true, Devices: 1, Window: 1, Shape: "sensor", Sources: 1, Duration: time.Second}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, mod := range []func(*config){
		func(c *config) { c.URL = "" },
		func(c *config) { c.Spawn = "x" },
		func(c *config) { c.SpawnAll = "x" },
		func(c *config) { c.URL, c.Spawn, c.SpawnAll = "", "x", "x" },
		func(c *config) { c.URL, c.SpawnAll, c.Chaos = "", "x", true },
		func(c *config) { c.Tiers = true }, // without -spawn
		func(c *config) { c.URL, c.Spawn, c.Tiers, c.Cluster.Middletiers = "", "x", true, 65 },
		func(c *config) { c.Insecure = false },
		func(c *config) { c.Devices = 0 },
		func(c *config) { c.Devices = 100_001 },
		func(c *config) { c.Window = 0 },
		func(c *config) { c.Rate = -1 },
		func(c *config) { c.Shape = "xml" },
		func(c *config) { c.Sources = 0 },
		func(c *config) { c.Duration = 0 },
		func(c *config) { c.Proto = "amqp" },
		func(c *config) { c.Proto = "mqtt" }, // with a ws:// URL
		func(c *config) { c.Commands = -1 },
		func(c *config) { c.Commands, c.CommandsPoll = 10, -1 },
		func(c *config) { c.CommandsAPI = "http://x" },               // without -commands
		func(c *config) { c.URL, c.Spawn, c.Commands = "", "x", 10 }, // a frontend alone has no command home
		func(c *config) { c.Commands, c.Proto, c.URL = 10, "mqtt", "mqtt://x" },
		func(c *config) { c.Commands, c.Check = 10, "http://x" },
		func(c *config) { c.URL, c.Spawn, c.Chaos, c.ChaosEvery = "", "x", true, 0 },
		func(c *config) { c.URL, c.Spawn, c.Chaos, c.ChaosEvery = "", "x", true, -time.Second },
		// An external sink and no -check: the completeness check, which
		// -tiers promises, would not run, and the run would pass.
		func(c *config) {
			c.URL, c.Spawn, c.Tiers, c.Cluster.Sink = "", "x", true, "remotewrite+http://127.0.0.1:8428/api/v1/write"
		},
	} {
		c := good
		mod(&c)
		if c.validate() == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}

func TestMessageSize(t *testing.T) {
	for _, shape := range []string{"sensor", "gps"} {
		for _, size := range []int{200, 1000} {
			m := message(shape, size, 7, 12345, 1795436827000)
			if len(m) != size {
				t.Errorf("%s message of %d bytes, want %d", shape, len(m), size)
			}
			var v map[string]any
			if err := json.Unmarshal(m, &v); err != nil {
				t.Errorf("%s: %v", shape, err)
			}
		}
	}
}

// The messages keep their contract byte for byte: the fields, their
// order and formatting, seq as a field and the device time; the check and
// the dashboards downstream read them.
func TestMessageContract(t *testing.T) {
	ref := func(shape string, size, dev, seq int, ts int64) []byte {
		var b []byte
		switch shape {
		case "gps":
			lat := 48.85 + float64(dev%1000)/10000 + float64(seq%100)/100000
			lon := 2.35 + float64(dev/1000)/10000
			b = fmt.Appendf(nil, `{"id":%d,"seq":%d,"ts":%d,"lat":%.6f,"lon":%.6f,"speed":%d,"heading":%d,"fix":true`, seq, seq, ts, lat, lon, seq%120, seq%360)
		default:
			b = fmt.Appendf(nil, `{"id":%d,"seq":%d,"ts":%d,"temp":%.1f,"hum":%d,"battery":%.2f,"ok":true`, seq, seq, ts, 20+float64(seq%100)/10, 40+seq%20, 3.3-float64(seq%50)/100)
		}
		if pad := size - len(b) - len(`,"note":""}`); pad > 0 {
			b = append(b, `,"note":"`...)
			b = append(b, strings.Repeat("x", pad)...)
			b = append(b, '"')
		}
		return append(b, '}')
	}
	for _, shape := range []string{"sensor", "gps"} {
		for _, size := range []int{50, 150, 200, 1000} {
			for _, dev := range []int{0, 7, 1234, 99_999} {
				for seq := 1; seq <= 1500; seq += 7 {
					ts := 1795436827000 + int64(seq)
					if got, want := appendMessage([]byte("prefix"), shape, size, dev, uint64(seq), ts), ref(shape, size, dev, seq, ts); string(got[len("prefix"):]) != string(want) {
						t.Fatalf("%s %d/%d:\n got %s\nwant %s", shape, dev, seq, got[len("prefix"):], want)
					}
				}
			}
		}
	}
}

// A short chaos run, part of make test: the tiers run as separate
// processes, a random one is killed with SIGKILL every second or two and
// started again while devices stream, and afterwards every acknowledged
// message is in the store exactly once.
func TestChaosShort(t *testing.T) {
	dir := t.TempDir()
	c := config{Spawn: binPath, Chaos: true, ChaosEvery: 1500 * time.Millisecond, Devices: 10, Rate: 40, Window: 8, Size: 150,
		Shape: "sensor", Sources: 1, Duration: 20 * time.Second, Drain: 30 * time.Second, CheckWait: time.Minute, Quiet: true,
		JSON: filepath.Join(dir, "chaos.json")}
	if testing.Short() {
		c.Duration = 6 * time.Second
	}
	r := runResult(t, c)
	cp := r.Completeness
	if cp == nil || cp.Acked == 0 || cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != cp.Acked {
		t.Fatalf("completeness %+v", cp)
	}
	kills := 0
	for _, rc := range r.Chaos {
		kills += rc.Kills
	}
	if kills == 0 {
		t.Fatal("no tier was killed")
	}
	t.Logf("%d kills; %d acknowledged, all stored once", kills, cp.Acked)
}

// TestChaosReportsACrash: a process that exits on its own while chaos runs
// (a panic, a fatal error) fails the run. Chaos kills the processes and
// starts them again, so a crashed one it then picked was started again as
// if it had been killed, and the crash went unreported.
func TestChaosReportsACrash(t *testing.T) {
	cl, err := startCluster(binPath, shape{Frontends: 1, Middletiers: 1, Writers: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.stop(false)
	crashed := cl.tiers[0] // the middletier
	crashed.mu.Lock()
	cmd, done := crashed.cmd, crashed.done
	crashed.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL) // not chaos's kill: a crash, as far as the bench knows
	<-done
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = cl.chaos(ctx, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), crashed.name+" exited") {
		t.Fatalf("chaos after %s exited on its own: err = %v, want its exit reported", crashed.name, err)
	}
}

// TestTiers: three frontends, three middletiers and two writers of one
// group, each with its own embedded TSDB, as processes. The bench reports
// each tier's CPU per message from the processes' own readings: every
// process of a tier has a share of its messages, each middletier about a
// third, and every acknowledged message is in one of the writers' stores
// exactly once.
func TestTiers(t *testing.T) {
	c := config{Spawn: binPath, Tiers: true, Cluster: shape{Frontends: 3, Middletiers: 3, Writers: 2},
		Devices: 30, Rate: 20, Window: 8, Size: 150, Shape: "sensor", Sources: 1, Duration: 6 * time.Second,
		Drain: 30 * time.Second, CheckWait: time.Minute, Quiet: true, JSON: filepath.Join(t.TempDir(), "tiers.json")}
	r := runResult(t, c)
	if cp := r.Completeness; cp == nil || cp.Acked == 0 || cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != cp.Acked {
		t.Fatalf("completeness %+v", cp)
	}
	want := map[string]int{"frontend": 3, "middletier": 3, "storage": 2}
	if len(r.Tiers) != len(want) {
		t.Fatalf("tiers %+v", r.Tiers)
	}
	for _, f := range r.Tiers {
		if f.Processes != want[f.Kind] || len(f.Shares) != f.Processes || f.CPUSeconds <= 0 || f.Messages <= 0 || f.PerCore <= 0 || f.BytesPer <= 0 {
			t.Errorf("%s: %+v", f.Kind, f)
		}
		for name, s := range f.Shares {
			if s <= 0 {
				t.Errorf("%s %s: share %v", f.Kind, name, s)
			}
			// Each frontend has ten devices, each middletier one frontend.
			if f.Kind != "storage" && (s < 0.8/3 || s > 1.2/3) {
				t.Errorf("%s %s: share %.3f, want 1/3 ±20 %%", f.Kind, name, s)
			}
		}
	}
}

// TestSpawnAll: the bench starts the whole engine in one process, follows
// the live feed and checks the store: every acknowledged message is shown
// on the feed and stored exactly once.
func TestSpawnAll(t *testing.T) {
	dir := t.TempDir()
	c := config{SpawnAll: binPath, Devices: 10, Rate: 50, Window: 4, Size: 150, Shape: "gps", Sources: 1,
		Duration: 3 * time.Second, Drain: 10 * time.Second, CheckWait: 30 * time.Second, Quiet: true,
		JSON: filepath.Join(dir, "all.json"), Interval: time.Second}
	r := runResult(t, c)
	if r.Acked == 0 || r.Acked != r.Sent {
		t.Fatalf("sent %d, acked %d", r.Sent, r.Acked)
	}
	// The soak's lines: one a second, each with what the devices saw and
	// the engine's process as it was.
	if len(r.Intervals) < 2 {
		t.Fatalf("%d interval lines in a 3 s run, want 2 or more", len(r.Intervals))
	}
	var inLines int64
	for _, iv := range r.Intervals {
		inLines += iv.Acked
		if iv.RSSMiB <= 0 || iv.FDs <= 0 || iv.Threads <= 0 || iv.Goroutines <= 0 || iv.HeapMiB <= 0 || iv.AckP99 < iv.AckP50 ||
			iv.AnonMiB <= 0 || iv.AnonMiB > iv.RSSMiB || iv.HeapHeldMiB < iv.HeapMiB {
			t.Fatalf("interval line %+v", iv)
		}
	}
	if inLines == 0 || inLines > r.Acked || r.Intervals[0].FeedP99 <= 0 {
		t.Fatalf("interval lines count %d acknowledged of %d; first %+v", inLines, r.Acked, r.Intervals[0])
	}
	f := r.Feed
	if f == nil || f.Shown != r.Acked || f.Missed != 0 || f.Latency.P50 <= 0 || f.Latency.P99 < f.Latency.P50 {
		t.Fatalf("live feed %+v, %d acknowledged", f, r.Acked)
	}
	cp := r.Completeness
	if cp == nil || cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != r.Acked {
		t.Fatalf("completeness %+v, %d acknowledged", cp, r.Acked)
	}
	// The engine's own figures: every acknowledged message reached the
	// store after the first scrape, both WALs synced, the engine allocated.
	e := r.Engine
	if e == nil || e.StoreDelivery == nil || e.StoreDelivery.Count < float64(r.Acked) || e.StoreDelivery.P99 < e.StoreDelivery.P50 ||
		e.Fsync["frontend"] == nil || e.Fsync["middletier"] == nil || e.Fsync["frontend"].Count <= 0 || e.AllocPerMsg <= 0 {
		t.Fatalf("engine figures %+v, %d acknowledged", e, r.Acked)
	}
}

// TestCheckAheadOfClock: devices that send more than a thousand messages a
// second stamp them ahead of the clock (a device's times are distinct
// milliseconds); the check queries the store as of the latest of them, so
// none counts as lost for being in the future of the check's query.
//
// The engine's queries hold at most 2,000 samples, fewer than the run
// stores: the check reads the store in parts that each fit, as it must
// against a store's bound after a long run at full load (50 million
// samples by default, five to six minutes at 150,000 msg/s).
func TestCheckAheadOfClock(t *testing.T) {
	t.Setenv("INGEST_STORAGE_QUERY_MAX_SAMPLES", "2000")
	c := config{SpawnAll: binPath, Devices: 4, Window: 64, Size: 150, Shape: "sensor", Sources: 1,
		Duration: 4 * time.Second, Drain: 10 * time.Second, CheckWait: time.Second, Quiet: true,
		JSON: filepath.Join(t.TempDir(), "ahead.json")}
	r := runResult(t, c)
	if r.Acked == 0 || r.Acked != r.Sent {
		t.Fatalf("sent %d, acked %d", r.Sent, r.Acked)
	}
	cp := r.Completeness
	if cp == nil {
		t.Fatal("no completeness")
	}
	// Ahead by more than the check waits: a check as of the clock would
	// find messages missing.
	if cp.AheadMS <= 2*c.CheckWait.Milliseconds() {
		t.Fatalf("devices ran %d ms ahead of the clock; the test needs more than %v (%d messages in %v)",
			cp.AheadMS, 2*c.CheckWait, r.Acked, c.Duration)
	}
	if cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != r.Acked {
		t.Fatalf("completeness %+v, %d acknowledged", cp, r.Acked)
	}
}

// TestSpawnExitsAtStart: an engine that stops at start is reported with
// its exit status and what it said, and leaves no data directory behind.
func TestSpawnExitsAtStart(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where spawnAll makes the engine's data directory
	_, err := spawnAll(context.Background(), binPath, "bogus://sink")
	if err == nil {
		t.Fatal("an engine with an unknown sink started")
	}
	for _, want := range []string{"engine exited at start (exit status 2)", `unknown kind "bogus://sink"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("%d entries left behind in %s, first %s", len(left), tmp, left[0].Name())
	}
}

// TestSpawnAllMQTT: MQTT 5 devices through the whole engine: every message
// PUBACKed is in the store exactly once, and on the live feed.
func TestSpawnAllMQTT(t *testing.T) {
	c := config{SpawnAll: binPath, Proto: "mqtt5", Devices: 10, Rate: 50, Window: 4, Size: 150, Shape: "sensor", Sources: 1,
		Duration: 3 * time.Second, Drain: 10 * time.Second, CheckWait: 30 * time.Second, Quiet: true,
		JSON: filepath.Join(t.TempDir(), "all.json")}
	r := runResult(t, c)
	if r.Acked == 0 || r.Acked != r.Sent || len(r.Errors) != 0 {
		t.Fatalf("sent %d, acked %d, errors %v", r.Sent, r.Acked, r.Errors)
	}
	if f := r.Feed; f == nil || f.Shown != r.Acked || f.Missed != 0 {
		t.Fatalf("live feed %+v, %d acknowledged", f, r.Acked)
	}
	if cp := r.Completeness; cp == nil || cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != r.Acked {
		t.Fatalf("completeness %+v, %d acknowledged", cp, r.Acked)
	}
}

// TestCheckVictoriaMetrics: the completeness check reads any Prometheus
// query API. The engine stores into a real VictoriaMetrics alone, by
// remote-write, and -check proves there, through VictoriaMetrics's
// /prometheus path, that every acknowledged message is stored exactly once.
func TestCheckVictoriaMetrics(t *testing.T) {
	vm := testkit.VictoriaMetrics(t)
	c := config{SpawnAll: binPath, SpawnSinks: "remotewrite+" + vm.URL + "/api/v1/write#name=vm", Check: vm.URL + "/prometheus/",
		Devices: 10, Rate: 50, Window: 4, Size: 150, Shape: "sensor", Sources: 1,
		Duration: 3 * time.Second, Drain: 10 * time.Second, CheckWait: 2 * time.Minute, Quiet: true,
		JSON: filepath.Join(t.TempDir(), "vm.json")}
	r := runResult(t, c)
	if r.Acked == 0 || r.Acked != r.Sent {
		t.Fatalf("sent %d, acked %d", r.Sent, r.Acked)
	}
	if cp := r.Completeness; cp == nil || cp.Lost != 0 || cp.Duplicated != 0 || cp.Stored != r.Acked {
		t.Fatalf("completeness %+v, %d acknowledged", cp, r.Acked)
	}
	// The same check through the other forms of the API's URL.
	for _, u := range []string{vm.URL, vm.URL + "/api/v1/query", vm.URL + "/prometheus/api/v1"} {
		if got := queryBase(u); got != vm.URL && got != vm.URL+"/prometheus" {
			t.Errorf("queryBase(%s) = %s", u, got)
		}
	}
}

// runResult runs the bench with c, which names a JSON file, and returns the
// result read back from that file.
func runResult(t *testing.T, c config) result {
	t.Helper()
	if err := run(c); err != nil {
		t.Fatal(err)
	}
	var r result
	b, err := os.ReadFile(c.JSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestFeedClosedReported: a dashboard the feed closes as too slow (here a
// feed that queues one message a reader and closes one that misses more
// than one) is reported as closed, with the feed's close code, rather than
// as a dashboard that was shown little.
func TestFeedClosedReported(t *testing.T) {
	t.Setenv("INGEST_FEED_CLIENT_QUEUE", "1")
	t.Setenv("INGEST_FEED_MAX_MISSED", "1")
	// The store may take its time, as -check.wait (a minute) lets it in a
	// user's run: with none, the check read it once, as soon as the last
	// acknowledgement came, and counted the points not yet stored as lost.
	c := config{SpawnAll: binPath, Devices: 10, Rate: 200, Window: 4, Size: 150, Shape: "sensor", Sources: 1,
		Duration: 2 * time.Second, Drain: 10 * time.Second, CheckWait: 30 * time.Second, Quiet: true,
		JSON: filepath.Join(t.TempDir(), "all.json")}
	r := runResult(t, c)
	if f := r.Feed; f == nil || !strings.HasPrefix(f.Closed, "4000 ") {
		t.Fatalf("live feed %+v: want it closed by the feed with 4000", f)
	}
}

// An engine's data on a file system in memory (where /tmp is a tmpfs) is
// said: its fsyncs cost nothing, so the figures would not be a disk's.
func TestDataInMemoryWarned(t *testing.T) {
	var b strings.Builder
	if !warnIfMemory(&b, tmpfs.Mount(t, 1<<20)) || !strings.Contains(b.String(), "TMPDIR") {
		t.Fatalf("a tmpfs: %q", b.String())
	}
	b.Reset()
	if warnIfMemory(&b, "/proc") || b.Len() != 0 {
		t.Fatalf("/proc (not in memory, nor a disk): %q", b.String())
	}
}
