package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCommands: the command mode against the whole engine, which the bench
// starts: every command submitted is accepted, delivered to its device
// once, answered and acknowledged in the end, and the run measures each
// step.
func TestCommands(t *testing.T) {
	c := config{SpawnAll: binPath, Commands: 100, CommandsPoll: 3, Devices: 20, Sources: 1, Window: 1, Shape: "sensor",
		Duration: 3 * time.Second, Drain: 20 * time.Second, Quiet: true, Interval: time.Second,
		JSON: filepath.Join(t.TempDir(), "commands.json")}
	if err := run(c); err != nil {
		t.Fatal(err)
	}
	var r commandResult
	b, err := os.ReadFile(c.JSON)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	want := int64(c.Commands * c.Duration.Seconds())
	if r.Connected != c.Devices || r.Sent < want*9/10 || r.Sent > want+1 || r.Accepted != r.Sent || len(r.Refused) != 0 {
		t.Fatalf("connected %d of %d, sent %d (want ~%d), accepted %d, refused %v", r.Connected, c.Devices, r.Sent, want, r.Accepted, r.Refused)
	}
	if r.Delivered != r.Accepted || r.Undelivered != 0 || r.Misrouted != 0 || r.Unknown != 0 {
		t.Fatalf("accepted %d, delivered %d (%d not), misrouted %d, unknown %d", r.Accepted, r.Delivered, r.Undelivered, r.Misrouted, r.Unknown)
	}
	if r.Final["acknowledged"] != r.Accepted || len(r.Final) != 1 || r.Unanswered != 0 {
		t.Fatalf("final states %v of %d accepted", r.Final, r.Accepted)
	}
	if r.Submit.P50 <= 0 || r.Device.P50 <= 0 || r.Device.P99 < r.Device.P50 || r.Device.Max < r.Device.P99 {
		t.Fatalf("submit %+v, API → device %+v", r.Submit, r.Device)
	}
	// Every third command read back: about a third, each after its device
	// had it.
	if r.Result == nil || r.ResultN < r.Accepted/3-1 || r.ResultN > r.Accepted/3+1 || r.ResultGets < r.ResultN || r.Result.P50 < r.Device.P50 {
		t.Fatalf("API → result %+v of %d commands, %d reads; API → device %+v", r.Result, r.ResultN, r.ResultGets, r.Device)
	}
	if len(r.Intervals) < 2 {
		t.Fatalf("%d interval lines in a 3 s run", len(r.Intervals))
	}
	for _, iv := range r.Intervals {
		if iv.RSSMiB <= 0 || iv.Goroutines <= 0 || iv.DeviceP99 < iv.DeviceP50 || iv.AcceptedPS <= 0 {
			t.Fatalf("interval line %+v", iv)
		}
	}
}

// The run fails when an accepted command was not delivered, reached
// another device, or was not acknowledged in the end.
func TestCommandVerdict(t *testing.T) {
	good := commandResult{Sent: 10, Accepted: 10, Delivered: 10, Final: map[string]int64{"acknowledged": 10}}
	if err := good.verdict(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*commandResult){
		"none accepted": func(r *commandResult) { r.Accepted, r.Delivered, r.Final = 0, 0, nil },
		"undelivered":   func(r *commandResult) { r.Undelivered = 1 },
		"misrouted":     func(r *commandResult) { r.Misrouted = 1 },
		"unanswered":    func(r *commandResult) { r.Unanswered, r.Final = 1, map[string]int64{"acknowledged": 9, "sent": 1} },
	} {
		r := good
		mod(&r)
		if err := r.verdict(); err == nil {
			t.Errorf("%s: accepted %+v", name, r)
		}
	}
}

func TestCommandAPI(t *testing.T) {
	for _, tc := range []struct {
		c    config
		want string
	}{
		{config{URL: "ws://127.0.0.1:8080/v1/ingest"}, "http://127.0.0.1:8080"},
		{config{URL: "wss://ingest.example:443/v1/ingest"}, "https://ingest.example:443"},
		{config{URL: "ws://x/v1/ingest", CommandsAPI: "http://api:9000/"}, "http://api:9000"},
	} {
		if got, err := commandAPI(tc.c); err != nil || got != tc.want {
			t.Errorf("commandAPI(%+v) = %q, %v; want %q", tc.c, got, err, tc.want)
		}
	}
	if _, err := commandAPI(config{URL: "mqtt://x:1883"}); err == nil {
		t.Error("an MQTT endpoint gave a command API")
	}
}

func TestCommandDecoders(t *testing.T) {
	if k, ok := commandKey([]byte(`{"k":42}`)); !ok || k != 42 {
		t.Fatalf("commandKey = %d, %v", k, ok)
	}
	for _, p := range []string{``, `null`, `{}`, `{"k":0}`, `{"k":-1}`, `{"k":"1"}`, `[1]`} {
		if _, ok := commandKey([]byte(p)); ok {
			t.Errorf("commandKey(%s) ok", p)
		}
	}
	if cid, st, err := parseCommand([]byte(`{"id":"c0a","state":"queued"}`)); err != nil || cid != "c0a" || st != "queued" {
		t.Fatalf("parseCommand = %q %q %v", cid, st, err)
	}
	for _, b := range []string{`{}`, `{"id":""}`, `{"id":"../x"}`, `{"id":"` + strings.Repeat("c", 200) + `"}`, `nope`} {
		if _, _, err := parseCommand([]byte(b)); err == nil {
			t.Errorf("parseCommand(%s) accepted", b)
		}
	}
	l, err := parseList([]byte(`{"commands":[{"id":"c1","state":"sent"},{"id":"c2","state":"acknowledged"}]}`))
	if err != nil || len(l) != 2 || l["c1"] != "sent" || l["c2"] != "acknowledged" {
		t.Fatalf("parseList = %v, %v", l, err)
	}
	if errorCode([]byte(`{"code":"unavailable","message":"x"}`)) != "unavailable" || errorCode([]byte(`<html>`)) != "?" {
		t.Fatal("errorCode")
	}
}

// FuzzCommandDecoders: whatever the API or a command's payload holds,
// decoding ends without a panic, and an id read from an answer is one the
// bench can put in a path.
func FuzzCommandDecoders(f *testing.F) {
	f.Add([]byte(`{"k":7}`))
	f.Add([]byte(`{"id":"c1","state":"acknowledged"}`))
	f.Add([]byte(`{"commands":[{"id":"c1","state":"sent"}]}`))
	f.Add([]byte(`{"code":"forbidden"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		commandKey(b)
		if cid, _, err := parseCommand(b); err == nil && (cid == "" || strings.ContainsAny(cid, "/?#")) {
			t.Fatalf("parseCommand gave id %q", cid)
		}
		parseList(b)
		if c := errorCode(b); c == "" || len(c) > 64 {
			t.Fatalf("errorCode gave %q", c)
		}
	})
}

// With -insecure a device names itself in the endpoint's query, beside
// the query -url already has.
func TestWithDevice(t *testing.T) {
	for in, want := range map[string]string{
		"ws://127.0.0.1:8080/v1/ingest":          "ws://127.0.0.1:8080/v1/ingest?device=d+1%2F2",
		"ws://127.0.0.1:8080/v1/ingest?x=1":      "ws://127.0.0.1:8080/v1/ingest?device=d+1%2F2&x=1",
		"ws://127.0.0.1:8080/v1/ingest?device=z": "ws://127.0.0.1:8080/v1/ingest?device=d+1%2F2",
	} {
		if got, err := withDevice(in, "d 1/2"); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", in, got, err, want)
		}
	}
}
