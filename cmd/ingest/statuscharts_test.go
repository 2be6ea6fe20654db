package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ingest-io/ingest/client"
)

// chartIDs are the status page's charts, and the series each must draw
// once a device has sent for a few seconds.
var chartSeries = map[string][]string{
	"rates":  {"received", "acked", "stored"},
	"ack":    {"ack_p50", "ack_p99"},
	"feed":   {"feed_p50", "feed_p99"},
	"store":  {"store_p50", "store_p99"},
	"queues": {"frontend", "middletier"},
}

// TestStatusPageCharts opens the status page of ingest all in headless
// Chromium, takes screenshots and counts the pixels the charts' series
// drew in each chart's plot area: before any device sends, the latency
// charts are empty and the message-rate chart has its line at zero; while
// a device sends 100 messages a second, every chart draws its series. The
// filters' placeholders fit their inputs, and the URLs the engine logs
// answer.
func TestStatusPageCharts(t *testing.T) {
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
	line := regexp.MustCompile(`msg="engine running.* query_api=(\S+) status=(\S+)`).FindStringSubmatch(p.logs.String())
	if line == nil {
		t.Fatalf("no query_api and status in the engine running line; logs:\n%s", p.logs.String())
	}
	checkLoggedURLs(t, line[1], line[2])

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 1400),
	)...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()
	if err := chromedp.Do(browser, chromedp.Navigate(line[2])); err != nil {
		t.Fatalf("open %s: %v", line[2], err)
	}
	eval := func(expr string, out any) {
		t.Helper()
		ctx, cancel := context.WithTimeout(browser, 5*time.Second)
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(`+expr+`)`))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		if err := json.Unmarshal([]byte(s), out); err != nil {
			t.Fatalf("evaluate %s: %v: %s", expr, err, s)
		}
	}
	waitFor := func(what, predicate string, within time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(browser, within)
		defer cancel()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](predicate, chromedp.WithPollingInterval(100*time.Millisecond))); err != nil {
			var text string
			eval(`document.body.innerText`, &text)
			t.Fatalf("the page never showed %s: %v\npage:\n%s\nlogs:\n%s", what, err, text, p.logs.String())
		}
	}
	// points is how many points the series' path has in a chart.
	points := func(chart, series string) string {
		return fmt.Sprintf(`Number((document.querySelector('figure[data-chart=%q] path[data-series=%q]') || {dataset: {points: 0}}).dataset.points)`, chart, series)
	}

	// The placeholders fit: the text, measured in the input's own font,
	// is no wider than the input's content box.
	var fits []struct {
		Placeholder string
		Text, Room  float64
	}
	eval(`[...document.querySelectorAll(".filters input[type=search]")].map(el => {
		const cs = getComputedStyle(el);
		const ctx = document.createElement("canvas").getContext("2d");
		ctx.font = cs.fontStyle + " " + cs.fontWeight + " " + cs.fontSize + " " + cs.fontFamily;
		return {Placeholder: el.placeholder, Text: ctx.measureText(el.placeholder).width,
			Room: el.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight)};
	})`, &fits)
	if len(fits) != 2 {
		t.Fatalf("filters %+v, want two", fits)
	}
	for _, f := range fits {
		if f.Text > f.Room {
			t.Errorf("placeholder %q is cut off: %.1f px of text in %.1f px", f.Placeholder, f.Text, f.Room)
		}
	}

	// Before any message: the rates and the queues are drawn at zero, the
	// latencies not at all.
	waitFor("the first points of history", points("rates", "received")+` >= 2 && `+points("queues", "frontend")+` >= 2`, 15*time.Second)
	before := chartPixels(t, browser, eval)
	for _, c := range []string{"ack", "feed", "store"} {
		if before[c] != 0 {
			t.Errorf("the %s chart drew %d pixels of series before any message", c, before[c])
		}
	}
	for _, c := range []string{"rates", "queues"} {
		if before[c] < 10 {
			t.Errorf("the %s chart drew %d pixels of series (its line at zero) before any message", c, before[c])
		}
	}

	// A device sends 100 messages a second until every series has five
	// points.
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + addr + "/v1/ingest?device=charts-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, stopSending := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if _, err := c.Send(ctx, fmt.Appendf(nil, `{"n":%d,"temp":21.5}`, i)); err != nil {
				return
			}
		}
	})
	var all []string
	for chart, series := range chartSeries {
		for _, s := range series {
			all = append(all, points(chart, s)+` >= 5`)
		}
	}
	waitFor("five points of every series", strings.Join(all, " && "), 30*time.Second)
	during := chartPixels(t, browser, eval)
	stopSending()
	wg.Wait()

	for chart := range chartSeries {
		if during[chart] < 20 {
			t.Errorf("the %s chart drew %d pixels of series while a device sent", chart, during[chart])
		}
	}
	for _, c := range []string{"ack", "feed", "store"} {
		if during[c] <= before[c] {
			t.Errorf("the %s chart drew %d pixels of series while a device sent, %d before", c, during[c], before[c])
		}
	}
	var legend string
	eval(`document.querySelector('figure[data-chart="ack"] .legend').textContent`, &legend)
	if !regexp.MustCompile(`p50 [0-9.,]+ (µs|ms|s)p99 [0-9.,]+ (µs|ms|s)`).MatchString(legend) {
		t.Errorf("ack latency legend %q, want p50 and p99 with their newest values", legend)
	}
	t.Logf("pixels of series before any message %v, while a device sent %v", before, during)

	c.Close()
	cancelBrowser()
	cancelAlloc()
	stopped = true
	if err := p.stop(); err != nil {
		t.Fatalf("%v; logs:\n%s", err, p.logs.String())
	}
}

// chartPixels takes a screenshot and counts, in each chart's plot area,
// the pixels of the series' colours: saturated ones, which the grid, the
// labels and the background (greys and white) are not. The legends, in the
// series' colours too, are outside the plot areas. The screenshot is
// kept in the test's output directory when the test fails.
func chartPixels(t *testing.T, browser context.Context, eval func(string, any)) map[string]int {
	t.Helper()
	var areas []struct {
		Chart              string
		X, Y, W, H, ScaleX float64
	}
	eval(`[...document.querySelectorAll("figure.chart")].map(f => {
		const svg = f.querySelector("svg"), r = svg.getBoundingClientRect();
		const [l, tp, w, h] = svg.dataset.plot.split(" ").map(Number);
		return {Chart: f.dataset.chart, X: r.left + l, Y: r.top + tp, W: w, H: h, ScaleX: window.devicePixelRatio};
	})`, &areas)
	if len(areas) != len(chartSeries) {
		t.Fatalf("charts %+v, want %d", areas, len(chartSeries))
	}
	ctx, cancel := context.WithTimeout(browser, 10*time.Second)
	defer cancel()
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("decode screenshot: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			name := filepath.Join(os.TempDir(), fmt.Sprintf("status-charts-%d.png", time.Now().UnixNano()))
			if os.WriteFile(name, shot, 0o644) == nil {
				t.Logf("screenshot: %s", name)
			}
		}
	})
	out := map[string]int{}
	for _, a := range areas {
		s := a.ScaleX
		if s <= 0 {
			s = 1
		}
		// Two pixels around the plot area take in the half of a line's
		// stroke that lies outside it when the line is at zero.
		r := image.Rect(int((a.X-2)*s), int((a.Y-2)*s), int((a.X+a.W+2)*s), int((a.Y+a.H+2)*s)).Intersect(img.Bounds())
		if r.Dx() < 100 || r.Dy() < 50 {
			t.Fatalf("the %s chart's plot area %v is not on the screenshot %v", a.Chart, r, img.Bounds())
		}
		n := 0
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				cr, cg, cb, _ := img.At(x, y).RGBA()
				hi, lo := max(cr, cg, cb)>>8, min(cr, cg, cb)>>8
				if hi-lo > 60 {
					n++
				}
			}
		}
		out[a.Chart] = n
	}
	return out
}

// checkLoggedURLs checks that the query API and the status page the
// engine logs answer: the API's address and its root with JSON, its
// health endpoints as Prometheus's, the page with HTML.
func checkLoggedURLs(t *testing.T, queryAPI, page string) {
	t.Helper()
	get := func(u string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	root := strings.TrimSuffix(queryAPI, "/api/v1/")
	for _, u := range []string{queryAPI, root, root + "/"} {
		resp, body := get(u)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(body, `"status":"success"`) ||
			!strings.Contains(body, `"/api/v1/query"`) {
			t.Errorf("GET %s: %s %q %s", u, resp.Status, resp.Header.Get("Content-Type"), body)
		}
	}
	if resp, body := get(root + "/api/v1/nothing_here"); resp.StatusCode != 404 || !strings.Contains(body, `"errorType":"not_found"`) {
		t.Errorf("GET an unknown endpoint: %s %s", resp.Status, body)
	}
	if resp, body := get(root + "/-/healthy"); resp.StatusCode != 200 || body != "ingest is Healthy.\n" {
		t.Errorf("GET /-/healthy: %s %q", resp.Status, body)
	}
	// Ready once the storage writer has caught up with the middletier.
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, body := get(root + "/-/ready")
		if resp.StatusCode == 200 && body == "ingest is Ready.\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /-/ready: %s %q after 15 s", resp.Status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp, body := get(page); resp.StatusCode != 200 || !strings.Contains(body, `data-chart="rates"`) {
		t.Errorf("GET %s: %s", page, resp.Status)
	}
}
