package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/client"
)

var metricRE = func(name string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`)
}

func scrape(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := metricRE(series).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// The all-in-one engine: a device's messages are acknowledged, carried to
// the middletier and shown on the live feed, and the process stops cleanly
// on SIGTERM.
func TestAllInOne(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	feedAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	queryAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := &tierProc{t: t, name: "all", ready: regexp.MustCompile(`msg="engine running`),
		args: []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", addr, "--feed.listen", feedAddr, "--storage.http.listen", queryAddr, "--mqtt.listen", "127.0.0.1:0"}}
	p.start()

	// A dashboard follows every device on the live feed.
	ws, _, err := websocket.Dial(context.Background(), "ws://"+feedAddr+"/v1/feed", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(context.Background(), websocket.MessageText, []byte(`{"type":"subscribe"}`)); err != nil {
		t.Fatal(err)
	}
	shown := make(chan map[string]any, 1024)
	go func() {
		defer close(shown)
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			var f map[string]any
			if json.Unmarshal(b, &f) == nil && f["type"] == "message" {
				shown <- f
			}
		}
	}()
	var acked atomic.Int64
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + addr + "/v1/ingest?device=dev-1",
		OnResult: func(r client.Result) {
			if r.Err == nil {
				acked.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	base := time.Now().UnixMilli() - n
	for i := 1; i <= n; i++ {
		// One millisecond apart: the store keeps one sample per series and millisecond.
		if _, err := c.Send(context.Background(), fmt.Appendf(nil, `{"id":%d,"n":%d,"temp":21.5,"ts":%d}`, i, i, base+int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if acked.Load() != n {
		t.Fatalf("%d acknowledged, want %d", acked.Load(), n)
	}
	deadline := time.Now().Add(30 * time.Second)
	for scrape(t, addr, `ingest_middletier_entries_total{middletier="mt-0"}`) != n {
		if time.Now().After(deadline) {
			t.Fatalf("the middletier holds %v entries, want %d; logs:\n%s", scrape(t, addr, `ingest_middletier_entries_total{middletier="mt-0"}`), n, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every message is on the feed, in order.
	next := 1.0
	timeout := time.After(30 * time.Second)
	for next <= n {
		select {
		case f, ok := <-shown:
			if !ok {
				t.Fatalf("feed closed after %v messages", next-1)
			}
			payload, _ := f["payload"].(map[string]any)
			if f["device"] != "dev-1" || payload["id"] != next {
				t.Fatalf("feed message %v, want id %v", f, next)
			}
			next++
		case <-timeout:
			t.Fatalf("the feed showed %v of %d messages", next-1, n)
		}
	}
	// And every message is in the embedded store, once: the query API
	// answers as Prometheus would.
	q := "http://" + queryAddr + "/api/v1/query?query=" + url.QueryEscape(`count_over_time(n{device="dev-1"}[1h])`)
	deadline = time.Now().Add(30 * time.Second)
	for {
		got := queryValue(t, q)
		if got == fmt.Sprint(n) {
			break
		}
		if time.Now().After(deadline) {
			resp, err := http.Get("http://" + queryAddr + "/api/v1/query?query=" + url.QueryEscape(`{device="dev-1"}`))
			var body []byte
			if err == nil {
				body, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			t.Fatalf("the store counts %q samples of n, want %d; the device's series now: %s %v", got, n, body, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("%v; logs:\n%s", err, p.logs.String())
	}
}

// queryValue runs an instant query and returns the value of its one
// sample, or "" when there is none.
func queryValue(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" || len(r.Data.Result) != 1 {
		return ""
	}
	v, _ := r.Data.Result[0].Value[1].(string)
	return v
}
