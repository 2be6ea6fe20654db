package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wire"
)

// mtFeeder sends messages to a middletier's ingest socket as a frontend's
// uplink would, waiting for each batch's acknowledgement.
type mtFeeder struct {
	t    *testing.T
	sck  zmq4.Socket
	acks chan uint64
	wg   sync.WaitGroup
}

func newMTFeeder(t *testing.T, endpoint string) *mtFeeder {
	t.Helper()
	sck := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity("fe-test#1")), zmq4.WithTimeout(time.Second))
	if err := sck.Dial(endpoint); err != nil {
		t.Fatal(err)
	}
	f := &mtFeeder{t: t, sck: sck, acks: make(chan uint64, 1024)}
	f.wg.Go(func() {
		for {
			msg, err := sck.Recv()
			if err != nil {
				return
			}
			if m, err := wire.Decode(msg.Frames[len(msg.Frames)-1]); err == nil {
				if a, ok := m.(*wire.Ack); ok {
					f.acks <- a.UpTo
				}
			}
		}
	})
	t.Cleanup(func() { sck.Close(); f.wg.Wait() })
	return f
}

// storageMessage is message i (from 1): device dev-(i%devices), device time
// base + i ms, payload {"n":i,"door":"open"|"closed"}.
func storageMessage(i int, base time.Time) []byte {
	door := "open"
	if i%2 == 0 {
		door = "closed"
	}
	return envelope.AppendEncode(nil, &envelope.Envelope{
		Frontend: "fe-test", Device: fmt.Sprintf("dev-%d", i%10),
		Received: base.Add(time.Hour).UnixNano(), HasDeviceTime: true, DeviceTime: base.Add(time.Duration(i) * time.Millisecond).UnixNano(),
		Payload: fmt.Appendf(nil, `{"id":%d,"n":%d,"door":%q}`, i, i, door),
	})
}

// send sends messages [from, to) in batches of 100.
func (f *mtFeeder) send(from, to int, base time.Time) {
	f.t.Helper()
	for i := from; i < to; i += 100 {
		n := min(100, to-i)
		entries := make([][]byte, n)
		for j := range entries {
			entries[j] = storageMessage(i+j, base)
		}
		f.sendBatch(wire.Append(nil, &wire.Batch{Origin: "fe-test.0001", First: uint64(i), Entries: entries}), uint64(i+n-1))
	}
}

// sendBatch sends the encoded batch b until an ack covers last.
func (f *mtFeeder) sendBatch(b []byte, last uint64) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for acked := false; !acked; {
		if err := f.sck.Send(zmq4.NewMsg(b)); err != nil {
			f.t.Fatal(err)
		}
		select {
		case up := <-f.acks:
			acked = up >= last
		case <-time.After(time.Second): // resend: a middletier drops repeats
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("no ack up to %d", last)
		}
	}
}

// promQuery runs an instant query against a query API and returns the
// single result's value, "" for an empty result or a failure.
func promQuery(addr, expr string, at time.Time) string {
	resp, err := http.Get("http://" + addr + "/api/v1/query?" + url.Values{"query": {expr}, "time": {fmt.Sprint(at.Unix())}}.Encode())
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) != 1 {
		return ""
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return s
}

// storageTiers are a middletier with a durable consumer "storage" and a
// storage writer that follows it, with a device registry, and without the
// engine's own metrics (TestSelfMonitoring has them), so that the store
// holds the devices' series alone; ingest is the middletier's ingest
// endpoint, httpAddr the writer's query API.
func storageTiers(t *testing.T) (mt, st *tierProc, ingest, httpAddr string) {
	t.Helper()
	m := middletierProc(t, "mt-0", t.TempDir(), "--consumers", "storage")
	httpAddr = loopback(t)
	regFile := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(regFile, []byte("id,name,site\ndev-1,Boiler 1,berlin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st = &tierProc{t: t, name: "storage", ready: regexp.MustCompile(`msg="storage listening"`),
		args: []string{"storage", "--data.dir", t.TempDir(), "--http.listen", httpAddr, "--registry.file", regFile, "--self-monitor.interval", "0"},
		env:  []string{"INGEST_MIDDLETIERS_STREAM=" + m.stream, "INGEST_MIDDLETIERS_CONSUMER=" + m.consumer}}
	return m.tierProc, st, m.ingest, httpAddr
}

// storedN waits until the query API at httpAddr counts want samples of n
// (expr) at at.
func storedN(t *testing.T, httpAddr, expr string, at time.Time, want string, within time.Duration) {
	t.Helper()
	testkit.Eventually(t, within, "the store holds "+want+" samples of n", func() (bool, string) {
		got := promQuery(httpAddr, expr, at)
		return got == want, got
	})
}

// TestStorageUnderSIGKILL streams messages through a middletier to a
// storage writer that is killed with SIGKILL again and again while it
// writes, and started again. At the end the store holds every message
// exactly once.
func TestStorageUnderSIGKILL(t *testing.T) {
	mt, st, ingest, httpAddr := storageTiers(t)
	mt.start()
	st.start()
	logsOnFailure(t, 60, mt, st)
	const n = 50000
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	feeder := newMTFeeder(t, ingest)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 1; i <= n; i += 500 {
			feeder.send(i, i+500, base)
			time.Sleep(50 * time.Millisecond) // a steady stream, not one burst
		}
	}()
	kills := 0
	for done := false; !done; {
		select {
		case <-sent:
			done = true
		case <-time.After(time.Duration(100+rand.IntN(300)) * time.Millisecond):
			st.kill()
			kills++
			st.start()
		}
	}
	st.kill() // once more, after the last message
	kills++
	st.start()

	at := base.Add(time.Minute)
	storedN(t, httpAddr, `sum(count_over_time(n[1h]))`, at, fmt.Sprint(n), 60*time.Second)
	for expr, want := range map[string]string{
		`sum(count_over_time(n[1h]))`:                fmt.Sprint(n),
		`sum(sum_over_time(n[1h]))`:                  fmt.Sprint(n * (n + 1) / 2),
		`sum(count_over_time(door_info[1h]))`:        fmt.Sprint(n),
		`count(count_over_time(n[1h]))`:              "10",
		`sum(count_over_time(n{site="berlin"}[1h]))`: fmt.Sprint(n / 10),
	} {
		if got := promQuery(httpAddr, expr, at); got != want {
			t.Errorf("%s = %q, want %q", expr, got, want)
		}
	}
	stopAll(t, st, mt)
	resumes := regexp.MustCompile(`msg="storage: resuming" middletier=mt-0 from=(\d+)`).FindAllStringSubmatch(st.logs.String(), -1)
	var from []string
	for _, m := range resumes {
		from = append(from, m[1])
	}
	t.Logf("%d messages stored exactly once through %d SIGKILLs of the storage writer; it resumed from %s", n, kills, strings.Join(from, ", "))
}

