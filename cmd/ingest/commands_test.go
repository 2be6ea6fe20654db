package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/downlink"
)

// cmdRecord is what the test knows of one command it got accepted.
type cmdRecord struct {
	id, device string
	seq        int  // its place among its device's accepted commands
	short      bool // a time to live short enough to expire while its device is away
	cancelled  bool // a DELETE answered 200
}

// TestCommandsUnderSIGKILL runs two frontends and two middletiers (each
// also a command home) as processes, with devices that answer commands
// through the client package and move between the frontends, and kills a
// random process with SIGKILL every second or so, restarting it, while
// applications submit and cancel commands at either frontend. At the end
// every accepted command is final: acknowledged with its device's answer
// (and its device saw it), or, for those with a short time to live,
// expired, or cancelled (and its device never saw it); each device saw its
// commands first in the order they were accepted.
func TestCommandsUnderSIGKILL(t *testing.T) {
	chaos := 15 * time.Second
	if testing.Short() {
		chaos = 5 * time.Second
	}
	const devices = 8
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	var mts, fes []*tierProc
	var homes, mtIngest, feAddrs []string
	for i := range 2 {
		home := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
		ing := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
		homes, mtIngest = append(homes, home), append(mtIngest, ing)
		mts = append(mts, &tierProc{t: t, name: fmt.Sprintf("mt-%d", i), ready: regexp.MustCompile(`msg="middletier listening"`),
			args: []string{"middletier", "--id", fmt.Sprintf("mt-%d", i), "--data.dir", t.TempDir(),
				"--ingest.addr", ing, "--command.addr", home, "--command.redeliver", "500ms",
				"--consumer.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
				"--stream.addr", fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)),
				"--http.listen", "127.0.0.1:0"}})
	}
	for i := range 2 {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		feAddrs = append(feAddrs, addr)
		fes = append(fes, &tierProc{t: t, name: fmt.Sprintf("fe-%d", i), ready: regexp.MustCompile(`msg="frontend listening"`),
			args: []string{"frontend", "--listen", addr, "--id", fmt.Sprintf("fe-%d", i), "--drain-window", "200ms",
				"--uplink.middletiers", strings.Join(mtIngest, ","), "--commands.homes", strings.Join(homes, ",")},
			env: []string{"INGEST_WAL_DIR=" + t.TempDir(), "INGEST_AUTH_HS256_SECRET_FILE=" + secretFile}})
	}
	procs := append(append([]*tierProc{}, mts...), fes...)
	for _, p := range procs {
		p.start()
	}
	defer func() {
		if t.Failed() {
			for _, p := range procs {
				t.Logf("logs of %s (tail):\n%s", p.name, tail(p.logs.String(), 30))
			}
		}
	}()
	app, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "app", "scope": "commands",
		"exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 6 * time.Second}
	// api makes one request at frontend fe; status 0 is a transport error.
	api := func(fe int, method, path string, body any, out any) int {
		var b []byte
		if body != nil {
			b, _ = json.Marshal(body)
		}
		req, _ := http.NewRequest(method, "http://"+feAddrs[fe]+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+app)
		resp, err := hc.Do(req)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		if out != nil {
			json.NewDecoder(resp.Body).Decode(out)
		}
		return resp.StatusCode
	}

	// Devices answer every command and record the order they first saw
	// them in.
	var (
		seenMu sync.Mutex
		seen   = map[string][]string{} // device → command ids, first sight only
		saw    = map[string]bool{}     // command ids seen
	)
	type dev struct {
		id string
		mu sync.Mutex
		c  *client.Client
		fe int
	}
	dial := func(d *dev, fe int) {
		for {
			c, err := client.Dial(context.Background(), client.Options{
				URL: "ws://" + feAddrs[fe] + "/v1/ingest", Token: token(t, d.id),
				MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, DialTimeout: 2 * time.Second,
				OnCommand: func(_ context.Context, cmd client.Command) client.Answer {
					seenMu.Lock()
					if !saw[cmd.ID] {
						saw[cmd.ID] = true
						seen[d.id] = append(seen[d.id], cmd.ID)
					}
					seenMu.Unlock()
					return client.Answer{Status: "ok", Payload: fmt.Appendf(nil, `{"device":%q,"id":%q}`, d.id, cmd.ID)}
				},
			})
			if err == nil {
				d.mu.Lock()
				d.c, d.fe = c, fe
				d.mu.Unlock()
				return
			}
			fe = 1 - fe // that frontend is down: try the other
			time.Sleep(50 * time.Millisecond)
		}
	}
	var devs []*dev
	for i := range devices {
		d := &dev{id: fmt.Sprintf("dev-%02d", i)}
		dial(d, i%2)
		devs = append(devs, d)
	}

	// Applications submit commands for every device, one at a time per
	// device, each with its own idempotency key, sent again (to either
	// frontend) until accepted; some are cancelled at once.
	var (
		recMu   sync.Mutex
		records []*cmdRecord
	)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				short := rand.IntN(5) == 0
				body := map[string]any{"name": "set", "payload": map[string]any{"n": n}, "idempotency_key": fmt.Sprintf("%s-%d", d.id, n)}
				if short {
					body["ttl_ms"] = 300
				}
				var c downlink.CommandJSON
				for st := 0; st != http.StatusAccepted; {
					if st = api(rand.IntN(2), "POST", "/v1/devices/"+d.id+"/commands", body, &c); st != http.StatusAccepted {
						if st != 0 && st != http.StatusServiceUnavailable {
							t.Errorf("submit for %s: HTTP %d", d.id, st)
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				}
				r := &cmdRecord{id: c.ID, device: d.id, seq: n, short: short}
				if rand.IntN(8) == 0 {
					var got downlink.CommandJSON
					if api(rand.IntN(2), "DELETE", "/v1/commands/"+c.ID, nil, &got) == http.StatusOK {
						r.cancelled = true
					}
				}
				recMu.Lock()
				records = append(records, r)
				recMu.Unlock()
				time.Sleep(time.Duration(20+rand.IntN(100)) * time.Millisecond)
			}
		})
	}
	// Devices move: one at a time, to the other frontend, and some stay
	// away for a while.
	wg.Go(func() {
		for ctx.Err() == nil {
			time.Sleep(time.Duration(200+rand.IntN(400)) * time.Millisecond)
			d := devs[rand.IntN(len(devs))]
			d.mu.Lock()
			c, fe := d.c, d.fe
			d.mu.Unlock()
			c.Close()
			time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
			dial(d, 1-fe)
		}
	})

	kills := map[string]int{}
	end := time.Now().Add(chaos)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond)
		p := procs[rand.IntN(len(procs))]
		p.kill()
		kills[p.name]++
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		p.start()
	}
	stop()
	wg.Wait()
	t.Logf("kills: %v; %d commands accepted", kills, len(records))

	// Every accepted command reaches a final state.
	final := map[string]downlink.CommandJSON{}
	deadline := time.Now().Add(90 * time.Second)
	for _, r := range records {
		for {
			var c downlink.CommandJSON
			st := api(rand.IntN(2), "GET", "/v1/commands/"+r.id, nil, &c)
			if st == http.StatusOK && c.State != "queued" && c.State != "sent" {
				final[r.id] = c
				break
			}
			if st != 0 && st != http.StatusOK && st != http.StatusServiceUnavailable {
				t.Fatalf("get %s: HTTP %d", r.id, st)
			}
			if time.Now().After(deadline) {
				t.Fatalf("command %s of %s still %q (HTTP %d)", r.id, r.device, c.State, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, d := range devs {
		d.c.Close()
	}
	for _, p := range procs {
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}

	// The check.
	byDevice := map[string]map[string]*cmdRecord{}
	count := map[string]int{}
	for _, r := range records {
		c := final[r.id]
		count[c.State]++
		if byDevice[r.device] == nil {
			byDevice[r.device] = map[string]*cmdRecord{}
		}
		byDevice[r.device][r.id] = r
		switch {
		case r.cancelled:
			if c.State != "cancelled" || saw[r.id] {
				t.Errorf("%s was cancelled, ends %q, seen by its device %v", r.id, c.State, saw[r.id])
			}
		case c.State == "acknowledged":
			want := fmt.Sprintf(`{"device":%q,"id":%q}`, r.device, r.id)
			if !saw[r.id] || c.Status != "ok" || string(c.Result) != want {
				t.Errorf("%s acknowledged with %s %s, seen by its device %v", r.id, c.Status, c.Result, saw[r.id])
			}
		case c.State == "expired" && r.short:
		default:
			t.Errorf("%s (short %v) of %s ends %q", r.id, r.short, r.device, c.State)
		}
	}
	for device, ids := range seen {
		last := -1
		for _, id := range ids {
			r := byDevice[device][id]
			if r == nil {
				continue // accepted, but its 202 was not seen: the test does not know its place
			}
			if r.seq <= last {
				t.Errorf("%s saw command %d after %d", device, r.seq, last)
			}
			last = r.seq
		}
	}
	t.Logf("final states: %v", count)
	if count["acknowledged"] == 0 {
		t.Fatal("no command was acknowledged")
	}
}
