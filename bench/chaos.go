package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ingest-io/ingest/internal/freeport"
	"github.com/ingest-io/ingest/protocol"
)

// tier is one process of the engine that chaos can kill and start again
// with the same arguments and data.
type tier struct {
	name    string
	kind    string // frontend, middletier, storage
	bin     string
	args    []string
	ready   *regexp.Regexp
	log     string // every run's stderr is appended here
	metrics string // its /metrics URL

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs []string
}

func (t *tier) start() (time.Duration, error) {
	begin := time.Now()
	cmd := engineCommand(t.bin, t.args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(t.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return 0, fmt.Errorf("start %s: %w", t.name, err)
	}
	fmt.Fprintf(logf, "--- %s started, pid %d\n", time.Now().UTC().Format(time.RFC3339Nano), cmd.Process.Pid)
	up, done := make(chan struct{}), make(chan struct{})
	var startLog []string // this process's lines until it is up
	go func() {
		defer close(done)
		defer logf.Close()
		sc := bufio.NewScanner(io.TeeReader(stderr, logf))
		sc.Buffer(nil, 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			t.mu.Lock()
			if !signalled {
				startLog = append(startLog, line)
			}
			if t.logs = append(t.logs, line); len(t.logs) > 200 {
				t.logs = t.logs[100:]
			}
			t.mu.Unlock()
			if !signalled && t.ready.MatchString(line) {
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
		return 0, fmt.Errorf("%s exited at start:\n%s", t.name, t.tail())
	case <-time.After(60 * time.Second):
		// A Go process prints every goroutine's stack on SIGQUIT: keep it,
		// it says where the start is stuck.
		cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		t.mu.Lock()
		dump := strings.Join(startLog, "\n")
		t.mu.Unlock()
		f := filepath.Join(os.TempDir(), fmt.Sprintf("ingest-chaos-%s-stuck-%d.txt", t.name, cmd.Process.Pid))
		if err := os.WriteFile(f, []byte(dump), 0o644); err != nil {
			f = err.Error()
		}
		return 0, fmt.Errorf("%s did not start in 60 s (its stacks: %s):\n%s", t.name, f, t.tail())
	}
	t.mu.Lock()
	t.cmd, t.done = cmd, done
	t.mu.Unlock()
	return time.Since(begin), nil
}

func (t *tier) signal(sig syscall.Signal, wait time.Duration) error {
	t.mu.Lock()
	cmd, done := t.cmd, t.done
	t.mu.Unlock()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(wait):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not stop on %v", t.name, sig)
	}
	if sig == syscall.SIGTERM && !cmd.ProcessState.Success() {
		return fmt.Errorf("%s exited with %v:\n%s", t.name, cmd.ProcessState, t.tail())
	}
	return nil
}

// exited reports the process's exit if it has exited; nil while it runs.
func (t *tier) exited() error {
	t.mu.Lock()
	cmd, done := t.cmd, t.done
	t.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return fmt.Errorf("%s exited during the run (%v); its last lines:\n%s", t.name, cmd.ProcessState, t.tail())
	default:
		return nil
	}
}

func (t *tier) tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := max(0, len(t.logs)-20)
	return strings.Join(t.logs[n:], "\n")
}

// cluster is the engine as separate processes on loopback: middletiers,
// storage writers following every middletier (one group when there are
// several), and frontends whose uplinks know every middletier.
type cluster struct {
	dir      string
	tiers    []*tier
	devices  []string // device endpoints, one per frontend
	queryURL string   // the first writer's query API
	queries  []string // every writer's query API, with the embedded sink
}

