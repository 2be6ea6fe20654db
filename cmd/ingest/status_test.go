package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ingest-io/ingest/client"
)

// TestStatusPage opens the status page of ingest all in headless Chromium
// (Debian's chromium package; make deps installs it): the page follows the
// live feed, a device connects and sends, and the page shows the device
// connected, its message in the table (and not under another device's
// filter), the queues and the latencies.
func TestStatusPage(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: install Debian's chromium package (make deps)")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	feedAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	queryAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := &tierProc{t: t, name: "all", ready: regexp.MustCompile(`msg="engine running`),
		args: []string{"all", "--insecure-no-auth", "--data.dir", t.TempDir(), "--listen", addr, "--feed.listen", feedAddr, "--storage.http.listen", queryAddr, "--mqtt.listen", "127.0.0.1:0"}}
	p.start()
	stopped := false
	defer func() {
		if !stopped {
			p.kill()
		}
	}()

	// The log line names the page, after the URLs bench -spawn-all reads
	// with its own pattern.
	line := regexp.MustCompile(`msg="engine running.*devices=(\S+) .*live_feed=(\S+) query_api=(\S+) status=(\S+)`).FindStringSubmatch(p.logs.String())
	if line == nil || line[1] != "ws://"+addr+"/v1/ingest" || line[2] != "ws://"+feedAddr+"/v1/feed" {
		t.Fatalf("engine running line %q; logs:\n%s", line, p.logs.String())
	}
	page := line[4]
	if page != "http://"+feedAddr+"/status/" {
		t.Fatalf("status page at %q, want on the feed's listener %s", page, feedAddr)
	}

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // as root Chromium refuses to start with its sandbox
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
	)...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	// The first Run starts the browser for the life of this context.
	if err := chromedp.Do(browser, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
	}

	// waitFor polls a JavaScript predicate on the page until it holds.
	waitFor := func(what, predicate string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(browser, 15*time.Second)
		defer cancel()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](predicate, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
			tctx, tcancel := context.WithTimeout(browser, 2*time.Second)
			text, _ := chromedp.Run(tctx, chromedp.Evaluate[string](`document.body.innerText`))
			tcancel()
			t.Fatalf("the page never showed %s: %v\npage:\n%s\nlogs:\n%s", what, err, text, p.logs.String())
		}
	}
	text := func(id string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(browser, 5*time.Second)
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById(`+strconv.Quote(id)+`).textContent`))
		if err != nil {
			t.Fatalf("read #%s: %v", id, err)
		}
		return s
	}

	waitFor("the live feed followed", `document.getElementById("feed-state").textContent === "live"`)
	waitFor("the engine's figures", `document.getElementById("engine-state").textContent === "running"`)

	// A device connects and sends one message, and stays connected.
	marker := fmt.Sprintf("status-page-%d", time.Now().UnixNano())
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + addr + "/v1/ingest?device=status-dev-1"})
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

	rowShown := `[...document.querySelectorAll("#messages tbody tr")].some(tr => tr.dataset.device === "status-dev-1" && tr.textContent.includes(` + strconv.Quote(marker) + `))`
	waitFor("the device's message in the table", rowShown)
	// Device data is shown as text, never as markup.
	waitFor("the payload's markup as text", `[...document.querySelectorAll("#messages tbody tr")].some(tr => tr.textContent.includes("<b>bold</b>"))`)
	ictx, icancel := context.WithTimeout(browser, 5*time.Second)
	injected, err := chromedp.Run(ictx, chromedp.Evaluate[bool](`window.__injected === 1 || document.querySelector("#messages tbody b, #messages tbody img") !== null`))
	icancel()
	if err != nil || injected {
		t.Fatalf("a device's payload became markup on the page (%v)", err)
	}
	waitFor("a connected device", `Number(document.getElementById("devices").textContent) >= 1`)
	waitFor("the frontend's queue", `document.querySelector('#queues tr[data-hop="frontend"]') !== null`)
	waitFor("ack and end-to-end latencies", `["ack-p50", "ack-p99", "e2e-p50", "e2e-p99", "store-p50", "store-p99"].every(id => /^[0-9.,]+ (µs|ms|s)$/.test(document.getElementById(id).textContent))`)
	if got := text("received-total"); got != "1" {
		t.Errorf("received total %q, want 1", got)
	}

	// The filter: typing another device's id hides the row; the device's
	// own id shows it again.
	if err := chromedp.Do(browser, chromedp.SendKeys("#filter-device", "some-other-device")); err != nil {
		t.Fatal(err)
	}
	waitFor("the table filtered to nothing", `document.querySelectorAll("#messages tbody tr").length === 0`)
	if err := chromedp.Do(browser, chromedp.Evaluate[chromedp.Void](
		`(el => { el.value = ""; el.dispatchEvent(new Event("input")); })(document.getElementById("filter-device"))`),
		chromedp.SendKeys("#filter-device", "dev-1"),
		chromedp.SendKeys("#filter-text", marker)); err != nil {
		t.Fatal(err)
	}
	waitFor("the row under its own device and text filter", rowShown)

	c.Close()
	cancelBrowser()
	cancelAlloc()
	stopped = true
	if err := p.stop(); err != nil {
		t.Fatalf("%v; logs:\n%s", err, p.logs.String())
	}
}
