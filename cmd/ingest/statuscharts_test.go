package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
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
	e := startAll(t, nil)
	line := regexp.MustCompile(`msg="engine running.* query_api=(\S+) status=(\S+)`).FindStringSubmatch(e.logs.String())
	if line == nil {
		t.Fatalf("no query_api and status in the engine running line; logs:\n%s", e.logs.String())
	}
	checkLoggedURLs(t, line[1], line[2])
	pg := openPage(t, line[2], e.logs.String, chromedp.WindowSize(1280, 1400))
	checkPlaceholdersFit(t, pg)

	// Before any message: the rates and the queues are drawn at zero, the
	// latencies not at all.
	pg.waitFor("the first points of history", points("rates", "received")+` >= 2 && `+points("queues", "frontend")+` >= 2`, 15*time.Second)
	before := chartPixels(t, pg)
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
	c, err := client.Dial(context.Background(), client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=charts-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, stopSending := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		sendUntil(ctx, c, 10*time.Millisecond, func(i int) []byte { return fmt.Appendf(nil, `{"n":%d,"temp":21.5}`, i) })
	})
	var all []string
	for chart, series := range chartSeries {
		for _, s := range series {
			all = append(all, points(chart, s)+` >= 5`)
		}
	}
	pg.waitFor("five points of every series", strings.Join(all, " && "), 30*time.Second)
	during := chartPixels(t, pg)
	stopSending()
	wg.Wait()
	checkChartsDrawn(t, pg, before, during)
	c.Close()
	pg.close()
	stopOrFail(t, e.tierProc)
}

// points is how many points the series' path has in a chart.
func points(chart, series string) string {
	return fmt.Sprintf(`Number((document.querySelector('figure[data-chart=%q] path[data-series=%q]') || {dataset: {points: 0}}).dataset.points)`, chart, series)
}

// checkPlaceholdersFit checks that the filters' placeholders fit: the
// text, measured in the input's own font, is no wider than the input's
// content box.
func checkPlaceholdersFit(t *testing.T, pg *page) {
	t.Helper()
	var fits []struct {
		Placeholder string
		Text, Room  float64
	}
	pg.eval(`[...document.querySelectorAll(".filters input[type=search]")].map(el => {
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
}

// checkChartsDrawn checks that while a device sent every chart drew its
// series, the latency charts more than before, and that the ack latency's
// legend shows the newest values.
func checkChartsDrawn(t *testing.T, pg *page, before, during map[string]int) {
	t.Helper()
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
	pg.eval(`document.querySelector('figure[data-chart="ack"] .legend').textContent`, &legend)
	if !regexp.MustCompile(`p50 [0-9.,]+ (µs|ms|s)p99 [0-9.,]+ (µs|ms|s)`).MatchString(legend) {
		t.Errorf("ack latency legend %q, want p50 and p99 with their newest values", legend)
	}
	t.Logf("pixels of series before any message %v, while a device sent %v", before, during)
}

// chartPixels takes a screenshot and counts, in each chart's plot area,
// the pixels of the series' colours: saturated ones, which the grid, the
// labels and the background (greys and white) are not. The legends, in the
// series' colours too, are outside the plot areas. The screenshot is
// kept in the test's output directory when the test fails.
func chartPixels(t *testing.T, pg *page) map[string]int {
	t.Helper()
	var areas []struct {
		Chart              string
		X, Y, W, H, ScaleX float64
	}
	pg.eval(`[...document.querySelectorAll("figure.chart")].map(f => {
		const svg = f.querySelector("svg"), r = svg.getBoundingClientRect();
		const [l, tp, w, h] = svg.dataset.plot.split(" ").map(Number);
		return {Chart: f.dataset.chart, X: r.left + l, Y: r.top + tp, W: w, H: h, ScaleX: window.devicePixelRatio};
	})`, &areas)
	if len(areas) != len(chartSeries) {
		t.Fatalf("charts %+v, want %d", areas, len(chartSeries))
	}
	ctx, cancel := context.WithTimeout(pg.ctx, 10*time.Second)
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
	testkit.Eventually(t, 15*time.Second, "GET /-/ready answering 200 ingest is Ready.", func() (bool, string) {
		resp, body := get(root + "/-/ready")
		return resp.StatusCode == 200 && body == "ingest is Ready.\n", fmt.Sprintf("%s %q", resp.Status, body)
	})
	if resp, body := get(page); resp.StatusCode != 200 || !strings.Contains(body, `data-chart="rates"`) {
		t.Errorf("GET %s: %s", page, resp.Status)
	}
}
