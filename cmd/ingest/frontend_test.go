package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ingest-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "ingest")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build ingest: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := 0
	func() {
		defer os.RemoveAll(dir)
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		code = m.Run()
		testkit.StopStores() // the store servers the sink tests started
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goleak:", err)
				code = 1
			}
		}
	}()
	os.Exit(code)
}

const secret = "0123456789abcdef0123456789abcdef-e2e"

type proc struct {
	cmd  *exec.Cmd
	addr string
	logs *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

var addrRE = regexp.MustCompile(`msg="frontend listening" addr=(\S+)`)

// startFrontend runs `ingest frontend` and returns once it has logged the
// address it bound.
func startFrontend(t *testing.T, walDir, listen string) *proc {
	t.Helper()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath, "frontend", "--listen", listen, "--id", "fe-e2e", "--drain-window", "500ms")
	cmd.Env = append(os.Environ(), "INGEST_WAL_DIR="+walDir, "INGEST_AUTH_HS256_SECRET_FILE="+secretFile)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: &syncBuf{}}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logs.Write([]byte(line + "\n"))
			if m := addrRE.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case p.addr = <-found:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("frontend did not report its address; logs:\n%s", p.logs)
	}
	return p
}

func token(t *testing.T, device string) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: device, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFrontendSurvivesSIGKILL: a frontend process is killed with SIGKILL
// while many devices stream to it. Every message any device saw acknowledged
// is in the WAL afterwards, and per-device order holds across the crash.
func TestFrontendSurvivesSIGKILL(t *testing.T) {
	const (
		devices   = 24
		perDevice = 400
	)
	walDir := t.TempDir()
	p := startFrontend(t, walDir, "127.0.0.1:0")
	url := "ws://" + p.addr + "/v1/ingest"

	resp, err := http.Get("http://" + p.addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	var (
		mu       sync.Mutex
		acked    = map[string]map[uint64]bool{} // device -> client message numbers
		ackCount atomic.Int64
		clients  []*client.Client
	)
	ctx := context.Background()
	for d := range devices {
		dev := fmt.Sprintf("dev-%02d", d)
		acked[dev] = map[uint64]bool{}
		c, err := client.Dial(ctx, client.Options{
			URL: url, Token: token(t, dev), Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			OnResult: func(r client.Result) {
				if r.Err == nil {
					mu.Lock()
					acked[dev][r.N] = true
					mu.Unlock()
					ackCount.Add(1)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		defer c.Close()
	}
	var senders sync.WaitGroup
	for d, c := range clients {
		senders.Go(func() {
			for i := 1; i <= perDevice; i++ {
				// Send numbers messages 1, 2, 3…, the same as i.
				msg := fmt.Sprintf(`{"id":%d,"seq":%d,"temp":%d.5}`, i, i, 20+d)
				if _, err := c.Send(ctx, []byte(msg)); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
		})
	}

	// Kill in the middle of the stream.
	deadline := time.Now().Add(30 * time.Second)
	for ackCount.Load() < devices*perDevice/4 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks before the kill; logs:\n%s", ackCount.Load(), p.logs)
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	mu.Lock()
	ackedAtKill := map[string]map[uint64]bool{}
	for dev, ids := range acked {
		ackedAtKill[dev] = map[uint64]bool{}
		for id := range ids {
			ackedAtKill[dev][id] = true
		}
	}
	mu.Unlock()
	t.Logf("killed after %d acks", ackCount.Load())

	// What the dead process acknowledged is on disk.
	stored := readWAL(t, walDir)
	for dev, ids := range ackedAtKill {
		for id := range ids {
			if !stored[dev][id] {
				t.Fatalf("acknowledged message %s/%d is not in the WAL after SIGKILL", dev, id)
			}
		}
	}

	// Restart on the same address: clients reconnect and resend whatever was
	// not acknowledged, in order.
	p2 := startFrontend(t, walDir, p.addr)
	senders.Wait()
	for _, c := range clients {
		fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := c.Flush(fctx)
		cancel()
		if err != nil {
			t.Fatalf("flush after restart: %v (pending %d); logs:\n%s", err, c.Pending(), p2.logs)
		}
	}
	for _, c := range clients {
		c.Close()
	}
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p2.cmd.Wait(); err != nil {
		t.Fatalf("frontend exit after SIGTERM: %v; logs:\n%s", err, p2.logs)
	}

	order := walOrder(t, walDir)
	for dev, ids := range acked {
		if len(ids) != perDevice {
			t.Fatalf("%s: %d acknowledged, want %d", dev, len(ids), perDevice)
		}
		seen := map[uint64]bool{}
		var last uint64
		for _, id := range order[dev] {
			if seen[id] {
				continue // a resend of a message whose ack was lost: allowed
			}
			if id != last+1 {
				t.Fatalf("%s: message %d first stored after %d: order broken", dev, id, last)
			}
			seen[id], last = true, id
		}
		if last != perDevice {
			t.Fatalf("%s: %d stored, want %d", dev, last, perDevice)
		}
	}
}

func readWAL(t *testing.T, dir string) map[string]map[uint64]bool {
	t.Helper()
	out := map[string]map[uint64]bool{}
	for dev, ids := range walOrder(t, dir) {
		out[dev] = map[uint64]bool{}
		for _, id := range ids {
			out[dev][id] = true
		}
	}
	return out
}

// walOrder returns, per device, the "id" of every stored message in WAL order.
func walOrder(t *testing.T, dir string) map[string][]uint64 {
	t.Helper()
	l, err := wal.Open(dir, wal.Options{Hop: "check"}, nil, nil)
	if err != nil {
		t.Fatalf("reopen wal: %v", err)
	}
	defer l.Close()
	cur, err := l.Cursor(0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]uint64{}
	for n := l.LastIndex(); n > 0; n-- {
		e, err := cur.Next(context.Background())
		if err != nil {
			t.Fatalf("read wal: %v", err)
		}
		env, err := envelope.Decode(e.Data)
		if err != nil {
			t.Fatalf("entry %d: %v", e.Index, err)
		}
		if env.Frontend != "fe-e2e" {
			t.Fatalf("entry %d from frontend %q", e.Index, env.Frontend)
		}
		var m struct{ ID uint64 }
		if err := json.Unmarshal(env.Payload, &m); err != nil {
			t.Fatalf("entry %d payload %q: %v", e.Index, env.Payload, err)
		}
		out[env.Device] = append(out[env.Device], m.ID)
	}
	return out
}
