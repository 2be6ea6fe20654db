package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
)

// What the end-to-end tests share: the tiers as processes on free ports,
// devices whose acknowledgements are recorded, and the checks of what the
// WALs hold against what the devices saw acknowledged.

// loopback is a free loopback address, host:port.
func loopback(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }

// endpoint is a free loopback zmq endpoint, tcp://host:port.
func endpoint(t *testing.T) string { return "tcp://" + loopback(t) }

// frontendProc is `ingest frontend` as a process with id id on listen, its
// WAL in walDir, its devices' tokens checked against secretFile; flags come
// after the defaults, and a flag given again overrides its default.
func frontendProc(t *testing.T, id, listen, walDir, secretFile string, flags ...string) *tierProc {
	return &tierProc{t: t, name: id, ready: regexp.MustCompile(`msg="frontend listening"`),
		args: append([]string{"frontend", "--listen", listen, "--id", id, "--drain-window", "200ms"}, flags...),
		env:  []string{"INGEST_WAL_DIR=" + walDir, "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile}}
}

// mtProc is `ingest middletier` as a process, and the endpoints it binds.
type mtProc struct {
	*tierProc
	dir                            string // its --data.dir
	ingest, consumer, stream, http string
}

// middletierProc is `ingest middletier` with id id and its data in dir,
// its sockets and its HTTP listener on free ports; flags come after.
func middletierProc(t *testing.T, id, dir string, flags ...string) *mtProc {
	m := &mtProc{dir: dir, ingest: endpoint(t), consumer: endpoint(t), stream: endpoint(t), http: loopback(t)}
	m.tierProc = &tierProc{t: t, name: id, ready: regexp.MustCompile(`msg="middletier listening"`),
		args: append([]string{"middletier", "--id", id, "--data.dir", dir, "--ingest.addr", m.ingest,
			"--consumer.addr", m.consumer, "--stream.addr", m.stream, "--http.listen", m.http}, flags...)}
	return m
}

// engine is `ingest all` as a process, and the listeners it serves on.
type engine struct {
	*tierProc
	addr, feedAddr, queryAddr string // devices, live feed, query API
}

// allProc is `ingest all` without auth, its data in a directory of the
// test's, its listeners on free ports (MQTT on any); env is added to its
// environment, flags come after.
func allProc(t *testing.T, env []string, flags ...string) *engine {
	e := &engine{addr: loopback(t), feedAddr: loopback(t), queryAddr: loopback(t)}
	e.tierProc = &tierProc{t: t, name: "all", ready: regexp.MustCompile(`msg="engine running`), env: env,
		args: append([]string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", e.addr,
			"--feed.listen", e.feedAddr, "--storage.http.listen", e.queryAddr, "--mqtt.listen", "127.0.0.1:0"}, flags...)}
	return e
}

// startAll starts allProc(t, env, flags...).
func startAll(t *testing.T, env []string, flags ...string) *engine {
	e := allProc(t, env, flags...)
	e.start()
	logsOnFailure(t, 100, e.tierProc)
	return e
}

// stopOrFail stops p with SIGTERM and fails the test with its logs if it
// does not exit 0.
func stopOrFail(t *testing.T, p *tierProc) {
	t.Helper()
	if err := p.stop(); err != nil {
		t.Fatalf("%v; logs:\n%s", err, p.logs.String())
	}
}

// stopAll stops each of procs with SIGTERM; one that does not exit 0 is
// an error of the test.
func stopAll(t *testing.T, procs ...*tierProc) {
	t.Helper()
	for _, p := range procs {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}
}

// logsOnFailure logs the last lines of each process's logs when the test
// has failed.
func logsOnFailure(t *testing.T, lines int, procs ...*tierProc) {
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range procs {
				t.Logf("logs of %s (tail):\n%s", p.name, tail(p.logs.String(), lines))
			}
		}
	})
}

// chaos kills a random one of procs every 0.5 to 1.5 s for d, starting it
// again after up to 0.3 s, and returns how often it killed each.
func chaos(procs []*tierProc, d time.Duration) map[string]int {
	return chaosPicking(func(int) *tierProc { return procs[rand.IntN(len(procs))] }, d)
}

// chaosPicking kills pick(n) for the nth kill every 0.5 to 1.5 s for d,
// starting it again after up to 0.3 s, and returns how often it killed
// each.
func chaosPicking(pick func(n int) *tierProc, d time.Duration) map[string]int {
	kills := map[string]int{}
	end := time.Now().Add(d)
	for n := 0; time.Now().Before(end); n++ {
		time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond) // the chaos's pace, not a wait for a condition
		p := pick(n)
		p.kill()
		kills[p.name]++
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		p.start()
	}
	return kills
}

// deviceIDs are dev-00, dev-01, … dev-(n-1).
func deviceIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%02d", prefix, i)
	}
	return ids
}

// acks records, per device, the numbers of the messages the engine
// acknowledged.
type acks struct {
	mu  sync.Mutex
	ids map[string]map[uint64]bool
	n   atomic.Int64
}

