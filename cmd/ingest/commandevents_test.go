package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/internal/testkit"
)

// TestCommandEvents: in ingest all, a command sent through the API to a
// device that answers it, and one for a device that never connects whose
// time to live ends. Each state change is on the live feed as a command
// frame (for a dashboard that asked for them), in the embedded store as
// command_events and command_latency_seconds by command and state (read
// through the query API; the command id is no label), and the status page
// counts the commands by state.
func TestCommandEvents(t *testing.T) {
	e := startAll(t, nil)
	shown, _ := dashboard(t, context.Background(), "ws://"+e.feedAddr+"/v1/feed", nil, `{"type":"subscribe","commands":true}`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev, err := client.Dial(ctx, client.Options{URL: "ws://" + e.addr + "/v1/ingest?device=dev-1",
		OnCommand: func(context.Context, client.Command) client.Answer {
			return client.Answer{Status: "ok", Payload: []byte(`{"done":true}`)}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	api := newCommandAPI(t, []string{e.addr})
	answered := api.submitWait("dev-1", map[string]any{"name": "reboot", "payload": map[string]any{"delay": 1}}, "acknowledged")
	expired := api.submitWait("dev-2", map[string]any{"name": "reboot", "ttl_ms": 200}, "expired")

	checkFeedEvents(t, shown, map[string][]string{answered: {"queued", "sent", "acknowledged"}, expired: {"queued", "expired"}})
	checkStoredEvents(t, "http://"+e.queryAddr, map[string]string{
		"dev-1/queued": "1", "dev-1/sent": "1", "dev-1/acknowledged": "1", "dev-2/queued": "1", "dev-2/expired": "1"})
	checkStatusCommands(t, e)
	dev.Close()
	stopOrFail(t, e.tierProc)
}

// submitWait submits a command for device at the first frontend and waits
// until it is in state want; it returns its id.
func (a *commandAPI) submitWait(device string, body map[string]any, want string) string {
	a.t.Helper()
	var c downlink.CommandJSON
	if st := a.do(0, "POST", "/v1/devices/"+device+"/commands", body, &c); st != http.StatusAccepted {
		a.t.Fatalf("submit for %s: HTTP %d", device, st)
	}
	testkit.Eventually(a.t, 30*time.Second, c.ID+" "+want, func() (bool, string) {
		var got downlink.CommandJSON
		st := a.do(0, "GET", "/v1/commands/"+c.ID, nil, &got)
		return st == http.StatusOK && got.State == want, fmt.Sprintf("HTTP %d, %+v", st, got)
	})
	return c.ID
}

// checkFeedEvents reads the dashboard's frames until every command of want
// has shown its states, in order, as command frames.
func checkFeedEvents(t *testing.T, frames <-chan map[string]any, want map[string][]string) {
	t.Helper()
	got := map[string][]string{}
	done := func() bool {
		for id, states := range want {
			if !slices.Equal(got[id], states) {
				return false
			}
		}
		return true
	}
	timeout := time.After(30 * time.Second)
	for !done() {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatalf("feed closed; command states so far %v", got)
			}
			if f["type"] != "command" {
				continue
			}
			ev, _ := f["command"].(map[string]any)
			id, _ := ev["id"].(string)
			state, _ := ev["state"].(string)
			if _, ok := want[id]; !ok || ev["name"] != "reboot" {
				t.Fatalf("unexpected command frame %v", f)
			}
			got[id] = append(got[id], state)
		case <-timeout:
			t.Fatalf("the feed showed command states %v, want %v", got, want)
		}
	}
}

// checkStoredEvents waits until the store counts, per "device/state", the
// events of want, and checks that each series is labelled only with the
// device, the command's name and the state.
func checkStoredEvents(t *testing.T, base string, want map[string]string) {
	t.Helper()
	q := `count_over_time(command_events{command="reboot"}[1h])`
	testkit.Eventually(t, 30*time.Second, "the store counts every command event", func() (bool, string) {
		got := map[string]string{}
		for _, s := range testkit.PromInstant(t, base, q, time.Now().Add(time.Minute)) {
			for k := range s.Metric {
				if k != "device" && k != "command" && k != "state" {
					t.Fatalf("series %v has the label %q", s.Metric, k)
				}
			}
			got[s.Metric["device"]+"/"+s.Metric["state"]] = s.Value[1].(string)
		}
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprint(got)
	})
	lat := testkit.PromScalar(t, base, `command_latency_seconds{device="dev-1",state="acknowledged"}`, time.Now().Add(time.Minute))
	if v, err := strconv.ParseFloat(lat, 64); err != nil || v <= 0 || v > 30 {
		t.Fatalf("answer latency %q", lat)
	}
}

// checkStatusCommands waits until the status snapshot counts one command
// answered and one expired, none queued or sent, and the page, in a
// headless Chromium, shows them.
func checkStatusCommands(t *testing.T, e *engine) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, "the status snapshot counts 1 answered and 1 expired", func() (bool, string) {
		var s struct {
			Commands map[string]float64 `json:"commands"`
		}
		if err := json.Unmarshal([]byte(getBody("http://"+e.feedAddr+"/status/snapshot")), &s); err != nil {
			return false, err.Error()
		}
		c := s.Commands
		return c["answered"] == 1 && c["acknowledged"] == 1 && c["expired"] == 1 && c["queued"] == 0 && c["sent"] == 0, fmt.Sprint(c)
	})
	pg := openPage(t, "http://"+e.feedAddr+"/status/", e.logs.String)
	shown := func(id, v string) string { return fmt.Sprintf(`document.getElementById(%q).textContent === %q`, id, v) }
	pg.waitFor("the page's commands card", shown("cmd-answered", "1")+" && "+shown("cmd-expired", "1")+" && "+
		shown("cmd-queued", "0")+" && "+shown("cmd-sent", "0")+" && "+shown("cmd-failed", "0"), 15*time.Second)
	pg.close()
}
