//go:build !nostorage

package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/uplink"
)

// TestScaleOutUnderSIGKILL runs the engine scaled out, every part a
// process on loopback: three frontends, three middletiers and two storage
// writers of one group remote-writing to a real VictoriaMetrics, with
// devices sending through the device client. While every process is up,
// each frontend forwards to its first choice, each middletier carries a
// third of the traffic (±20 %, from the middletiers' own counters) and the
// writers divide the three streams two and one. Then a frontend, a
// middletier and a writer in turn, each picked at random, are SIGKILLed at
// random instants and started again. At the end every message a device
// saw acknowledged is in VictoriaMetrics exactly once, and nothing else
// is. The test logs the share each middletier and each writer carried,
// while all were up and over the whole run.
func TestScaleOutUnderSIGKILL(t *testing.T) {
	d := 20 * time.Second
	if testing.Short() {
		d = 8 * time.Second
	}
	r := startScaleOut(t)
	ids := deviceIDs("sdev", 12)
	a := newAcks(ids)
	// Four devices per frontend, each sending every 10 ms.
	clients := dialDevices(t, a, ids, func(d int, _ string) client.Options {
		return client.Options{URL: "ws://" + r.feAddrs[d%len(r.feAddrs)] + "/v1/ingest", Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}
	})
	ctx, stopSending := context.WithCancel(context.Background())
	var senders sync.WaitGroup
	for _, c := range clients {
		senders.Go(func() { sendUntil(ctx, c, 10*time.Millisecond, r.message) })
	}
	r.settled()
	whole := r.tally()
	r.checkShares()

	kills := chaosByKind(map[string][]*tierProc{"frontend": r.fes, "middletier": r.mtProcs(), "writer": r.writers}, d)
	stopSending()
	senders.Wait()
	flushAll(t, clients, func(int) string { return "" })
	for i, addr := range r.feAddrs {
		testkit.WaitFor(t, r.feIDs[i]+" forwarded everything", 60*time.Second, func() bool { return queueDepth(t, addr) == 0 })
	}
	r.checkStoredOnce(a.snapshot())
	whole.stop()
	t.Logf("kills %v; over the whole run (counters summed across restarts; a writer's includes what it wrote again after a takeover): %s",
		kills, whole.shares())
	stopAll(t, append(append(append([]*tierProc{}, r.fes...), r.writers...), r.mtProcs()...)...)
}

// scaleOut is three middletiers, three frontends (each middletier the
// first choice of one) and two storage writers in the group "writers"
// remote-writing to VictoriaMetrics, all as processes.
type scaleOut struct {
	t              *testing.T
	vm             *testkit.Store
	base           int64 // device time of message 0, ms
	window         time.Duration
	mts            []*mtProc
	mtIngest       []string
	fes            []*tierProc
	feIDs, feAddrs []string
	writers        []*tierProc
	writerHTTP     []string
}

func startScaleOut(t *testing.T) *scaleOut {
	r := &scaleOut{t: t, vm: testkit.VictoriaMetrics(t), base: time.Now().Add(-30 * time.Minute).UnixMilli(), window: 8 * time.Second}
	if testing.Short() {
		r.window = 4 * time.Second
	}
	var streams, consumers []string
	for i := range 3 {
		m := middletierProc(t, fmt.Sprintf("mt-%d", i), t.TempDir(), "--consumers", "writers")
		r.mts, r.mtIngest = append(r.mts, m), append(r.mtIngest, m.ingest)
		streams, consumers = append(streams, m.stream), append(consumers, m.consumer)
	}
	// Three frontends, each middletier the first choice of one: what is
	// measured is where the uplinks send, not the luck of a draw of three
	// names (docs/scaling.md).
	secretFile, taken := writeSecret(t), map[string]bool{}
	for i := 0; len(r.feIDs) < 3; i++ {
		id := fmt.Sprintf("fe-%d", i)
		if first := uplink.Rank(id, r.mtIngest)[0]; !taken[first] {
			taken[first] = true
			addr := loopback(t)
			r.feIDs, r.feAddrs = append(r.feIDs, id), append(r.feAddrs, addr)
			r.fes = append(r.fes, frontendProc(t, id, addr, t.TempDir(), secretFile, "--uplink.middletiers", strings.Join(r.mtIngest, ","),
				"--uplink.failover", "2s", "--uplink.return", "1s", "--uplink.flush-timeout", "1s"))
		}
	}
	// w-0 keeps its member name across restarts (a StatefulSet's pod) and
	// takes its streams back at once; w-1 comes back under a new name (a
	// Deployment's pod), so its streams wait for its lease to run out.
	sink := "remotewrite+" + r.vm.URL + "/api/v1/write#name=vm"
	for i, member := range [][]string{{"--group.member", "w-0"}, nil} {
		httpAddr := loopback(t)
		r.writerHTTP = append(r.writerHTTP, httpAddr)
		r.writers = append(r.writers, &tierProc{t: t, name: fmt.Sprintf("w-%d", i), ready: regexp.MustCompile(`msg="storage listening"`),
			args: append([]string{"storage", "--group", "writers", "--sink", sink, "--http.listen", httpAddr, "--self-monitor.interval", "0"}, member...),
			env:  []string{"INGEST_MIDDLETIERS_STREAM=" + strings.Join(streams, ","), "INGEST_MIDDLETIERS_CONSUMER=" + strings.Join(consumers, ",")}})
	}
	procs := append(append(r.mtProcs(), r.writers...), r.fes...)
	for _, p := range procs {
		p.start()
	}
	logsOnFailure(t, 30, procs...)
	return r
}