func ports(n int) ([]int, error) {
	out := make([]int, n)
	for i := range out {
		p, err := freeport.Port()
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// startCluster starts the processes of shape s from the ingest binary bin,
// middletiers first.
func startCluster(bin string, s shape) (*cluster, error) {
	s = s.withDefaults()
	dir, err := os.MkdirTemp("", "ingest-chaos-")
	if err != nil {
		return nil, err
	}
	warnIfMemory(os.Stderr, dir)
	c := &cluster{dir: dir}
	p, err := ports(4*s.Middletiers + s.Writers + s.Frontends)
	if err != nil {
		return nil, err
	}
	ep := func(port int) string { return fmt.Sprintf("tcp://127.0.0.1:%d", port) }
	var ingest, streams, consumers []string
	for i := range s.Middletiers {
		in, co, st, hp := p[4*i], p[4*i+1], p[4*i+2], p[4*i+3]
		ingest, streams, consumers = append(ingest, ep(in)), append(streams, ep(st)), append(consumers, ep(co))
		c.tiers = append(c.tiers, &tier{name: fmt.Sprintf("mt-%d", i), kind: "middletier", bin: bin,
			ready: regexp.MustCompile(`msg="middletier listening"`),
			args: []string{"middletier", "--id", fmt.Sprintf("mt-%d", i), "--data.dir", filepath.Join(dir, fmt.Sprintf("mt-%d", i)),
				"--ingest.addr", ep(in), "--consumer.addr", ep(co), "--stream.addr", ep(st),
				"--http.listen", fmt.Sprintf("127.0.0.1:%d", hp), "--consumers", "storage"},
			metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", hp)})
	}
	p = p[4*s.Middletiers:]
	for i := range s.Writers {
		c.tiers = append(c.tiers, writerTier(bin, dir, i, s, p[i], streams, consumers))
		if s.Sink == "" {
			c.queries = append(c.queries, fmt.Sprintf("http://127.0.0.1:%d", p[i]))
		}
	}
	c.queryURL = fmt.Sprintf("http://127.0.0.1:%d", p[0])
	p = p[s.Writers:]
	for i, id := range frontendIDs(s.Frontends, ingest) {
		addr := fmt.Sprintf("127.0.0.1:%d", p[i])
		c.devices = append(c.devices, "ws://"+addr+protocol.Path)
		c.tiers = append(c.tiers, &tier{name: id, kind: "frontend", bin: bin,
			ready: regexp.MustCompile(`msg="frontend listening"`),
			args: append([]string{"frontend", "--insecure-no-auth", "--listen", addr, "--id", id,
				"--wal.dir", filepath.Join(dir, id), "--drain-window", "200ms",
				"--uplink.middletiers", strings.Join(ingest, ","), "--uplink.failover", "2s", "--uplink.flush-timeout", "5s"},
				loadFlags...),
			metrics: "http://" + addr + "/metrics"})
	}
	for _, t := range c.tiers {
		t.log = filepath.Join(dir, t.name+".log")
	}
	for _, t := range c.tiers {
		if _, err := t.start(); err != nil {
			c.stop(false)
			return nil, err
		}
	}
	return c, nil
}

// writerTier is storage writer i of shape s, its HTTP listener on port:
// the consumer "storage" alone, or a member of the group "storage" when
// there are several, with the embedded TSDB or s.Sink.
func writerTier(bin, dir string, i int, s shape, port int, streams, consumers []string) *tier {
	name := fmt.Sprintf("w-%d", i)
	if s.Writers == 1 {
		name = "storage" // the name -chaos has always reported
	}
	args := []string{"storage", "--middletiers.stream", strings.Join(streams, ","),
		"--middletiers.consumer", strings.Join(consumers, ","), "--http.listen", fmt.Sprintf("127.0.0.1:%d", port)}
	if s.Writers > 1 {
		args = append(args, "--group", "storage", "--group.member", name)
	} else {
		args = append(args, "--consumer", "storage")
	}
	if s.Sink == "" {
		args = append(args, "--data.dir", filepath.Join(dir, name))
	} else {
		args = append(args, "--sink", s.Sink)
	}
	return &tier{name: name, kind: "storage", bin: bin, args: args,
		ready: regexp.MustCompile(`msg="storage listening"`), metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port)}
}

// saveMetrics writes every running tier's /metrics into the data
// directory, for the post-mortem of a failed run.
func (c *cluster) saveMetrics() {
	for _, t := range c.tiers {
		if t.metrics == "" {
			continue
		}
		resp, err := http.Get(t.metrics)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		os.WriteFile(filepath.Join(c.dir, t.name+".metrics"), b, 0o644)
	}
}

// saveAcked writes the acknowledged messages the store lacks, one per line.
func saveAcked(path string, lost []string) {
	os.WriteFile(path, []byte(strings.Join(lost, "\n")+"\n"), 0o644)
}

// stop ends every process with SIGTERM, frontends first, and removes the
// data and the logs unless keep.
func (c *cluster) stop(keep bool) error {
	var errs []string
	order := append([]*tier{}, c.tiers...)
	sort.SliceStable(order, func(i, j int) bool { return rank(order[i].kind) < rank(order[j].kind) })
	for _, t := range order {
		if err := t.signal(syscall.SIGTERM, 30*time.Second); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if !keep {
		os.RemoveAll(c.dir)
	}
	if len(errs) > 0 {
		return fmt.Errorf("stop: %s", strings.Join(errs, "; "))
	}
	return nil
}

func rank(kind string) int {
	switch kind {
	case "frontend":
		return 0
	case "middletier":
		return 1
	}
	return 2
}

// recovery is what chaos did to one kind of tier.
type recovery struct {
	Kills  int     `json:"kills"`
	MeanMs float64 `json:"mean_restart_ms"`
	MaxMs  float64 `json:"max_restart_ms"`
}

// chaos kills a random tier with SIGKILL every interval (jittered) and
// starts it again, until ctx ends. It returns, per kind of tier, how long
// the restarts took until the process served again.
func (c *cluster) chaos(ctx context.Context, every time.Duration) (map[string]*recovery, error) {
	out := map[string]*recovery{}
	for {
		select {
		case <-ctx.Done():
			return out, nil
		case <-time.After(every/2 + rand.N(every)):
		}
		// Chaos kills a process and starts it again before the next: a
		// process that is not running exited on its own (a crash), which
		// a kill and a start of it would hide.
		for _, t := range c.tiers {
			if err := t.exited(); err != nil {
				return out, err
			}
		}
		t := c.tiers[rand.IntN(len(c.tiers))]
		t.signal(syscall.SIGKILL, 10*time.Second)
		took, err := t.start()
		if err != nil {
			return out, err
		}
		r := out[t.kind]
		if r == nil {
			r = &recovery{}
			out[t.kind] = r
		}
		ms := float64(took.Microseconds()) / 1000
		r.MeanMs = (r.MeanMs*float64(r.Kills) + ms) / float64(r.Kills+1)
		r.MaxMs = max(r.MaxMs, ms)
		r.Kills++
	}
}
