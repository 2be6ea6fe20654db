package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
)

// tierProc is a tier running as a process of the ingest binary, which can
// be killed and started again with the same arguments and data.
type tierProc struct {
	t     *testing.T
	name  string
	args  []string
	env   []string
	dir   string         // the working directory; empty: the test's
	ready *regexp.Regexp // a log line that says it is serving
	wrap  []string       // a command the binary runs under (strace and its flags), or nil

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs syncBuf
}

func (p *tierProc) start() {
	p.t.Helper()
	argv := append(append(slices.Clone(p.wrap), binPath), p.args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Dir = p.dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	startWithin := 30 * time.Second
	if p.wrap != nil {
		startWithin = 60 * time.Second // under strace it starts slower
	}
	up := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			p.logs.Write([]byte(p.name + ": " + sc.Text() + "\n"))
			if !signalled && p.ready.MatchString(sc.Text()) {
				close(up)
				signalled = true
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
	}()
	select {
	case <-up:
	case <-done:
		p.t.Fatalf("%s exited at start:\n%s", p.name, p.logs.String())
	case <-time.After(startWithin):
		cmd.Process.Kill()
		<-done
		p.t.Fatalf("%s did not start:\n%s", p.name, p.logs.String())
	}
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
}

// pid is the running process's id.
func (p *tierProc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *tierProc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM and waits; it reports whether the process exited 0.
func (p *tierProc) stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not stop on SIGTERM", p.name)
	}
	if !cmd.ProcessState.Success() {
		return fmt.Errorf("%s exited with %v", p.name, cmd.ProcessState)
	}
	return nil
}

// handedOut holds every port freePort has returned in this process.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// freePort returns a loopback port that was free a moment ago and that it
// has not returned before: the kernel may hand a port just closed out
// again, and a test that picks several ports before starting the processes
// that bind them would then give two of them the same one.
func freePort(t *testing.T) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
}

