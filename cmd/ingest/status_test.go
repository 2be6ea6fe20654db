package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
)

// TestStatusPage opens the status page of ingest all in headless Chromium
// (Debian's chromium package; make deps installs it): the page follows the
// live feed, a device connects and sends, and the page shows the device
// connected, its message in the table (and not under another device's
// filter), the queues and the latencies.
func TestStatusPage(t *testing.T) {
	e := startAll(t, nil)
	// The log line names the page, after the URLs bench -spawn-all reads
	// with its own pattern.
	line := regexp.MustCompile(`msg="engine running.*devices=(\S+) .*live_feed=(\S+) query_api=(\S+) status=(\S+)`).FindStringSubmatch(e.logs.String())
	if line == nil || line[1] != "ws://"+e.addr+"/v1/ingest" || line[2] != "ws://"+e.feedAddr+"/v1/feed" {
		t.Fatalf("engine running line %q; logs:\n%s", line, e.logs.String())
	}
	if line[4] != "http://"+e.feedAddr+"/status/" {
		t.Fatalf("status page at %q, want on the feed's listener %s", line[4], e.feedAddr)
	}
	pg := openPage(t, line[4], e.logs.String)
	pg.waitFor("the live feed followed", `document.getElementById("feed-state").textContent === "live"`, 15*time.Second)
	pg.waitFor("the engine's figures", `document.getElementById("engine-state").textContent === "running"`, 15*time.Second)

	// A device connects and sends one message, and stays connected.
	marker := fmt.Sprintf("status-page-%d", time.Now().UnixNano())
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=status-dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send(context.Background(), []byte(`{"note":"`+marker+`","temp":21.5,"html":"<img src=x onerror=window.__injected=1><b>bold</b>"}`)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatalf("message not acknowledged: %v", err)
	}
	checkStatusShows(t, pg, marker)
	c.Close()
	pg.close()
	stopOrFail(t, e.tierProc)
}

// checkStatusShows checks that the status page shows a connected device
// and its one message, with marker in it, as text; the queues and the
// latencies; and the message under its own device's filter and not under
// another's.
func checkStatusShows(t *testing.T, pg *page, marker string) {
	t.Helper()
	rowShown := `[...document.querySelectorAll("#messages tbody tr")].some(tr => tr.dataset.device === "status-dev-1" && tr.textContent.includes(` + strconv.Quote(marker) + `))`
	pg.waitFor("the device's message in the table", rowShown, 15*time.Second)
	// Device data is shown as text, never as markup.
	pg.waitFor("the payload's markup as text", `[...document.querySelectorAll("#messages tbody tr")].some(tr => tr.textContent.includes("<b>bold</b>"))`, 15*time.Second)
	var injected bool
	pg.eval(`window.__injected === 1 || document.querySelector("#messages tbody b, #messages tbody img") !== null`, &injected)
	if injected {
		t.Fatal("a device's payload became markup on the page")
	}
	pg.waitFor("a connected device", `Number(document.getElementById("devices").textContent) >= 1`, 15*time.Second)
	pg.waitFor("the frontend's queue", `document.querySelector('#queues tr[data-hop="frontend"]') !== null`, 15*time.Second)
	pg.waitFor("ack and end-to-end latencies", `["ack-p50", "ack-p99", "e2e-p50", "e2e-p99", "store-p50", "store-p99"].every(id => /^[0-9.,]+ (µs|ms|s)$/.test(document.getElementById(id).textContent))`, 15*time.Second)
	var received string
	if pg.eval(`document.getElementById("received-total").textContent`, &received); received != "1" {
		t.Errorf("received total %q, want 1", received)
	}

	// The filter: typing another device's id hides the row; the device's
	// own id shows it again.
	if err := chromedp.Do(pg.ctx, chromedp.SendKeys("#filter-device", "some-other-device")); err != nil {
		t.Fatal(err)
	}
	pg.waitFor("the table filtered to nothing", `document.querySelectorAll("#messages tbody tr").length === 0`, 15*time.Second)
	if err := chromedp.Do(pg.ctx, chromedp.Evaluate[chromedp.Void](
		`(el => { el.value = ""; el.dispatchEvent(new Event("input")); })(document.getElementById("filter-device"))`),
		chromedp.SendKeys("#filter-device", "dev-1"),
		chromedp.SendKeys("#filter-text", marker)); err != nil {
		t.Fatal(err)
	}
	pg.waitFor("the row under its own device and text filter", rowShown, 15*time.Second)
}

