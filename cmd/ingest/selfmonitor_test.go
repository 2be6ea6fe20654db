package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/testkit"
)

// engineDashboard is the engine dashboard Grafana is provisioned with.
const engineDashboard = "../../deploy/k8s/components/monitoring/dashboard.json"

// dashboardVars stand in for Grafana's variables. Against the embedded
// store of one process, the Namespace variable finds no namespace label and
// Grafana substitutes the empty string ("None"), which selects the series
// without one.
var dashboardVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h", "$namespace", "")

var labelValuesRE = regexp.MustCompile(`^label_values\((.*),\s*\w+\)$`)

// dashboardSelectors returns every vector selector of the dashboard's
// panels and query variables, as PromQL text.
func dashboardSelectors(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatal(err)
			}
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			json.Unmarshal(v.Query, &q.Query)
		}
		m := labelValuesRE.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable query %q is no label_values(selector, label)", q.Query)
		}
		exprs = append(exprs, m[1])
	}
	seen := map[string]bool{}
	var sels []string
	p := parser.NewParser(parser.Options{})
	for _, text := range exprs {
		e, err := p.ParseExpr(dashboardVars.Replace(text))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && !seen[vs.String()] {
				seen[vs.String()] = true
				sels = append(sels, vs.String())
			}
			return nil
		})
	}
	sort.Strings(sels)
	return sels
}

// seriesCount asks the query API at addr how many series match sel over
// the last hour.
func seriesCount(addr, sel string) (int, error) {
	now := time.Now()
	resp, err := http.Get("http://" + addr + "/api/v1/series?" + url.Values{"match[]": {sel},
		"start": {fmt.Sprint(now.Add(-time.Hour).Unix())}, "end": {fmt.Sprint(now.Unix() + 1)}}.Encode())
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string              `json:"status"`
		Data   []map[string]string `json:"data"`
		Error  string              `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("%s: %s", resp.Status, r.Error)
	}
	return len(r.Data), nil
}

// TestSelfMonitoring runs ingest all with a short --self-monitor.interval,
// drives a device, a refused message and a dashboard reader through it,
// and checks that every selector of the engine dashboard finds series in
// the process's own query API: the dashboard works against it alone.
// With --self-monitor.interval 0 the store holds none of the engine's
// metrics.
func TestSelfMonitoring(t *testing.T) {
	sels := dashboardSelectors(t, engineDashboard)
	t.Logf("the engine dashboard selects %d series", len(sels))
	if len(sels) < 40 {
		t.Fatalf("the engine dashboard has %d selectors; the parse missed some", len(sels))
	}
	e := runSelfMonitored(t, "300ms")
	query := e.queryAddr
	deadline := time.Now().Add(30 * time.Second)
	// The store takes the device's messages...
	deviceStored(t, e)
	// ...and, within a few intervals, every metric the dashboard selects.
	var missing []string
	for {
		missing = missing[:0]
		for _, sel := range sels {
			if n, err := seriesCount(query, sel); err != nil || n == 0 {
				missing = append(missing, fmt.Sprintf("%s (%d series, %v)", sel, n, err))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Errorf("%d of the engine dashboard's %d selectors find no series in the store:\n  %s", len(missing), len(sels), strings.Join(missing, "\n  "))
	}
	// The series carry the target's labels, as a scrape's would.
	if n, err := seriesCount(query, `ingest_frontend_messages_acked_total{job="ingest",instance="`+query+`"}`); err != nil || n != 1 {
		t.Errorf("ingest_frontend_messages_acked_total with job and instance: %d series, %v", n, err)
	}
	stopOrFail(t, e.tierProc)

	// Turned off: the device's data is stored, the engine's metrics are not.
	e = runSelfMonitored(t, "0")
	deviceStored(t, e)
	if n, err := seriesCount(e.queryAddr, `{job="ingest"}`); err != nil || n != 0 {
		t.Errorf("with --self-monitor.interval 0 the store has %d series of the engine (%v)", n, err)
	}
	stopOrFail(t, e.tierProc)
}

// deviceStored waits until the store of e holds the series of dev-1's
// temp.
func deviceStored(t *testing.T, e *engine) {
	t.Helper()
	q := "http://" + e.queryAddr + "/api/v1/query?query=" + url.QueryEscape(`count(temp{device="dev-1"})`)
	testkit.WaitFor(t, "the device's data in the store", 30*time.Second, func() bool { return queryValue(t, q) == "1" })
}

// runSelfMonitored starts ingest all with --self-monitor.interval interval
// and drives through it a dashboard reader on the live feed, kept open,
// and a device that sends, has one of its messages refused, and leaves.
func runSelfMonitored(t *testing.T, interval string) *engine {
	t.Helper()
	e := startAll(t, []string{"INGEST_SELF_MONITOR_INTERVAL=" + interval}, "--drain-window", "200ms")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dashboard(t, ctx, "ws://"+e.feedAddr+"/v1/feed", nil, `{"type":"subscribe"}`)
	c, err := client.Dial(ctx, client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 20 {
		if err := c.SendWait(ctx, fmt.Appendf(nil, `{"id":%d,"temp":21.5}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SendWait(ctx, []byte(`{"id":"bad","ts":5}`)); err == nil {
		t.Fatal("a message from 1970 was accepted")
	}
	return e
}