// TestStoragePromtool reads the embedded query API with promtool, a real
// Prometheus API client (Debian's prometheus package; make deps installs
// it): instant, range, series and label queries return what was sent.
func TestStoragePromtool(t *testing.T) {
	promtool := testkit.Tool(t, "promtool", "prometheus")
	mt, st, ingest, httpAddr := storageTiers(t)
	mt.start()
	st.start()
	logsOnFailure(t, 30, mt, st)
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	newMTFeeder(t, ingest).send(1, 101, base) // messages 1..100, 1 ms apart
	at := base.Add(time.Second)
	storedN(t, httpAddr, `sum(count_over_time(n[1h]))`, at, "100", 30*time.Second)
	pt := promtoolQuery(t, promtool, "http://"+httpAddr)
	checkPromtoolInstant(t, pt, at)
	checkPromtoolRange(t, pt, base, at)
	stopAll(t, st, mt)
}

// promtoolQuery runs promtool query against server: args[0] is the kind
// of query, the server comes after it.
func promtoolQuery(t *testing.T, promtool, server string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		args = append([]string{"query", args[0], server}, args[1:]...)
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

// promtoolTime is t as promtool prints times: seconds, with the
// milliseconds if any.
func promtoolTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', -1, 64)
}

// checkPromtoolInstant checks instant queries at at of messages 1..100.
func checkPromtoolInstant(t *testing.T, run func(args ...string) string, at time.Time) {
	t.Helper()
	unix := promtoolTime
	// Message 91 is dev-1's last: n 91 at base+91ms, with its registry labels.
	out := run("instant", `n{device="dev-1"}`, "--time="+unix(at))
	if want := `n{device="dev-1", name="Boiler 1", site="berlin"} => 91 @[` + unix(at) + `]`; strings.TrimSpace(out) != want {
		t.Errorf("instant query: %q, want %q", out, want)
	}
	out = run("instant", `sum(n)`, "--time="+unix(at))
	if want := fmt.Sprintf(`{} => %d @[%s]`, 91+92+93+94+95+96+97+98+99+100, unix(at)); strings.TrimSpace(out) != want {
		t.Errorf("instant sum: %q, want %q", out, want)
	}
	out = run("instant", `door_info{device="dev-2"}`, "--time="+unix(at))
	if !strings.Contains(out, `door_info{device="dev-2", value="closed"} => 1`) || strings.Contains(out, `"open"`) {
		t.Errorf("string field: %q", out)
	}
}

// checkPromtoolRange checks range, series and label queries of messages
// 1..100, sent from base on.
func checkPromtoolRange(t *testing.T, run func(args ...string) string, base, at time.Time) {
	t.Helper()
	unix := promtoolTime
	// dev-3 sent 3, 13, …, 93 at base+3ms, +13ms, …: one step per 10 ms.
	out := run("range", `n{device="dev-3"}`, "--start="+unix(base.Add(3*time.Millisecond)),
		"--end="+unix(base.Add(93*time.Millisecond)), "--step=10ms")
	var want strings.Builder
	want.WriteString(`n{device="dev-3"} =>` + "\n")
	for v := 3; v <= 93; v += 10 {
		fmt.Fprintf(&want, "%d @[%s]\n", v, unix(base.Add(time.Duration(v)*time.Millisecond)))
	}
	if strings.TrimSpace(out) != strings.TrimSpace(want.String()) {
		t.Errorf("range query:\n%s\nwant\n%s", out, want.String())
	}

	out = run("series", `--match=n`, "--start="+unix(base), "--end="+unix(at))
	series := strings.Split(strings.TrimSpace(out), "\n")
	if len(series) != 10 || !strings.Contains(out, `{__name__="n", device="dev-1", name="Boiler 1", site="berlin"}`) ||
		!strings.Contains(out, `{__name__="n", device="dev-0"}`) {
		t.Errorf("series: %q", out)
	}

	out = run("labels", "device")
	var devs []string
	for i := range 10 {
		devs = append(devs, fmt.Sprintf("dev-%d", i))
	}
	if strings.TrimSpace(out) != strings.Join(devs, "\n") {
		t.Errorf("label values of device: %q", out)
	}
	out = run("labels", "__name__")
	if strings.TrimSpace(out) != "door_info\nn" {
		t.Errorf("metric names: %q", out)
	}
}
