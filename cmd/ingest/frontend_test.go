package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
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

// startFrontend starts `ingest frontend` (fe-e2e) on listen with its WAL in
// walDir, and returns it and the address it logged; flags come after.
func startFrontend(t *testing.T, walDir, listen string, flags ...string) (*tierProc, string) {
	t.Helper()
	p := frontendProc(t, "fe-e2e", listen, walDir, writeSecret(t), append([]string{"--drain-window", "500ms"}, flags...)...)
	p.start()
	logsOnFailure(t, 60, p)
	return p, addrRE.FindStringSubmatch(p.logs.String())[1]
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
	p, addr := startFrontend(t, walDir, "127.0.0.1:0")
	if s := httpStatus(t, "http://"+addr+"/healthz"); s != http.StatusOK {
		t.Fatalf("healthz: %d", s)
	}
	ids := deviceIDs("dev", devices)
	acked := newAcks(ids)
	clients := dialDevices(t, acked, ids, func(int, string) client.Options {
		return client.Options{URL: "ws://" + addr + "/v1/ingest", Window: 16,
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	})
	var senders sync.WaitGroup
	for d, c := range clients {
		senders.Go(func() {
			for i := 1; i <= perDevice; i++ {
				// Send numbers messages 1, 2, 3…, the same as i.
				msg := fmt.Sprintf(`{"id":%d,"seq":%d,"temp":%d.5}`, i, i, 20+d)
				if _, err := c.Send(context.Background(), []byte(msg)); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
		})
	}

	// Kill in the middle of the stream. What the dead process acknowledged
	// is on disk.
	ackedAtKill := killMidStream(t, p, acked, devices*perDevice, "acknowledged", "acks")
	checkAckedStored(t, ackedAtKill, readWAL(t, walDir), "the WAL after SIGKILL")

	// Restart on the same address: clients reconnect and resend whatever was
	// not acknowledged, in order.
	p2, _ := startFrontend(t, walDir, addr)
	senders.Wait()
	flushAll(t, clients, func(int) string { return " after the restart" })
	if t.Failed() {
		t.FailNow()
	}
	for _, c := range clients {
		c.Close()
	}
	stopOrFail(t, p2)
	checkOrder(t, acked.snapshot(), walOrder(t, walDir), perDevice)
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
	out := map[string][]uint64{}
	for i, env := range testkit.WALEnvelopes(t, dir) {
		if env.Frontend != "fe-e2e" {
			t.Fatalf("entry %d from frontend %q", i, env.Frontend)
		}
		var m struct{ ID uint64 }
		if err := json.Unmarshal(env.Payload, &m); err != nil {
			t.Fatalf("entry %d payload %q: %v", i, env.Payload, err)
		}
		out[env.Device] = append(out[env.Device], m.ID)
	}
	return out
}

// TestWriteTimeoutFlag: --write-timeout, under its own name in ingest
// frontend and ingest all, reaches the frontend's options; unset, it is
// the frontend's default.
func TestWriteTimeoutFlag(t *testing.T) {
	for _, args := range [][]string{{"--write-timeout", "3s"}, {}} {
		c := newFrontendConfig()
		f := newFlags("frontend")
		c.register(f)
		if err := f.fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		want := 10 * time.Second
		if len(args) > 0 {
			want = 3 * time.Second
		}
		if got := c.options().WriteTimeout; got != want {
			t.Errorf("%v: WriteTimeout %v, want %v", args, got, want)
		}
	}
	help, _ := exec.Command(binPath, "all", "--help").CombinedOutput()
	if !regexp.MustCompile(`(?m)^  --write-timeout `).Match(help) {
		t.Errorf("ingest all --help lists no --write-timeout:\n%s", help)
	}
}