func (r *scaleOut) mtProcs() []*tierProc {
	var out []*tierProc
	for _, m := range r.mts {
		out = append(out, m.tierProc)
	}
	return out
}

// message is a device's message i: its number as the sample seq, at a
// device time of its own, so that a message delivered twice is the same
// sample.
func (r *scaleOut) message(i int) []byte {
	return fmt.Appendf(nil, `{"id":%d,"ts":%d,"seq":%d}`, i, r.base+int64(i), i)
}

// settled waits for every frontend to forward to its first choice and for
// the writers to divide the streams, each middletier's followed by one.
func (r *scaleOut) settled() {
	t := r.t
	for fe, id := range r.feIDs {
		ep := uplink.Rank(id, r.mtIngest)[0]
		testkit.WaitFor(t, id+" on its first choice", 30*time.Second, func() bool {
			return scrape(t, r.feAddrs[fe], `ingest_uplink_connected{middletier="`+ep+`"}`) == 1
		})
	}
	testkit.WaitFor(t, "the writers to divide the streams", 30*time.Second, func() bool {
		for _, m := range r.mts {
			if len(holdersOf(m.http, "writers")) != 1 {
				return false
			}
		}
		s0, s1 := streamsOf(r.writerHTTP[0]), streamsOf(r.writerHTTP[1])
		return s0+s1 == 3 && s0 >= 1 && s1 >= 1
	})
	time.Sleep(time.Second) // past the first connections' catch-up
}

// counters reads what each middletier appended and each writer wrote.
func (r *scaleOut) counters() (names []string, values []float64) {
	for _, m := range r.mts {
		names = append(names, m.name)
		values = append(values, metricOf("http://"+m.http, "ingest_middletier_entries_total", ""))
	}
	for i, w := range r.writers {
		names = append(names, w.name)
		values = append(values, metricOf("http://"+r.writerHTTP[i], "ingest_storage_points_written_total", `sink="vm"`))
	}
	return names, values
}

// checkShares measures, over the window, the share of the entries each
// middletier appended and of the points each writer wrote: each middletier
// must carry 1/3 ±20 %.
func (r *scaleOut) checkShares() {
	t := r.t
	names, before := r.counters()
	time.Sleep(r.window) // the span measured over, not a wait for a condition
	_, after := r.counters()
	delta := make([]float64, len(names))
	for i := range names {
		if before[i] < 0 || after[i] < 0 {
			t.Fatalf("%s: no counter in its metrics", names[i])
		}
		delta[i] = after[i] - before[i]
	}
	mt, wr := delta[:3], delta[3:]
	t.Logf("all up, over %v: %s; writers' streams: w-0 %v, w-1 %v", r.window, shareLine(names, delta),
		streamsOf(r.writerHTTP[0]), streamsOf(r.writerHTTP[1]))
	for i, s := range fractions(mt) {
		if s < 0.8/3 || s > 1.2/3 {
			t.Errorf("%s carried %.3f of the traffic while all were up, want 1/3 ±20 %%", names[i], s)
		}
	}
	for i, s := range fractions(wr) {
		if s == 0 {
			t.Errorf("%s wrote nothing while all were up", names[3+i])
		}
	}
}

