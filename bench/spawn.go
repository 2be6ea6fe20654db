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
}

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

func (e *engine) stop() {
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
	stderr, err := cmd.StderrPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	e := &engine{cmd: cmd, dir: dir, done: make(chan struct{}), pid: cmd.Process.Pid}
	up := make(chan struct{})
	var tail []string // the last lines before it was ready
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
			if !isUp {
				if tail = append(tail, line); len(tail) > 20 {
					tail = tail[1:]
				}
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
	}()
	select {
	case <-up:
		return e, nil
	case <-e.done:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%s exited at start (%v); its last lines:\n%s", name, cmd.ProcessState, strings.Join(tail, "\n"))
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
