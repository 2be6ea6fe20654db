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
	cmd := engineCommand(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start frontend: %w", err)
	}
	e := &engine{cmd: cmd, dir: dir, done: make(chan struct{}), pid: cmd.Process.Pid}
	addr := make(chan string, 1)
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := mqttRE.FindStringSubmatch(sc.Text()); m != nil {
				e.mqtt = "mqtt://" + m[1] // logged before the frontend's own line
			} else if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			} else if strings.Contains(sc.Text(), "level=ERROR") {
				fmt.Fprintln(os.Stderr, "frontend:", sc.Text())
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
	}()
	select {
	case a := <-addr:
		e.url, e.metrics = "ws://"+a+protocol.Path, "http://"+a+"/metrics"
		return e, nil
	case <-e.done:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("frontend exited at start")
	case <-time.After(30 * time.Second):
		e.stop()
		return nil, fmt.Errorf("frontend did not start")
	case <-ctx.Done():
		e.stop()
		return nil, ctx.Err()
	}
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
// ports, without auth, on a temporary data directory, with sinks as its
// --sink if not empty. Its query API is "none" without an embedded sink.
func spawnAll(ctx context.Context, bin, sinks string) (*engine, error) {
	dir, err := os.MkdirTemp("", "ingest-bench-all-")
	if err != nil {
		return nil, err
	}
	p, err := ports(3)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	args := append([]string{"all", "--insecure-no-auth", "--data.dir", dir,
		"--listen", fmt.Sprintf("127.0.0.1:%d", p[0]), "--feed.listen", fmt.Sprintf("127.0.0.1:%d", p[1]),
		"--storage.http.listen", fmt.Sprintf("127.0.0.1:%d", p[2]), "--mqtt.listen", "127.0.0.1:0"}, loadFlags...)
	cmd := engineCommand(bin, args...)
	if sinks != "" {
		cmd.Env = append(os.Environ(), "INGEST_SINK="+sinks)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start engine: %w", err)
	}
	e := &engine{cmd: cmd, dir: dir, done: make(chan struct{}), pid: cmd.Process.Pid}
	found := make(chan []string, 1)
	go func() {
		defer close(e.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if m := mqttRE.FindStringSubmatch(sc.Text()); m != nil {
				e.mqtt = "mqtt://" + m[1] // logged before "engine running"
			} else if m := allRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m:
				default:
				}
			} else if strings.Contains(sc.Text(), "level=ERROR") {
				fmt.Fprintln(os.Stderr, "engine:", sc.Text())
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
	}()
	select {
	case m := <-found:
		e.url, e.metrics, e.feed, e.query = m[1], m[2], m[3], strings.TrimSuffix(m[4], "/api/v1/")
		return e, nil
	case <-e.done:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("engine exited at start")
	case <-time.After(30 * time.Second):
		e.stop()
		return nil, fmt.Errorf("engine did not start")
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