// fractions is each of v over their sum.
func fractions(v []float64) []float64 {
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	out := make([]float64, len(v))
	for i, x := range v {
		if sum > 0 {
			out[i] = x / sum
		}
	}
	return out
}

// shareLine formats the middletiers' shares of their sum and the writers'
// of theirs.
func shareLine(names []string, v []float64) string {
	var b strings.Builder
	for k, part := range [][]float64{v[:3], v[3:]} {
		kind := map[int]string{0: "entries appended", 1: "points written"}[k]
		total := 0.0
		for _, x := range part {
			total += x
		}
		fmt.Fprintf(&b, "%s%.0f %s:", map[bool]string{true: "; ", false: ""}[k > 0], total, kind)
		for i, s := range fractions(part) {
			fmt.Fprintf(&b, " %s %.3f", names[3*k+i], s)
		}
	}
	return b.String()
}

// tally sums the processes' counters across their restarts, scraping them
// every 200 ms: a counter lower than its last reading started again.
type tally struct {
	r      *scaleOut
	mu     sync.Mutex
	names  []string
	sum    []float64
	last   []float64
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *scaleOut) tally() *tally {
	names, last := r.counters()
	ctx, cancel := context.WithCancel(context.Background())
	w := &tally{r: r, names: names, sum: make([]float64, len(names)), last: last, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond) // the scrape interval
			w.read()
		}
	}()
	return w
}

func (w *tally) read() {
	_, now := w.r.counters()
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, v := range now {
		switch {
		case v < 0: // down
		case v < w.last[i]:
			w.sum[i] += v
			w.last[i] = v
		default:
			w.sum[i] += v - w.last[i]
			w.last[i] = v
		}
	}
}

func (w *tally) stop() {
	w.cancel()
	<-w.done
	w.read()
}

func (w *tally) shares() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return shareLine(w.names, w.sum)
}

// chaosByKind kills, every 0.5 to 1.5 s for d, a random process of each
// kind in turn with SIGKILL, starting it again after up to 0.3 s, and
// returns how often it killed each.
func chaosByKind(kinds map[string][]*tierProc, d time.Duration) map[string]int {
	order := slices.Sorted(maps.Keys(kinds))
	return chaosPicking(func(n int) *tierProc {
		procs := kinds[order[n%len(order)]]
		return procs[rand.IntN(len(procs))]
	}, d)
}

var seqDevice = regexp.MustCompile(`device="([^"]*)"`)

// vmSeq reads every seq sample VictoriaMetrics holds (one per series and
// time), per device and value: how many samples have it.
func (r *scaleOut) vmSeq() map[string]map[uint64]int {
	out := map[string]map[uint64]int{}
	for k, ss := range testkit.PromRaw(r.t, r.vm, `seq`, time.Now(), time.Hour) {
		m := seqDevice.FindStringSubmatch(k)
		if m == nil {
			r.t.Fatalf("a seq series without a device: %s", k)
		}
		if out[m[1]] == nil {
			out[m[1]] = map[uint64]int{}
		}
		for _, s := range ss {
			v, _ := strconv.ParseUint(s.V, 10, 64)
			out[m[1]][v]++
		}
	}
	return out
}

// checkStoredOnce waits for VictoriaMetrics to hold every acknowledged
// message, then fails the test unless each is there exactly once and
// nothing else is.
func (r *scaleOut) checkStoredOnce(acked map[string]map[uint64]bool) {
	t := r.t
	want := 0
	for _, ids := range acked {
		want += len(ids)
	}
	var got map[string]map[uint64]int
	testkit.Eventually(t, 90*time.Second, "VictoriaMetrics holds every acknowledged message", func() (bool, string) {
		got = r.vmSeq()
		n := 0
		for dev, ids := range acked {
			for id := range ids {
				if got[dev][id] > 0 {
					n++
				}
			}
		}
		return n == want, fmt.Sprintf("%d of %d", n, want)
	})
	stored := 0
	for dev, vs := range got {
		for v, c := range vs {
			stored += c
			if c != 1 || !acked[dev][v] {
				t.Errorf("%s message %d: %d samples in VictoriaMetrics, acknowledged %v", dev, v, c, acked[dev][v])
			}
		}
	}
	raw := 0
	for _, ss := range testkit.VMExport(t, r.vm, `seq`) {
		raw += len(ss)
	}
	t.Logf("%d messages acknowledged, %d samples in VictoriaMetrics (%d in its raw export)", want, stored, raw)
	if want < 3000 {
		t.Errorf("only %d messages acknowledged", want)
	}
}
