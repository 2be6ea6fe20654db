package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ingest-io/ingest/protocol"
)

// engine is a frontend started by the bench, on loopback without auth.
type engine struct {
	cmd   *exec.Cmd
	dir   string
	url   string
	mqtt  string // mqtt://host:port of its MQTT listener
	feed  string
	query string
	// metrics is the engine's Prometheus endpoint.
	metrics string
	done    chan struct{}
	pid     int
	name    string // frontend or engine, for its messages

	// stopping is set once the bench ends the process: an exit before
	// that is the engine's own (a crash, a kill), and fails the run.
	stopping atomic.Bool
	tailMu   sync.Mutex
	tail     []string // the last lines it logged
	crash    []string // the first lines of a Go runtime crash (a panic, a fatal error, a signal), if it logged one
	lines    int      // lines logged
	crashAt  int      // lines logged before the crash's first
}

// crashRE matches the line the Go runtime begins a crash with: a panic, a
// fatal error or a deadly signal. What follows it is a goroutine dump,
// often far longer than the tail kept: its first lines are kept apart.
var crashRE = regexp.MustCompile(`^(panic: |fatal error: |SIG[A-Z]+: )`)

// crashLines is how many lines of a crash are kept from its first.
const crashLines = 12

var (
	listeningRE = regexp.MustCompile(`msg="frontend listening" addr=(\S+)`)
	mqttRE      = regexp.MustCompile(`msg="mqtt listening" addr=(\S+)`)
	allRE       = regexp.MustCompile(`msg="engine running.*devices=(\S+) metrics=(\S+) live_feed=(\S+) query_api=(\S+)`)
)

// loadFlags lift the frontend's per-device rate limit and connection bound
// for an engine the bench starts, alone or whole, so that both measure the
// same frontend: a device of a closed loop sends far past the default
// 1,000 messages a second.
var loadFlags = []string{"--rate", "1000000", "--burst", "1000000", "--max-connections", "200000"}

// spawnedWALBound bounds the WAL of a frontend the bench starts alone.
const spawnedWALBound = 16 << 30

func spawnFrontend(ctx context.Context, bin string) (*engine, error) {
	dir, err := os.MkdirTemp("", "ingest-bench-")
	if err != nil {
		return nil, err
	}
	args := append([]string{"frontend", "--insecure-no-auth", "--listen", "127.0.0.1:0", "--mqtt.listen", "127.0.0.1:0",
		"--wal.dir", dir + "/wal",
		// Nothing releases what this frontend holds: a bound far past
		// what a run appends keeps "overloaded" out of a minute at full
		// load.
		"--wal.max-bytes", strconv.FormatInt(spawnedWALBound, 10)}, loadFlags...)
	var addr string
	e, err := start(ctx, "frontend", engineCommand(bin, args...), dir, func(line string) bool {
		m := listeningRE.FindStringSubmatch(line)
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	if err != nil {
		return nil, err
	}
	e.url, e.metrics = "ws://"+addr+protocol.Path, "http://"+addr+"/metrics"
	return e, nil
}

// memSummary reports the frontend's resident memory, read from /proc.
func (e *engine) memSummary() string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.pid))
	if err != nil {
		return "exited"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			return "peak resident memory " + strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:"))
		}
	}
	return ""
}

// lastLines is the last lines the process logged, after the first lines
// of a Go runtime crash (panic, fatal error, signal) if it logged one.
func (e *engine) lastLines() string {
	e.tailMu.Lock()
	defer e.tailMu.Unlock()
	if len(e.crash) > 0 && e.lines-e.crashAt > len(e.tail) { // not in the tail
		return strings.Join(e.crash, "\n") + "\n...\n" + strings.Join(e.tail, "\n")
	}
	return strings.Join(e.tail, "\n")
}

// exitErr reports the process's exit if it ended before the bench stopped
// it: its status, the first lines of its crash if it crashed, and its last
// lines; nil while it runs, and for no engine (nil).
func (e *engine) exitErr() error {
	if e == nil {
		return nil
	}
	select {
	case <-e.done:
	default:
		return nil
	}
	if e.stopping.Load() {
		return nil
	}
	return fmt.Errorf("%s exited during the run (%v); its last lines:\n%s", e.name, e.cmd.ProcessState, e.lastLines())
}

// watch returns a context that ends with ctx or when the process exits,
// so that a run on an engine that died ends instead of sending into
// nothing for the rest of its duration and drain.
func (e *engine) watch(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-e.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (e *engine) stop() {
	e.stopping.Store(true)
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		e.cmd.Process.Kill()
		<-e.done
	}
	os.RemoveAll(e.dir)
}

