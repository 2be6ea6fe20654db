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

func storageTiers(t *testing.T) (mt, st *tierProc, ingest, httpAddr string) {
	t.Helper()
	ingest = fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	cons := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	stream := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	httpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	mt = &tierProc{t: t, name: "mt", ready: regexp.MustCompile(`msg="middletier listening"`),
		args: []string{"middletier", "--id", "mt-0", "--data.dir", t.TempDir(), "--ingest.addr", ingest,
			"--consumer.addr", cons, "--stream.addr", stream, "--http.listen", "127.0.0.1:0", "--consumers", "storage"}}
	regFile := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(regFile, []byte("id,name,site\ndev-1,Boiler 1,berlin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st = &tierProc{t: t, name: "storage", ready: regexp.MustCompile(`msg="storage listening"`),
		// Without the engine's own metrics (TestSelfMonitoring has them), so
		// that the store holds the devices' series alone.
		args: []string{"storage", "--data.dir", t.TempDir(), "--http.listen", httpAddr, "--registry.file", regFile, "--self-monitor.interval", "0"},
		env:  []string{"INGEST_MIDDLETIERS_STREAM=" + stream, "INGEST_MIDDLETIERS_CONSUMER=" + cons}}
	return mt, st, ingest, httpAddr
}

// TestStorageUnderSIGKILL streams messages through a middletier to a
// storage writer that is killed with SIGKILL again and again while it
// writes, and started again. At the end the store holds every message
// exactly once.
func TestStorageUnderSIGKILL(t *testing.T) {
	mt, st, ingest, httpAddr := storageTiers(t)
	mt.start()
	st.start()
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s\n%s", tail(mt.logs.String(), 30), tail(st.logs.String(), 60))
		}
	}()
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
	deadline := time.Now().Add(60 * time.Second)
	for promQuery(httpAddr, `sum(count_over_time(n[1h]))`, at) != fmt.Sprint(n) {
		if time.Now().After(deadline) {
			t.Fatalf("store holds %q samples of n, want %d", promQuery(httpAddr, `sum(count_over_time(n[1h]))`, at), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	if err := st.stop(); err != nil {
		t.Error(err)
	}
	if err := mt.stop(); err != nil {
		t.Error(err)
	}
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
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (make deps)")
	}
	mt, st, ingest, httpAddr := storageTiers(t)
	mt.start()
	st.start()
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s\n%s", tail(mt.logs.String(), 30), tail(st.logs.String(), 30))
		}
	}()
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	newMTFeeder(t, ingest).send(1, 101, base) // messages 1..100, 1 ms apart
	at := base.Add(time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for promQuery(httpAddr, `sum(count_over_time(n[1h]))`, at) != "100" {
		if time.Now().After(deadline) {
			t.Fatal("messages not stored")
		}
		time.Sleep(20 * time.Millisecond)
	}
	server := "http://" + httpAddr
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(promtool, append([]string{"query"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool query %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// As promtool prints times: seconds, with the milliseconds if any.
	unix := func(t time.Time) string { return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', -1, 64) }

	// Message 91 is dev-1's last: n 91 at base+91ms, with its registry labels.
	out := run("instant", server, `n{device="dev-1"}`, "--time="+unix(at))
	if want := `n{device="dev-1", name="Boiler 1", site="berlin"} => 91 @[` + unix(at) + `]`; strings.TrimSpace(out) != want {
		t.Errorf("instant query: %q, want %q", out, want)
	}
	out = run("instant", server, `sum(n)`, "--time="+unix(at))
	if want := fmt.Sprintf(`{} => %d @[%s]`, 91+92+93+94+95+96+97+98+99+100, unix(at)); strings.TrimSpace(out) != want {
		t.Errorf("instant sum: %q, want %q", out, want)
	}
	out = run("instant", server, `door_info{device="dev-2"}`, "--time="+unix(at))
	if !strings.Contains(out, `door_info{device="dev-2", value="closed"} => 1`) || strings.Contains(out, `"open"`) {
		t.Errorf("string field: %q", out)
	}

	// dev-3 sent 3, 13, …, 93 at base+3ms, +13ms, …: one step per 10 ms.
	out = run("range", server, `n{device="dev-3"}`, "--start="+unix(base.Add(3*time.Millisecond)),
		"--end="+unix(base.Add(93*time.Millisecond)), "--step=10ms")
	var want strings.Builder
	want.WriteString(`n{device="dev-3"} =>` + "\n")
	for v := 3; v <= 93; v += 10 {
		fmt.Fprintf(&want, "%d @[%s]\n", v, unix(base.Add(time.Duration(v)*time.Millisecond)))
	}
	if strings.TrimSpace(out) != strings.TrimSpace(want.String()) {
		t.Errorf("range query:\n%s\nwant\n%s", out, want.String())
	}

	out = run("series", server, `--match=n`, "--start="+unix(base), "--end="+unix(at))
	series := strings.Split(strings.TrimSpace(out), "\n")
	if len(series) != 10 || !strings.Contains(out, `{__name__="n", device="dev-1", name="Boiler 1", site="berlin"}`) ||
		!strings.Contains(out, `{__name__="n", device="dev-0"}`) {
		t.Errorf("series: %q", out)
	}

	out = run("labels", server, "device")
	var devs []string
	for i := range 10 {
		devs = append(devs, fmt.Sprintf("dev-%d", i))
	}
	if strings.TrimSpace(out) != strings.Join(devs, "\n") {
		t.Errorf("label values of device: %q", out)
	}
	out = run("labels", server, "__name__")
	if strings.TrimSpace(out) != "door_info\nn" {
		t.Errorf("metric names: %q", out)
	}
	if err := st.stop(); err != nil {
		t.Error(err)
	}
	if err := mt.stop(); err != nil {
		t.Error(err)
	}
}
