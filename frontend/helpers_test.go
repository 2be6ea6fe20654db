package frontend

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/testkit"
	"github.com/ingest-io/ingest/wal"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-test-secret")

// testServer is a real frontend on 127.0.0.1:0 with a real WAL in a temp dir.
type testServer struct {
	srv  *Server
	log  *wal.Log
	reg  *prometheus.Registry
	addr string
	dir  string

	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
}

func (ts *testServer) url() string { return "ws://" + ts.addr + "/v1/ingest" }

// stop drains the server and closes the WAL, once.
func (ts *testServer) stop(t testing.TB) {
	ts.once.Do(func() {
		ts.cancel()
		if err := <-ts.errc; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := ts.log.Close(); err != nil {
			t.Errorf("close wal: %v", err)
		}
	})
}

func startServer(t testing.TB, opts Options, wopts wal.Options) *testServer {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry(), dir: t.TempDir(), errc: make(chan error, 1)}
	wopts.Hop = "frontend"
	l, err := wal.Open(ts.dir, wopts, ts.reg, nil)
	if err != nil {
		t.Fatalf("open wal: %v", err)
	}
	ts.log = l
	if opts.ID == "" {
		opts.ID = "fe-test"
	}
	if !opts.InsecureNoAuth && !opts.Auth.Configured() {
		opts.Auth.HS256Secrets = [][]byte{testSecret}
	}
	if opts.DrainWindow == 0 {
		opts.DrainWindow = 200 * time.Millisecond
	}
	opts.Gatherer = ts.reg
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	opts.Listener = ln
	ts.srv, err = New(opts, l, ts.reg, nil)
	if err != nil {
		l.Close()
		t.Fatalf("new server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.errc <- ts.srv.Run(ctx) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

func hsToken(t testing.TB, sub string, mod func(*jwt.RegisteredClaims)) string {
	t.Helper()
	c := jwt.RegisteredClaims{Subject: sub, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	if mod != nil {
		mod(&c)
	}
	return testkit.SignHS256(t, testSecret, c)
}

// rawDial opens a plain WebSocket to the server, for tests that look at frames
// and close codes themselves.
func rawDial(t testing.TB, ts *testServer, token string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	c, resp, err := websocket.Dial(ctx, ts.url(), &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (HTTP %d)", err, status)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

type outFrame struct {
	Type         string            `json:"type"`
	Seq          uint64            `json:"seq"`
	IDs          []json.RawMessage `json:"ids"`
	Code         string            `json:"code"`
	Index        *int              `json:"index"`
	ID           json.RawMessage   `json:"id"`
	RetryAfterMS int64             `json:"retry_after_ms"`
	Message      string            `json:"message"`
}

func readFrame(t testing.TB, c *websocket.Conn) (outFrame, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		return outFrame{}, err
	}
	var f outFrame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("server frame %q: %v", b, err)
	}
	return f, nil
}

func send(t testing.TB, c *websocket.Conn, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func payload(device string, i int) string {
	return fmt.Sprintf(`{"id":%d,"device":%q,"v":%d,"pad":%q}`, i, device, i, strings.Repeat("x", 8))
}
