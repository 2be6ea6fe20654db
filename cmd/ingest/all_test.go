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

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
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
	e := startAll(t, nil)
	// A dashboard follows every device on the live feed.
	shown, _ := dashboard(t, context.Background(), "ws://"+e.feedAddr+"/v1/feed", nil, `{"type":"subscribe"}`)
	// The feed is live: it shows what the middletier publishes once the
	// feed has subscribed, a moment after the engine says it runs. Another
	// device's messages, sent until one is shown, say it has.
	warm, cancelWarm := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelWarm()
	warmUps := 0
warmUp:
	for {
		warmUps++
		sendAcked(t, warm, client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=warm-up"}, [][]byte{fmt.Appendf(nil, `{"n":%d}`, warmUps)})
		wait := time.After(300 * time.Millisecond)
		for {
			select {
			case f, ok := <-shown:
				if !ok {
					t.Fatal("feed closed before a warm-up message")
				}
				if f["type"] == "message" && f["device"] == "warm-up" {
					break warmUp
				}
				continue
			case <-wait:
			case <-warm.Done():
				t.Fatalf("the feed showed none of %d warm-up messages", warmUps)
			}
			break
		}
	}
	const n = 500
	base := time.Now().UnixMilli() - n
	var msgs [][]byte
	for i := 1; i <= n; i++ {
		// One millisecond apart: the store keeps one sample per series and millisecond.
		msgs = append(msgs, fmt.Appendf(nil, `{"id":%d,"n":%d,"temp":21.5,"ts":%d}`, i, i, base+int64(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sendAcked(t, ctx, client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=dev-1"}, msgs)
	entries := `ingest_middletier_entries_total{middletier="mt-0"}`
	testkit.Eventually(t, 30*time.Second, fmt.Sprintf("the middletier holds %d entries and the warm-up messages", n), func() (bool, string) {
		v := scrape(t, e.addr, entries)
		return v == float64(n+warmUps), fmt.Sprint(v)
	})
	// Every message is on the feed, in order.
	next := 1.0
	timeout := time.After(30 * time.Second)
	for next <= n {
		select {
		case f, ok := <-shown:
			if !ok {
				t.Fatalf("feed closed after %v messages", next-1)
			}
			if f["type"] != "message" || f["device"] == "warm-up" {
				continue // a later warm-up message may follow the one shown
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
	q := "http://" + e.queryAddr + "/api/v1/query?query=" + url.QueryEscape(`count_over_time(n{device="dev-1"}[1h])`)
	testkit.Eventually(t, 30*time.Second, fmt.Sprintf("the store counts %d samples of n", n), func() (bool, string) {
		if got := queryValue(t, q); got != fmt.Sprint(n) {
			return false, fmt.Sprintf("%q; the device's series now: %s", got,
				getBody("http://"+e.queryAddr+"/api/v1/query?query="+url.QueryEscape(`{device="dev-1"}`)))
		}
		return true, ""
	})
	stopOrFail(t, e.tierProc)
}

// sendAcked sends msgs from a device client with options o and fails the
// test unless every one is acknowledged.
func sendAcked(t *testing.T, ctx context.Context, o client.Options, msgs [][]byte) {
	t.Helper()
	var acked atomic.Int64
	o.OnResult = func(r client.Result) {
		if r.Err == nil {
			acked.Add(1)
		}
	}
	c, err := client.Dial(ctx, o)
	if err != nil {
		t.Fatalf("dial %s: %v", o.URL, err)
	}
	defer c.Close()
	for _, m := range msgs {
		if _, err := c.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if acked.Load() != int64(len(msgs)) {
		t.Fatalf("%d acknowledged at %s, want %d", acked.Load(), o.URL, len(msgs))
	}
}

// getBody is the body GET u answers with, or the error.
func getBody(u string) string {
	resp, err := http.Get(u)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
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
