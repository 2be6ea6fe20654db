//go:build !nostorage

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wire"
)

// groupMessage is message i (from 1) of the writer group test: device
// gdev-(i%10), device time base + i ms, payload {"gn":i}.
func groupMessage(i int, base time.Time) []byte {
	return envelope.AppendEncode(nil, &envelope.Envelope{
		Frontend: "fe-group", Device: fmt.Sprintf("gdev-%d", i%10),
		Received: base.Add(time.Hour).UnixNano(), HasDeviceTime: true, DeviceTime: base.Add(time.Duration(i) * time.Millisecond).UnixNano(),
		Payload: fmt.Appendf(nil, `{"gn":%d}`, i),
	})
}

// holdersOf returns the writers a middletier's metrics at addr name as
// holders of group's lease.
func holdersOf(addr, group string) []string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^ingest_middletier_group_holder\{([^}]*)\} 1$`)
	var out []string
	for _, m := range re.FindAllSubmatch(b, -1) {
		if strings.Contains(string(m[1]), `group="`+group+`"`) {
			out = append(out, regexp.MustCompile(`writer="([^"]*)"`).FindStringSubmatch(string(m[1]))[1])
		}
	}
	return out
}

// TestWriterGroupUnderSIGKILL runs three middletiers and two storage
// writers of one group, which remote-write to a real VictoriaMetrics, and a
// third writer of a second group with its own embedded TSDB, all as
// processes. The group's writers divide the three streams (each
// middletier followed by exactly one of them); the writer that holds two
// is killed with SIGKILL while messages flow, and the other takes its
// streams over from their checkpoints. At the end VictoriaMetrics holds
// every acknowledged message exactly once, and so does the second group's
// store.
func TestWriterGroupUnderSIGKILL(t *testing.T) {
	g := startGroup(t)
	victim, survivor, survivorHTTP := g.divided()
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	g.feedKilling(base, victim, survivorHTTP)
	if t.Failed() {
		return
	}
	g.checkOnce(base, survivorHTTP)
	for _, p := range []*tierProc{survivor, g.rep, g.mts[0], g.mts[1], g.mts[2]} {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}
}

// groupMTAddrs are the endpoints of a middletier of the group test.
type groupMTAddrs struct{ ingest, consumer, stream, http string }

// groupRig is three middletiers, two storage writers in the group
// "writers" remote-writing to VictoriaMetrics, and one in the group
// "replica" with an embedded TSDB, all as processes.
type groupRig struct {
	t                     *testing.T
	vm                    *testkit.Store
	mts                   []*tierProc
	addrs                 []groupMTAddrs
	w0, w1, rep           *tierProc
	http0, http1, httpRep string
}

// groupMessages is how many messages the group test sends.
const groupMessages = 30000

