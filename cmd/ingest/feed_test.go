package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
)

// TestFeedProcess runs a middletier, a frontend and `ingest feed` as
// processes: a device's message reaches a dashboard subscribed by group,
// with its registry labels; SIGTERM closes the dashboard with 1001.
func TestFeedProcess(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	regFile := filepath.Join(dir, "devices.csv")
	if err := os.WriteFile(regFile, []byte("id,name,group\ndev-1,Truck 1,north\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ing := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	cons := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	feedSock := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	mt := &tierProc{t: t, name: "mt", ready: regexp.MustCompile(`msg="middletier listening"`),
		args: []string{"middletier", "--id", "mt-0", "--data.dir", t.TempDir(), "--ingest.addr", ing,
			"--consumer.addr", cons, "--stream.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
			"--feed.addr", feedSock, "--http.listen", "127.0.0.1:0", "--consumers", "audit"}}
	feAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	fe := &tierProc{t: t, name: "fe", ready: regexp.MustCompile(`msg="frontend listening"`),
		args: []string{"frontend", "--listen", feAddr, "--id", "fe-0", "--drain-window", "200ms",
			"--uplink.middletiers", ing, "--uplink.flush-timeout", "1s"},
		env: []string{"INGEST_WAL_DIR=" + t.TempDir(), "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile}}
	feedAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	fd := &tierProc{t: t, name: "feed", ready: regexp.MustCompile(`msg="feed listening" addr=` + regexp.QuoteMeta(feedAddr)),
		args: []string{"feed", "--listen", feedAddr, "--middletiers", feedSock},
		env: []string{"INGEST_MIDDLETIERS_CONSUMER=" + cons, "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile,
			"INGEST_REGISTRY_FILE=" + regFile}}
	procs := []*tierProc{mt, fe, fd}
	for _, p := range procs {
		p.start()
	}
	defer func() {
		for _, p := range procs[:2] {
			if err := p.stop(); err != nil {
				t.Error(err)
			}
		}
		if t.Failed() {
			for _, p := range procs {
				t.Logf("logs of %s (tail):\n%s", p.name, tail(p.logs.String(), 30))
			}
		}
	}()

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + feedAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("feed not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "dashboard", "scope": "feed:read", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+feedAddr+"/v1/feed", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","groups":["north"]}`)); err != nil {
		t.Fatal(err)
	}
	frames := make(chan map[string]any, 64)
	readErr := make(chan error, 1)
	go func() {
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				readErr <- err
				close(frames)
				return
			}
			var f map[string]any
			json.Unmarshal(b, &f)
			frames <- f
		}
	}()
	if f := <-frames; f["type"] != "subscribed" {
		t.Fatalf("answer to subscribe: %v", f)
	}

	dev, err := client.Dial(ctx, client.Options{URL: "ws://" + feAddr + "/v1/ingest", Token: token(t, "dev-1")})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	other, err := client.Dial(ctx, client.Options{URL: "ws://" + feAddr + "/v1/ingest", Token: token(t, "dev-2")})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// Until the feed's subscription has reached the middletier, messages
	// are published past it: send until one arrives.
	var got map[string]any
	for i := 0; got == nil; i++ {
		if err := other.SendWait(ctx, []byte(`{"temp":1}`)); err != nil {
			t.Fatal(err)
		}
		if err := dev.SendWait(ctx, fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}
		select {
		case got = <-frames:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no message reached the dashboard")
		}
	}
	labels, _ := got["labels"].(map[string]any)
	if got["type"] != "message" || got["device"] != "dev-1" || got["middletier"] != "mt-0" ||
		labels["name"] != "Truck 1" || labels["group"] != "north" {
		t.Fatalf("dashboard got %v", got)
	}

	if err := fd.stop(); err != nil {
		t.Fatal(err)
	}
	for range frames {
	}
	var ce websocket.CloseError
	if err := <-readErr; !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway {
		t.Fatalf("dashboard connection ended with %v, want 1001", err)
	}
}
