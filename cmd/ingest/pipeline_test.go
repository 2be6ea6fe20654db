package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/ingest-io/ingest/internal/freeport"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
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
	first := p.cmd == nil
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	if first {
		p.t.Cleanup(p.kill) // what the test left running
	}
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

// freePort returns a loopback port for a process the test starts: see
// package freeport.
func freePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPipelineUnderSIGKILL runs two frontends and two middletiers as
// processes, with devices streaming through the device client, and kills a
// random process with SIGKILL every second or so, restarting it. At the end
// every message any device saw acknowledged is in a middletier's stream,
// and no middletier's stream holds an entry (by identity) twice.
func TestPipelineUnderSIGKILL(t *testing.T) {
	d := soak(20 * time.Second)
	const devices = 20
	mts, fes := pipelineTiers(t)
	procs := []*tierProc{mts[0].tierProc, mts[1].tierProc, fes[0].tierProc, fes[1].tierProc}
	for _, p := range procs {
		p.start()
	}
	logsOnFailure(t, 30, procs...)

	// Devices stream to the frontends until the chaos ends.
	ids := deviceIDs("dev", devices)
	acked := newAcks(ids)
	clientLogs := make([]*syncBuf, devices)
	clients := dialDevices(t, acked, ids, func(d int, _ string) client.Options {
		clientLogs[d] = &syncBuf{}
		return client.Options{URL: "ws://" + fes[d%2].addr + "/v1/ingest", Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(clientLogs[d], &slog.HandlerOptions{Level: slog.LevelDebug}))}
	})
	ctx, stopSending := context.WithCancel(context.Background())
	var senders sync.WaitGroup
	for d, c := range clients {
		senders.Go(func() {
			sendUntil(ctx, c, 5*time.Millisecond, func(i int) []byte { return fmt.Appendf(nil, `{"id":%d,"v":%d}`, i, d) })
		})
	}

	// Chaos: kill a random tier every 0.5 to 1.5 s and start it again.
	kills := chaos(procs, d)
	stopSending()
	senders.Wait()

	// Every device's messages end up acknowledged (the client resends what
	// was not), and the frontends forward everything.
	flushAll(t, clients, func(d int) string { return "; its log (tail):\n" + tail(clientLogs[d].String(), 20) })
	for _, fe := range fes {
		testkit.WaitFor(t, fe.name+" forwarding every entry", 60*time.Second, func() bool { return queueDepth(t, fe.addr) == 0 })
	}
	stopAll(t, procs...)

	// The first of each tier kept a preallocated spare segment; the second,
	// told not to, none.
	for i, dir := range []string{filepath.Join(mts[0].dir, "wal"), filepath.Join(mts[1].dir, "wal"), fes[0].walDir, fes[1].walDir} {
		_, err := os.Stat(filepath.Join(dir, "segment.spare"))
		if prealloc := i%2 == 0; prealloc != (err == nil) {
			t.Errorf("%s: spare segment %v with preallocation %v", dir, err, prealloc)
		}
	}

	// The check: every acknowledged message is in some middletier, and no
	// middletier holds an identity twice.
	stored := map[string]map[uint64]bool{}
	total := 0
	for _, mt := range mts {
		n := storedOnce(t, mt, stored)
		t.Logf("%s: %d records", mt.name, n)
		total += n
	}
	nAcked := checkAckedStored(t, acked.snapshot(), stored, "any middletier")
	t.Logf("kills %v; %d messages acknowledged, all stored; %d records in the middletiers", kills, nAcked, total)
	if nAcked < 1000 {
		t.Fatalf("only %d messages acknowledged", nAcked)
	}
}

// feProc is a frontend process, its address and its WAL.
type feProc struct {
	*tierProc
	addr, walDir string
}

// pipelineTiers are two middletiers and two frontends, each frontend
// preferring a different middletier; the second of each tier runs its WAL
// with segments that grow as they are written, so both layouts are killed
// and recovered.
func pipelineTiers(t *testing.T) (mts []*mtProc, fes []*feProc) {
	secretFile := writeSecret(t)
	for i := range 2 {
		// A durable consumer that never commits: the WAL keeps every
		// record for the check at the end.
		mts = append(mts, middletierProc(t, fmt.Sprintf("mt-%d", i), t.TempDir(), "--consumers", "audit"))
	}
	mts[1].args = append(mts[1].args, "--wal.no-preallocate")
	for i := range 2 {
		fe := &feProc{addr: loopback(t), walDir: t.TempDir()}
		order := []string{mts[i].ingest, mts[1-i].ingest}
		fe.tierProc = frontendProc(t, fmt.Sprintf("fe-%d", i), fe.addr, fe.walDir, secretFile,
			"--uplink.middletiers", strings.Join(order, ","), "--uplink.failover", "2s", "--uplink.flush-timeout", "1s")
		fes = append(fes, fe)
	}
	fes[1].env = append(fes[1].env, "INGEST_WAL_NO_PREALLOCATE=true")
	return mts, fes
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
	for _, rec := range testkit.Records(t, l) {
		ids[rec.Origin+"/"+strconv.FormatUint(rec.Index, 10)]++
		env, err := envelope.Decode(rec.Data)
		if err != nil {
			t.Fatalf("record %s/%d: %v", rec.Origin, rec.Index, err)
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

// queueDepth reads the frontend's WAL depth from its metrics.
func queueDepth(t *testing.T, addr string) float64 {
	t.Helper()
	return scrape(t, addr, `ingest_queue_depth_entries{hop="frontend"}`)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
