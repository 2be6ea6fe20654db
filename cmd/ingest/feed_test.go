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
	"github.com/ingest-io/ingest/internal/testkit"
)

// TestFeedProcess runs a middletier, a frontend and `ingest feed` as
// processes: a device's message reaches a dashboard subscribed by group,
// with its registry labels; SIGTERM closes the dashboard with 1001.
func TestFeedProcess(t *testing.T) {
	secretFile := writeSecret(t)
	regFile := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(regFile, []byte("id,name,group\ndev-1,Truck 1,north\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	feedSock := endpoint(t)
	mt := middletierProc(t, "mt-0", t.TempDir(), "--feed.addr", feedSock, "--consumers", "audit")
	feAddr := loopback(t)
	fe := frontendProc(t, "fe-0", feAddr, t.TempDir(), secretFile, "--uplink.middletiers", mt.ingest, "--uplink.flush-timeout", "1s")
	feedAddr := loopback(t)
	fd := &tierProc{t: t, name: "feed", ready: regexp.MustCompile(`msg="feed listening" addr=` + regexp.QuoteMeta(feedAddr)),
		args: []string{"feed", "--listen", feedAddr, "--middletiers", feedSock},
		env: []string{"INGEST_MIDDLETIERS_CONSUMER=" + mt.consumer, "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile,
			"INGEST_REGISTRY_FILE=" + regFile}}
	procs := []*tierProc{mt.tierProc, fe, fd}
	for _, p := range procs {
		p.start()
	}
	defer stopAll(t, procs[:2]...)
	logsOnFailure(t, 30, procs...)
	testkit.WaitFor(t, "the feed ready", 10*time.Second, func() bool { return httpStatusOr0("http://"+feedAddr+"/readyz") == http.StatusOK })

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "dashboard", "scope": "feed:read", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	frames, readErr := dashboard(t, ctx, "ws://"+feedAddr+"/v1/feed", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}}, `{"type":"subscribe","groups":["north"]}`)
	if f := <-frames; f["type"] != "subscribed" {
		t.Fatalf("answer to subscribe: %v", f)
	}
	got := firstFeedMessage(t, ctx, feAddr, frames)
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

// firstFeedMessage has dev-1 (in the group the dashboard follows) and
// dev-2 (in none) send through the frontend at feAddr until a frame
// reaches the dashboard, and returns that frame: until the feed's
// subscription has reached the middletier, messages are published past it.
func firstFeedMessage(t *testing.T, ctx context.Context, feAddr string, frames <-chan map[string]any) map[string]any {
	t.Helper()
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
	for i := 0; ; i++ {
		if err := other.SendWait(ctx, []byte(`{"temp":1}`)); err != nil {
			t.Fatal(err)
		}
		if err := dev.SendWait(ctx, fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-frames:
			return got
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no message reached the dashboard")
		}
	}
}

// dashboard follows the live feed at url: it dials with opts, sends sub
// (a subscribe frame), and returns the frames it is sent, decoded, and the
// error its connection ended with, sent once frames is closed. It holds up
// to 1024 frames unread; later ones are dropped. The connection is closed
// when the test ends.
func dashboard(t *testing.T, ctx context.Context, url string, opts *websocket.DialOptions, sub string) (<-chan map[string]any, <-chan error) {
	t.Helper()
	ws, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	if err := ws.Write(ctx, websocket.MessageText, []byte(sub)); err != nil {
		t.Fatal(err)
	}
	frames := make(chan map[string]any, 1024)
	ended := make(chan error, 1)
	go func() {
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				ended <- err
				close(frames)
				return
			}
			var f map[string]any
			json.Unmarshal(b, &f)
			select {
			case frames <- f:
			default:
			}
		}
	}()
	return frames, ended
}

// httpStatusOr0 is the status GET url answers with, or 0 if it cannot be
// asked.
func httpStatusOr0(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