// spawnAll starts the whole engine in one process (ingest all) on loopback
// ports of the kernel's choosing, without auth, on a temporary data
// directory, with sinks as its --sink if not empty. Its query API is "none"
// without an embedded sink.
func spawnAll(ctx context.Context, bin, sinks string) (*engine, error) {
	dir, err := os.MkdirTemp("", "ingest-bench-all-")
	if err != nil {
		return nil, err
	}
	// Every listener on a port the kernel picks as the engine binds it, read
	// back from its log: ports picked here and freed for the engine to take
	// could be handed meanwhile to the engine's own loopback sockets, bound
	// first, and stop it at start.
	args := append([]string{"all", "--insecure-no-auth", "--data.dir", dir,
		"--listen", "127.0.0.1:0", "--feed.listen", "127.0.0.1:0",
		"--storage.http.listen", "127.0.0.1:0", "--mqtt.listen", "127.0.0.1:0"}, loadFlags...)
	cmd := engineCommand(bin, args...)
	if sinks != "" {
		cmd.Env = append(os.Environ(), "INGEST_SINK="+sinks)
	}
	var m []string
	e, err := start(ctx, "engine", cmd, dir, func(line string) bool {
		m = allRE.FindStringSubmatch(line)
		return m != nil
	})
	if err != nil {
		return nil, err
	}
	e.url, e.metrics, e.feed, e.query = m[1], m[2], m[3], strings.TrimSuffix(m[4], "/api/v1/")
	return e, nil
}

// start runs cmd, an engine process the bench starts (name says which),
// its data in dir, and waits until ready accepts a line of its log. The
// process's error lines are passed on to the bench's stderr. If it exits
// before it is ready, the error carries its exit status and the last lines
// it logged; dir is removed unless it starts.
func start(ctx context.Context, name string, cmd *exec.Cmd, dir string, ready func(line string) bool) (*engine, error) {
	warnIfMemory(os.Stderr, dir)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	e := &engine{cmd: cmd, dir: dir, done: make(chan struct{}), pid: cmd.Process.Pid, name: name}
	up := make(chan struct{})
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		isUp := false
		for sc.Scan() {
			line := sc.Text()
			if m := mqttRE.FindStringSubmatch(line); m != nil && !isUp {
				e.mqtt = "mqtt://" + m[1] // logged before the ready line
			} else if !isUp && ready(line) {
				isUp = true
				close(up)
				continue
			} else if strings.Contains(line, "level=ERROR") {
				fmt.Fprintf(os.Stderr, "%s: %s\n", name, line)
			}
			e.tailMu.Lock()
			if e.tail = append(e.tail, line); len(e.tail) > 20 {
				e.tail = e.tail[1:]
			}
			if n := len(e.crash); n > 0 && n < crashLines || n == 0 && crashRE.MatchString(line) {
				if n == 0 {
					e.crashAt = e.lines
				}
				e.crash = append(e.crash, line)
			}
			e.lines++
			e.tailMu.Unlock()
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
	}()
	select {
	case <-up:
		return e, nil
	case <-e.done:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%s exited at start (%v); its last lines:\n%s", name, cmd.ProcessState, e.lastLines())
	case <-time.After(30 * time.Second):
		e.stop()
		return nil, fmt.Errorf("%s did not start", name)
	case <-ctx.Done():
		e.stop()
		return nil, ctx.Err()
	}
}

// engineCommand is the command that starts an engine process from bin. The
// kernel kills the process if the bench dies first (a SIGPIPE when its
// output is cut short, a kill), so no engine outlives the run.
func engineCommand(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// warnIfMemory says so, and reports true, when dir, where an engine the
// bench starts keeps its WALs and store, is on a file system in memory
// (tmpfs or ramfs: /tmp is on some distributions). An fsync there costs
// nothing, so the figures are not a disk's.
func warnIfMemory(w io.Writer, dir string) bool {
	const tmpfsMagic, ramfsMagic = 0x01021994, 0x858458f6
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return false
	}
	if t := int64(st.Type); t != tmpfsMagic && t != ramfsMagic {
		return false
	}
	fmt.Fprintf(w, "bench: warning: %s is on a file system in memory (tmpfs): the engine's fsyncs cost nothing there, so these figures are not a disk's; set TMPDIR to a directory on disk\n", dir)
	return true
}