func startGroup(t *testing.T) *groupRig {
	g := &groupRig{t: t, vm: testkit.VictoriaMetrics(t)}
	vm := g.vm
	var mts []*tierProc
	var addrs []groupMTAddrs
	for i := range 3 {
		a := groupMTAddrs{
			ingest:   fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
			consumer: fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
			stream:   fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
			http:     fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		}
		addrs = append(addrs, a)
		mts = append(mts, &tierProc{t: t, name: fmt.Sprintf("mt-%d", i), ready: regexp.MustCompile(`msg="middletier listening"`),
			args: []string{"middletier", "--id", fmt.Sprintf("mt-%d", i), "--data.dir", t.TempDir(), "--ingest.addr", a.ingest,
				"--consumer.addr", a.consumer, "--stream.addr", a.stream, "--http.listen", a.http},
			env: []string{"INGEST_CONSUMERS=writers,replica"}})
	}
	var streams, consumers []string
	for _, a := range addrs {
		streams, consumers = append(streams, a.stream), append(consumers, a.consumer)
	}
	regFile := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(regFile, []byte("id,name,site\ngdev-1,Boiler 1,berlin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writer := func(name string, args ...string) (*tierProc, string) {
		httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		return &tierProc{t: t, name: name, ready: regexp.MustCompile(`msg="storage listening"`),
			args: append([]string{"storage", "--http.listen", httpAddr, "--registry.file", regFile, "--self-monitor.interval", "0"}, args...),
			env:  []string{"INGEST_MIDDLETIERS_STREAM=" + strings.Join(streams, ","), "INGEST_MIDDLETIERS_CONSUMER=" + strings.Join(consumers, ",")}}, httpAddr
	}
	sink := "remotewrite+" + vm.URL + "/api/v1/write#name=vm"
	w0, http0 := writer("w-0", "--group", "writers", "--sink", sink)
	w1, http1 := writer("w-1", "--sink", sink)
	w1.env = append(w1.env, "INGEST_GROUP=writers") // the environment twin
	rep, httpRep := writer("replica", "--group", "replica", "--data.dir", t.TempDir())
	procs := append(append([]*tierProc{}, mts...), w0, w1, rep)
	logsOnFailure(t, 25, procs...)
	for _, p := range procs {
		p.start()
	}
	if !strings.Contains(w0.logs.String(), `group=writers`) || !strings.Contains(w1.logs.String(), `group=writers`) {
		t.Fatal("a writer does not log its group")
	}

	g.mts, g.addrs, g.w0, g.w1, g.rep, g.http0, g.http1, g.httpRep = mts, addrs, w0, w1, rep, http0, http1, httpRep
	return g
}

// streamsOf is how many streams the writer serving addr follows.
func streamsOf(addr string) float64 {
	return metricOf("http://"+addr, "ingest_storage_group_streams", "")
}

// divided waits for the group's writers to divide the streams and returns
// the one holding two (the victim), the other and the other's address.
func (g *groupRig) divided() (victim, survivor *tierProc, survivorHTTP string) {
	t, addrs, w0, w1, http0, http1 := g.t, g.addrs, g.w0, g.w1, g.http0, g.http1
	// Each middletier followed by exactly one writer of the group: one
	// holds two streams, the other one.
	testkit.WaitFor(t, "the group's writers to divide the streams", 30*time.Second, func() bool {
		for _, a := range addrs {
			if len(holdersOf(a.http, "writers")) != 1 || len(holdersOf(a.http, "replica")) != 1 {
				return false
			}
		}
		s0, s1 := streamsOf(http0), streamsOf(http1)
		return s0+s1 == 3 && (s0 == 2 || s1 == 2)
	})
	victim, survivor, survivorHTTP = w0, w1, http1
	if streamsOf(http1) == 2 {
		victim, survivor, survivorHTTP = w1, w0, http0
	}
	for _, a := range addrs {
		if w := metricOf("http://"+a.http, "ingest_middletier_group_writers", `group="writers"`); w != 2 {
			t.Errorf("middletier at %s counts %v writers in the group, want 2", a.http, w)
		}
	}

	return victim, survivor, survivorHTTP
}

// feedKilling sends the messages to the three middletiers and SIGKILLs
// victim a third of the way through.
func (g *groupRig) feedKilling(base time.Time, victim *tierProc, survivorHTTP string) {
	t, addrs := g.t, g.addrs
	// Messages flow to the three middletiers, message i to middletier
	// (i-1)%3 as its frontend's entry (i-1)/3+1, acknowledged batch by
	// batch; the victim is killed a third of the way through.
	const n = groupMessages
	var feeders []*mtFeeder
	for _, a := range addrs {
		feeders = append(feeders, newMTFeeder(t, a.ingest))
	}
	var acked atomic.Int64
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 1; i <= n; i += 300 {
			for k, f := range feeders {
				var entries [][]byte
				for j := i; j < i+300 && j <= n; j++ {
					if (j-1)%3 == k {
						entries = append(entries, groupMessage(j, base))
					}
				}
				f.sendEntries(uint64((i-1)/3+1), entries)
			}
			acked.Store(int64(min(i+299, n)))
			time.Sleep(20 * time.Millisecond) // a steady stream, not one burst
		}
	}()
	testkit.WaitFor(t, "a third of the messages acknowledged", 60*time.Second, func() bool { return acked.Load() >= n/3 })
	victim.kill()
	killed := time.Now()
	took := testkit.WaitFor(t, "the survivor to follow every stream", 30*time.Second, func() bool {
		return streamsOf(survivorHTTP) == 3
	})
	t.Logf("the survivor followed every stream %v after the SIGKILL (the spec: within 10s; lease ttl 5s)", took.Round(10*time.Millisecond))
	if d := time.Since(killed); d > 10*time.Second {
		t.Logf("takeover slower than the 10s spec on this machine: %v", d)
	}
	<-sent

}

// checkOnce: every acknowledged message is in VictoriaMetrics and in the
// second group's store, none twice.
func (g *groupRig) checkOnce(base time.Time, survivorHTTP string) {
	t, vm, addrs, httpRep := g.t, g.vm, g.addrs, g.httpRep
	const n = groupMessages
	// Exactly once: every acknowledged message in VictoriaMetrics and in
	// the second group's store, none twice.
	at := base.Add(time.Minute)
	want := fmt.Sprint(n * (n + 1) / 2)
	testkit.Eventually(t, 90*time.Second, "VictoriaMetrics holds every message once", func() (bool, string) {
		c, s := 0, 0
		for _, ss := range testkit.PromRaw(t, vm, `gn`, at, time.Hour) {
			for _, smp := range ss {
				v, _ := strconv.Atoi(smp.V)
				c, s = c+1, s+v
			}
		}
		return c == n && fmt.Sprint(s) == want, fmt.Sprintf("%d samples, sum %d", c, s)
	})
	testkit.Eventually(t, 90*time.Second, "the second group's store holds every message once", func() (bool, string) {
		c, s := promQuery(httpRep, `sum(count_over_time(gn[1h]))`, at), promQuery(httpRep, `sum(sum_over_time(gn[1h]))`, at)
		return c == fmt.Sprint(n) && s == want, c + " samples, sum " + s
	})
	raw := 0
	for _, ss := range testkit.VMExport(t, vm, `gn`) {
		raw += len(ss)
	}
	for _, a := range addrs {
		testkit.Eventually(t, 30*time.Second, "the group counted with one writer", func() (bool, string) {
			w := metricOf("http://"+a.http, "ingest_middletier_group_writers", `group="writers"`)
			return w == 1, fmt.Sprint(w)
		})
	}
	written := metricOf("http://"+survivorHTTP, "ingest_storage_points_written_total", "")
	t.Logf("%d messages stored exactly once in VictoriaMetrics by a group of two writers, one killed (the survivor wrote %v points; VictoriaMetrics export shows %d raw samples) and in the second group's store",
		n, written, raw)
}

// sendEntries sends entries as its frontend's entries from index first, in
// batches of 100, each until acknowledged.
func (f *mtFeeder) sendEntries(first uint64, entries [][]byte) {
	f.t.Helper()
	for len(entries) > 0 {
		n := min(100, len(entries))
		b := wire.Append(nil, &wire.Batch{Origin: "fe-test.0001", First: first, Entries: entries[:n]})
		f.sendBatch(b, first+uint64(n)-1)
		first, entries = first+uint64(n), entries[n:]
	}
}