// newAcks records the acknowledgements of devices, each of which is in
// every snapshot, with none yet.
func newAcks(devices []string) *acks {
	a := &acks{ids: map[string]map[uint64]bool{}}
	for _, d := range devices {
		a.ids[d] = map[uint64]bool{}
	}
	return a
}

func (a *acks) add(device string, n uint64) {
	a.mu.Lock()
	a.ids[device][n] = true
	a.mu.Unlock()
	a.n.Add(1)
}

// onResult is a client's OnResult that records device's acknowledgements.
func (a *acks) onResult(device string) func(client.Result) {
	return func(r client.Result) {
		if r.Err == nil {
			a.add(device, r.N)
		}
	}
}

// count is how many acknowledgements there have been.
func (a *acks) count() int64 { return a.n.Load() }

// snapshot is a copy of what has been acknowledged so far.
func (a *acks) snapshot() map[string]map[uint64]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]map[uint64]bool, len(a.ids))
	for d, ids := range a.ids {
		out[d] = maps.Clone(ids)
	}
	return out
}

// dialDevices connects a device client for each of devices, with the
// options opts gives for the device's index and id, its token signed with
// the test secret and its acknowledgements recorded in a. The clients are
// closed when the test ends.
func dialDevices(t *testing.T, a *acks, devices []string, opts func(d int, dev string) client.Options) []*client.Client {
	t.Helper()
	var clients []*client.Client
	for d, dev := range devices {
		o := opts(d, dev)
		o.Token, o.OnResult = token(t, dev), a.onResult(dev)
		c, err := client.Dial(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
	}
	return clients
}

// sendUntil sends messages 1, 2, … from c, payload(i) each, a pause apart,
// until ctx ends or a send fails.
func sendUntil(ctx context.Context, c *client.Client, pause time.Duration, payload func(i int) []byte) {
	for i := 1; ctx.Err() == nil; i++ {
		if _, err := c.Send(ctx, payload(i)); err != nil {
			return
		}
		time.Sleep(pause) // the devices' pace, not a wait for a condition
	}
}

// flushAll waits up to a minute for each client's messages to have their
// results; a client whose do not is an error of the test, said with what
// detail says of its device.
func flushAll(t *testing.T, clients []*client.Client, detail func(d int) string) {
	t.Helper()
	for d, c := range clients {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := c.Flush(ctx); err != nil {
			t.Errorf("flush of device %d: %v; %d messages without a result%s", d, err, c.Pending(), detail(d))
		}
		cancel()
	}
}

// checkAckedStored fails the test unless every message in acked is in
// stored, which says where it looked.
func checkAckedStored(t *testing.T, acked, stored map[string]map[uint64]bool, where string) int {
	t.Helper()
	n := 0
	for dev, ids := range acked {
		for id := range ids {
			n++
			if !stored[dev][id] {
				t.Fatalf("%s message %d was acknowledged and is not in %s", dev, id, where)
			}
		}
	}
	return n
}

// checkOrder fails the test unless every device of acked had all of its
// perDevice messages acknowledged, and order (what the WAL holds of each
// device, in WAL order) holds the first copy of each message in order.
func checkOrder(t *testing.T, acked map[string]map[uint64]bool, order map[string][]uint64, perDevice int) {
	t.Helper()
	for dev, ids := range acked {
		if len(ids) != perDevice {
			t.Fatalf("%s: %d acknowledged, want %d", dev, len(ids), perDevice)
		}
		seen := map[uint64]int{}
		var last uint64
		for _, id := range order[dev] {
			seen[id]++
			if seen[id] > 1 {
				continue // a resend of a message whose ack was lost: allowed
			}
			if id != last+1 {
				t.Fatalf("%s: message %d first stored after %d: order broken", dev, id, last)
			}
			last = id
		}
		if last != uint64(perDevice) {
			t.Fatalf("%s: %d stored, want %d", dev, last, perDevice)
		}
	}
}

// storedOnce reads the WAL of middletier m (readStream), marking each
// message in stored, and fails the test if it holds a record twice. It
// returns how many records it holds.
func storedOnce(t *testing.T, m *mtProc, stored map[string]map[uint64]bool) int {
	t.Helper()
	n := 0
	for id, count := range readStream(t, filepath.Join(m.dir, "wal"), stored) {
		if count > 1 {
			t.Fatalf("%s holds %s %d times", m.name, id, count)
		}
		n++
	}
	return n
}

// killMidStream waits until a quarter of total messages are acknowledged
// (acked names how, in the wait's description; acks in the log line), kills
// p with SIGKILL and returns what had been acknowledged by then.
func killMidStream(t *testing.T, p *tierProc, a *acks, total int, acked, acks string) map[string]map[uint64]bool {
	t.Helper()
	testkit.WaitFor(t, "a quarter of the messages "+acked+" before the kill", 30*time.Second, func() bool {
		return a.count() >= int64(total/4)
	})
	p.kill()
	at := a.snapshot()
	t.Logf("killed after %d %s", a.count(), acks)
	return at
}

// soak is how long a test under faults runs: d, or 5 seconds with -short.
func soak(d time.Duration) time.Duration {
	if testing.Short() {
		return 5 * time.Second
	}
	return d
}