// page is a page open in headless Chromium (Debian's chromium package;
// make deps installs it).
type page struct {
	t     *testing.T
	ctx   context.Context // the browser's: chromedp runs in it
	close func()          // closes the browser; closed when the test ends too
	logs  func() string   // what a failure shows besides the page
}

// openPage opens u in a new headless Chromium, with opts besides the
// defaults.
func openPage(t *testing.T, u string, logs func() string, opts ...chromedp.ExecAllocatorOption) *page {
	t.Helper()
	chromium := testkit.Tool(t, "chromium", "chromium")
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // as root Chromium refuses to start with its sandbox
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
	), opts...)...)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	pg := &page{t: t, ctx: browser, logs: logs, close: sync.OnceFunc(func() { cancelBrowser(); cancelAlloc() })}
	t.Cleanup(pg.close)
	// The first Run starts the browser for the life of this context.
	if err := chromedp.Do(browser, chromedp.Navigate(u)); err != nil {
		t.Fatalf("open %s: %v", u, err)
	}
	return pg
}

// eval evaluates expr on the page and decodes its value into out.
func (pg *page) eval(expr string, out any) {
	pg.t.Helper()
	ctx, cancel := context.WithTimeout(pg.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(`+expr+`)`))
	if err != nil {
		pg.t.Fatalf("evaluate %s: %v", expr, err)
	}
	if err := json.Unmarshal([]byte(s), out); err != nil {
		pg.t.Fatalf("evaluate %s: %v: %s", expr, err, s)
	}
}

// waitFor polls a JavaScript predicate on the page until it holds, and
// fails the test, with the page's text, if it does not within the given
// time.
func (pg *page) waitFor(what, predicate string, within time.Duration) {
	pg.t.Helper()
	ctx, cancel := context.WithTimeout(pg.ctx, within)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](predicate, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		tctx, tcancel := context.WithTimeout(pg.ctx, 2*time.Second)
		text, _ := chromedp.Run(tctx, chromedp.Evaluate[string](`document.body.innerText`))
		tcancel()
		pg.t.Fatalf("the page never showed %s: %v\npage:\n%s\nlogs:\n%s", what, err, text, pg.logs())
	}
}

// TestStatusStoredWithSeveralSinks runs ingest all with two sinks, the
// embedded TSDB and remote-write to a store that takes every request, and
// sends n messages: once both sinks have taken all n, the status page's
// stored total is n, the messages stored, not n for every sink.
func TestStatusStoredWithSeveralSinks(t *testing.T) {
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer store.Close()
	e := startAll(t, nil, "--sink", "embedded", "--sink", "remotewrite+"+store.URL+"/api/v1/write#name=rw")

	const n = 50
	base := time.Now().UnixMilli() - n
	var msgs [][]byte
	for i := 1; i <= n; i++ {
		msgs = append(msgs, fmt.Appendf(nil, `{"n":%d,"ts":%d}`, i, base+int64(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sendAcked(t, ctx, client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=dev-1"}, msgs)
	for _, sink := range []string{"embedded", "rw"} {
		series := `ingest_storage_points_written_total{sink="` + sink + `"}`
		testkit.Eventually(t, 30*time.Second, fmt.Sprintf("sink %s has taken %d points", sink, n), func() (bool, string) {
			v := scrape(t, e.queryAddr, series)
			return v == n, fmt.Sprint(v)
		})
	}

	resp, err := http.Get("http://" + e.feedAddr + "/status/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Received, Stored struct{ Total float64 }
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	if s.Received.Total != n || s.Stored.Total != n {
		t.Errorf("status snapshot: received %v, stored %v; want %d stored, as received (each of the 2 sinks has taken %d)", s.Received.Total, s.Stored.Total, n, n)
	}
	stopOrFail(t, e.tierProc)
}