// TestPipelineUnderSIGKILL runs two frontends and two middletiers as
// processes, with devices streaming through the device client, and kills a
// random process with SIGKILL every second or so, restarting it. At the end
// every message any device saw acknowledged is in a middletier's stream,
// and no middletier's stream holds an entry (by identity) twice.
func TestPipelineUnderSIGKILL(t *testing.T) {
	chaos := 20 * time.Second
	if testing.Short() {
		chaos = 5 * time.Second
	}
	const devices = 20
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}

	var mts []*tierProc
	var mtIngest []string
	var mtDirs []string
	for i := range 2 {
		dir := t.TempDir()
		ing := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
		mtIngest = append(mtIngest, ing)
		mtDirs = append(mtDirs, dir)
		mts = append(mts, &tierProc{t: t, name: fmt.Sprintf("mt-%d", i), ready: regexp.MustCompile(`msg="middletier listening"`),
			args: []string{"middletier", "--id", fmt.Sprintf("mt-%d", i), "--data.dir", dir,
				"--ingest.addr", ing,
				"--consumer.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
				"--stream.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
				"--http.listen", "127.0.0.1:0",
				// A durable consumer that never commits: the WAL keeps every
				// record for the check at the end.
				"--consumers", "audit"}})
	}
	// The second of each tier runs its WAL with segments that grow as they
	// are written, so both layouts are killed and recovered.
	mts[1].args = append(mts[1].args, "--wal.no-preallocate")
	var feDirs []string
	var fes []*tierProc
	var feAddrs []string
	for i := range 2 {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		feAddrs = append(feAddrs, addr)
		// The list in two orders: each frontend ranks it by its id.
		order := []string{mtIngest[i], mtIngest[1-i]}
		fes = append(fes, &tierProc{t: t, name: fmt.Sprintf("fe-%d", i), ready: regexp.MustCompile(`msg="frontend listening"`),
			args: []string{"frontend", "--listen", addr, "--id", fmt.Sprintf("fe-%d", i), "--drain-window", "200ms",
				"--uplink.middletiers", strings.Join(order, ","), "--uplink.failover", "2s", "--uplink.flush-timeout", "1s"},
			env: []string{"INGEST_WAL_DIR=" + t.TempDir(), "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile}})
		feDirs = append(feDirs, strings.TrimPrefix(fes[i].env[0], "INGEST_WAL_DIR="))
	}
	fes[1].env = append(fes[1].env, "INGEST_WAL_NO_PREALLOCATE=true")
	procs := append(append([]*tierProc{}, mts...), fes...)
	for _, p := range procs {
		p.start()
	}
	defer func() {
		if t.Failed() {
			for _, p := range procs {
				t.Logf("logs of %s (tail):\n%s", p.name, tail(p.logs.String(), 30))
			}
		}
	}()

	// Devices stream to the frontends until the chaos ends.
	var (
		mu    sync.Mutex
		acked = map[string]map[uint64]bool{}
	)
	ctx, stopSending := context.WithCancel(context.Background())
	var senders sync.WaitGroup
	var clients []*client.Client
	clientLogs := make([]*syncBuf, devices)
	for d := range devices {
		acked[fmt.Sprintf("dev-%02d", d)] = map[uint64]bool{}
		clientLogs[d] = &syncBuf{}
	}
	for d := range devices {
		dev := fmt.Sprintf("dev-%02d", d)
		c, err := client.Dial(context.Background(), client.Options{
			URL: "ws://" + feAddrs[d%2] + "/v1/ingest", Token: token(t, dev), Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(clientLogs[d], &slog.HandlerOptions{Level: slog.LevelDebug})),
			OnResult: func(r client.Result) {
				if r.Err == nil {
					mu.Lock()
					acked[dev][r.N] = true
					mu.Unlock()
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		senders.Go(func() {
			for i := 1; ctx.Err() == nil; i++ {
				if _, err := c.Send(ctx, fmt.Appendf(nil, `{"id":%d,"v":%d}`, i, d)); err != nil {
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}

	// Chaos: kill a random tier every 0.5 to 1.5 s and start it again.
	kills := map[string]int{}
	end := time.Now().Add(chaos)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond)
		p := procs[rand.IntN(len(procs))]
		p.kill()
		kills[p.name]++
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		p.start()
	}
	stopSending()
	senders.Wait()

	// Every device's messages end up acknowledged (the client resends what
	// was not), and the frontends forward everything.
	for d, c := range clients {
		fctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := c.Flush(fctx); err != nil {
			t.Errorf("flush of dev-%02d: %v; %d messages without a result; its log (tail):\n%s",
				d, err, c.Pending(), tail(clientLogs[d].String(), 20))
		}
		cancel()
		c.Close()
	}
	for i, addr := range feAddrs {
		deadline := time.Now().Add(60 * time.Second)
		for queueDepth(t, addr) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("fe-%d still holds unforwarded entries", i)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, p := range procs {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}

	// The first of each tier kept a preallocated spare segment; the second,
	// told not to, none.
	for i, dir := range []string{filepath.Join(mtDirs[0], "wal"), filepath.Join(mtDirs[1], "wal"), feDirs[0], feDirs[1]} {
		_, err := os.Stat(filepath.Join(dir, "segment.spare"))
		if prealloc := i%2 == 0; prealloc != (err == nil) {
			t.Errorf("%s: spare segment %v with preallocation %v", dir, err, prealloc)
		}
	}

	// The check: every acknowledged message is in some middletier, and no
	// middletier holds an identity twice.
	stored := map[string]map[uint64]bool{}
	total := 0
	for i, dir := range mtDirs {
		n := 0
		for id, count := range readStream(t, filepath.Join(dir, "wal"), stored) {
			if count > 1 {
				t.Fatalf("mt-%d holds %s %d times", i, id, count)
			}
			n++
		}
		t.Logf("mt-%d: %d records", i, n)
		total += n
	}
	nAcked := 0
	for dev, ids := range acked {
		for id := range ids {
			nAcked++
			if !stored[dev][id] {
				t.Fatalf("%s message %d was acknowledged and is in no middletier", dev, id)
			}
		}
	}
	t.Logf("kills %v; %d messages acknowledged, all stored; %d records in the middletiers", kills, nAcked, total)
	if nAcked < 1000 {
		t.Fatalf("only %d messages acknowledged", nAcked)
	}
}

// readStream reads a middletier's WAL: it counts each record's identity,
// and marks each message (device, id) in stored.
func readStream(t *testing.T, dir string, stored map[string]map[uint64]bool) map[string]int {
	t.Helper()
	l, err := wal.Open(dir, wal.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ids := map[string]int{}
	if l.LastIndex() < l.FirstIndex() {
		return ids
	}
	c, err := l.Cursor(l.FirstIndex())
	if err != nil {
		t.Fatal(err)
	}
	for i := l.FirstIndex(); i <= l.LastIndex(); i++ {
		e, err := c.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		rec, err := wire.DecodeRecord(e.Data)
		if err != nil {
			t.Fatal(err)
		}
		ids[rec.Origin+"/"+strconv.FormatUint(rec.Index, 10)]++
		env, err := envelope.Decode(rec.Data)
		if err != nil {
			t.Fatalf("record %d: %v", e.Index, err)
		}
		var m struct{ ID uint64 }
		if err := json.Unmarshal(env.Payload, &m); err != nil {
			t.Fatal(err)
		}
		if stored[env.Device] == nil {
			stored[env.Device] = map[uint64]bool{}
		}
		stored[env.Device][m.ID] = true
	}
	return ids
}

var depthRE = regexp.MustCompile(`(?m)^ingest_queue_depth_entries\{hop="frontend"\} (\S+)$`)

// queueDepth reads the frontend's WAL depth from its metrics.
func queueDepth(t *testing.T, addr string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := depthRE.FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
